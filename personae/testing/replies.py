"""OpenAI-shaped bodies for the test server: chat completions, tool calls, embeddings, errors.

Pure functions of the request body (and a seeded RNG), so the same request always
gets the same reply. JSON replies are schema-valid (``fake_from_schema``); the
fault helpers turn a good reply into a truncated or schema-violating one.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass
from typing import Any, Literal

from personae.embeddings.base import HashingEmbedder
from personae.ids import content_hash
from personae.llm.base import estimate_tokens
from personae.llm.testing import fake_from_schema

__all__ = [
    "ChatPlan",
    "plan_chat",
    "schema_in_prompt",
    "default_content",
    "request_rng",
    "chat_completion",
    "prompt_tokens",
    "violate_schema",
    "truncate_json",
    "embeddings_body",
    "models_body",
    "error_body",
    "MODEL_IDS",
]

ChatMode = Literal["text", "json_schema", "json_object", "tool"]
MODEL_IDS = ("personae-test-chat", "personae-test-embed")
_DECODER = json.JSONDecoder()
_MAX_SCHEMA_PROBES = 64


@dataclass(frozen=True)
class ChatPlan:
    """What a chat request asks for: the reply mode, the schema to satisfy and the tool to call."""

    mode: ChatMode
    schema: dict[str, Any] | None = None
    tool_name: str | None = None


def plan_chat(body: dict[str, Any]) -> ChatPlan:
    """Read the reply mode from ``tools``/``tool_choice`` and ``response_format``."""
    tool = _chosen_tool(body.get("tools") or [], body.get("tool_choice"))
    if tool is not None:
        fn = tool.get("function") or {}
        return ChatPlan("tool", fn.get("parameters") or {"type": "object"}, str(fn.get("name") or "tool"))
    response_format = body.get("response_format") or {}
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        return ChatPlan("json_schema", spec.get("schema") or {"type": "object"})
    if kind == "json_object":
        return ChatPlan("json_object", schema_in_prompt(body.get("messages") or []))
    return ChatPlan("text")


def _chosen_tool(tools: list[Any], tool_choice: Any) -> dict[str, Any] | None:
    functions = [t for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if not functions or tool_choice == "none":
        return None
    if isinstance(tool_choice, dict):
        wanted = (tool_choice.get("function") or {}).get("name")
        for tool in functions:
            if tool["function"].get("name") == wanted:
                return tool
    return functions[0]  # "auto"/"required"/absent: a test server always calls


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def schema_in_prompt(messages: list[Any]) -> dict[str, Any] | None:
    """The first JSON schema embedded in the messages (e.g. a structured-output hint), if any."""
    for message in messages:
        text = _text_of(message.get("content")) if isinstance(message, dict) else ""
        start, probes = text.find("{"), 0
        while start >= 0 and probes < _MAX_SCHEMA_PROBES:
            probes += 1
            try:
                obj, end = _DECODER.raw_decode(text, start)
            except ValueError:
                start = text.find("{", start + 1)
                continue
            if isinstance(obj, dict) and ("properties" in obj or "$defs" in obj or obj.get("type") == "object"):
                return obj
            start = text.find("{", end)
    return None


def prompt_tokens(messages: list[Any]) -> int:
    """Estimated prompt tokens, the same estimate the providers use when a server reports none."""
    return sum(estimate_tokens(_text_of(m.get("content"))) for m in messages if isinstance(m, dict))


def request_rng(body: dict[str, Any], seed: int) -> random.Random:
    """A generator seeded by the request's content and the server seed (deterministic replies)."""
    return random.Random(content_hash([seed, body]))


def default_content(plan: ChatPlan, rng: random.Random, *, max_tokens: int | None = None) -> tuple[str, str]:
    """The reply text (or tool arguments) for ``plan`` and its finish reason."""
    if plan.mode == "text":
        text = str(fake_from_schema({"type": "string", "minLength": 60}, rng)).capitalize() + "."
        if max_tokens is not None and estimate_tokens(text) > max_tokens:
            return text[: max_tokens * 4], "length"
        return text, "stop"
    if plan.schema is not None:
        return json.dumps(fake_from_schema(plan.schema, rng)), "stop"
    answer = str(fake_from_schema({"type": "string", "minLength": 20}, rng))
    return json.dumps({"answer": answer}), "stop"


def chat_completion(body: dict[str, Any], plan: ChatPlan, content: str, finish_reason: str) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` body; in tool mode ``content`` is the call's arguments."""
    ident = content_hash([body, content], length=24)
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if plan.mode == "tool":
        message["content"] = None
        message["tool_calls"] = [
            {"id": f"call_{ident[:16]}", "type": "function", "function": {"name": plan.tool_name, "arguments": content}}
        ]
        finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
    prompt = prompt_tokens(body.get("messages") or [])
    completion = estimate_tokens(content)
    return {
        "id": f"chatcmpl-{ident}",
        "object": "chat.completion",
        "created": 0,
        "model": str(body.get("model") or MODEL_IDS[0]),
        "system_fingerprint": "personae-testserver",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = root.get("$defs", {}).get(schema["$ref"].split("/")[-1], {})
    return schema


_WRONG = {
    "string": 12345,
    "integer": "not a number",
    "number": "not a number",
    "boolean": "not a boolean",
    "array": "not an array",
    "object": "not an object",
}


def violate_schema(schema: dict[str, Any], rng: random.Random) -> Any:
    """Valid JSON that does *not* validate against ``schema``.

    Objects lose their required fields (or get wrong-typed values when nothing is
    required); other roots get a value of the wrong type.
    """
    node = _resolve(schema, schema)
    if node.get("type") == "object" or "properties" in node:
        props: dict[str, Any] = node.get("properties", {})
        required = set(node.get("required", ()))
        valid = fake_from_schema(node, rng, _root=schema)
        if required:
            return {k: v for k, v in valid.items() if k not in required}
        wrong = {k: _WRONG.get(_resolve(sub, schema).get("type", ""), None) for k, sub in props.items()}
        wrong = {k: v for k, v in wrong.items() if v is not None}
        return wrong or ["not", "an", "object"]
    kind = node.get("type")
    if "enum" in node:
        return "__not_one_of_the_allowed_values__"
    return _WRONG.get(kind if isinstance(kind, str) else "", {"unexpected": True})


def truncate_json(text: str) -> str:
    """``text`` cut in the middle, as a reply stopped by ``max_tokens`` would be."""
    return text[: max(1, len(text) // 2)]


def embeddings_body(body: dict[str, Any], dim: int) -> dict[str, Any]:
    """An OpenAI embeddings list (float or base64 little-endian float32) from the hashing embedder."""
    raw = body.get("input")
    items = [raw] if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)) else list(raw or [])
    texts = [" ".join(map(str, x)) if isinstance(x, list) else str(x) for x in items]
    vectors = HashingEmbedder(dim=dim).embed(texts)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, vector in enumerate(vectors):
        embedding: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii") if as_base64 else vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(estimate_tokens(t) for t in texts)
    return {
        "object": "list",
        "model": str(body.get("model") or MODEL_IDS[1]),
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def models_body() -> dict[str, Any]:
    """The ``GET /v1/models`` list."""
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 0, "owned_by": "personae-testserver"} for m in MODEL_IDS],
    }


def error_body(message: str, *, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
