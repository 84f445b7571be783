"""Fake models for tests, named as fakes. They never touch the network.

* :class:`FakeLLM` — seeded and deterministic: the same request gives the same
  reply; JSON requests get minimal schema-valid data.
* :class:`EchoingLLM` — FakeLLM that echoes its partner at a known rate.
* :class:`ScriptedLLM` — a function you write decides each reply.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

from personae.ids import content_hash
from personae.llm.base import LLMRequest, LLMResponse, ResponseFormat, Usage, estimate_tokens

__all__ = ["FakeLLM", "EchoingLLM", "ScriptedLLM", "fake_from_schema"]

_WORDS = (
    "well think really maybe about that idea plan price time help need want know sure "
    "good point question answer today work family team budget problem option feel"
).split()


class _RecordingLLM:
    provider = "fake"

    def __init__(self, model: str, latency_s: float) -> None:
        self._model = model
        self.latency_s = latency_s
        self.requests: list[LLMRequest] = []

    @property
    def model(self) -> str:
        return self._model

    @property
    def calls(self) -> int:
        return len(self.requests)

    async def aclose(self) -> None:
        return None

    def _response(self, request: LLMRequest, text: str) -> LLMResponse:
        prompt = sum(estimate_tokens(m.content) for m in request.messages)
        return LLMResponse(
            text=text,
            usage=Usage(prompt_tokens=prompt, completion_tokens=estimate_tokens(text)),
            model=self._model,
            provider=self.provider,
            finish_reason="stop",
        )


class FakeLLM(_RecordingLLM):
    """A deterministic fake chat model (a fake: for tests and offline demos of the plumbing)."""

    def __init__(self, *, seed: int = 0, model: str = "fake-chat", latency_s: float = 0.0, words: int = 12) -> None:
        super().__init__(model, latency_s)
        self.seed = seed
        self.words = words

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.requests.append(request)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        rng = random.Random(content_hash([self.seed, request.cache_payload()]))
        if request.response_format is ResponseFormat.TEXT or request.json_schema is None:
            text = " ".join(rng.choice(_WORDS) for _ in range(self.words)).capitalize() + "."
        else:
            text = json.dumps(fake_from_schema(request.json_schema, rng))
        return self._response(request, text)


class EchoingLLM(FakeLLM):
    """A fake that echoes its partner at a known rate (a fake: for testing critics and echo metrics).

    For a text request it returns, with probability ``rate`` (drawn from the request, so
    the same request gives the same reply), the last partner line of the conversation
    word for word; otherwise a fresh FakeLLM sentence. Structured requests get FakeLLM's
    schema-valid data. A revision that changes the seed draws again, as a real model
    sampled afresh would.
    """

    def __init__(self, *, rate: float = 0.5, seed: int = 0, model: str = "fake-echo", latency_s: float = 0.0, words: int = 12) -> None:
        super().__init__(seed=seed, model=model, latency_s=latency_s, words=words)
        self.rate = rate

    async def complete(self, request: LLMRequest) -> LLMResponse:
        if request.response_format is not ResponseFormat.TEXT and request.json_schema is not None:
            return await super().complete(request)
        partner = [m.content for m in request.messages[1:] if m.role == "user" and "could not be used" not in m.content and "cannot be used" not in m.content]
        rng = random.Random(content_hash([self.seed, "echo", request.cache_payload()]))
        if len(partner) > 1 and rng.random() < self.rate:  # the first user message is the opening instruction
            self.requests.append(request)
            return self._response(request, partner[-1])
        return await super().complete(request)


class ScriptedLLM(_RecordingLLM):
    """A fake whose replies come from ``script(request) -> str`` (sync or async)."""

    def __init__(
        self,
        script: Callable[[LLMRequest], str | Awaitable[str]],
        *,
        model: str = "scripted",
        latency_s: float = 0.0,
    ) -> None:
        super().__init__(model, latency_s)
        self.script = script

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.requests.append(request)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        out = self.script(request)
        if asyncio.iscoroutine(out) or isinstance(out, Awaitable):
            out = await out
        if isinstance(out, LLMResponse):
            return out
        return self._response(request, str(out))


def fake_from_schema(schema: dict[str, Any], rng: random.Random | None = None, *, _root: dict | None = None) -> Any:
    """Minimal data that validates against a (pydantic-generated) JSON schema."""
    rng = rng or random.Random(0)
    root = _root or schema
    if "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        return fake_from_schema(root.get("$defs", {})[name], rng, _root=root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return fake_from_schema(options[0], rng, _root=root)
    if "default" in schema and schema.get("type") not in ("object",):
        return schema["default"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {name: fake_from_schema(sub, rng, _root=root) for name, sub in props.items()}
    if kind == "array":
        n = max(schema.get("minItems", 1), 1)
        n = min(n, schema.get("maxItems", n))
        return [fake_from_schema(schema.get("items", {"type": "string"}), rng, _root=root) for _ in range(n)]
    if kind == "integer":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", 0) + (1 if "exclusiveMinimum" in schema else 0))
        hi = schema.get("maximum", max(lo, 5))
        return rng.randint(int(lo), int(hi))
    if kind == "number":
        lo = schema.get("minimum", 0.0)
        hi = schema.get("maximum", max(lo, 1.0))
        return round(rng.uniform(lo, hi), 3)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    n = max(schema.get("minLength", 1), 1)
    text = " ".join(rng.choice(_WORDS) for _ in range(3))
    while len(text) < n:
        text += " " + rng.choice(_WORDS)
    if "maxLength" in schema:
        text = text[: schema["maxLength"]]
    return text
