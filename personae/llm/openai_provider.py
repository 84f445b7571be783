"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp server) over real HTTP.

Retries are the gateway's job (``RetryingLLM``), so the client's own are off.
The API key is held as a secret and never logged.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
from pydantic import SecretStr

from personae.endpoint import public_url, unreachable_reason
from personae.errors import ModelCallError, UnsupportedFeature
from personae.llm.base import LLMRequest, LLMResponse, ResponseFormat, Usage, estimate_tokens
from personae.llm.limits import key_fingerprint
from personae.llm.rate_headers import parse_rate_limit_headers, retry_after_of

__all__ = ["OpenAICompatibleLLM"]

class OpenAICompatibleLLM:
    """Chat completions through the ``openai`` async client.

    Args:
        model: model name at the endpoint.
        base_url: e.g. ``http://localhost:8000/v1``; ``None`` means api.openai.com.
        api_key: secret; local servers accept any non-empty value.
        timeout_s: per-request timeout.
        max_connections: HTTP connection pool size (at least the gateway's concurrency).
    """

    provider = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | SecretStr | None = None,
        timeout_s: float = 60.0,
        max_connections: int = 512,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self._model = model
        self.base_url = base_url
        self.key_fingerprint = key_fingerprint(key)
        """Tells this model's API key apart (for its endpoint's limits) without holding it."""
        self.timeout_s = timeout_s
        # aiohttp as the SDK's transport (its documented `DefaultAioHttpClient`): at 64-256
        # calls in flight it costs less client CPU per call than httpx's pure-Python pool
        # (bench/overlap.py), and CPU per call is what bounds how many calls overlap.
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=key or "not-needed",
            timeout=timeout_s,
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(timeout=timeout_s, limits=limits),
        )

    @property
    def model(self) -> str:
        return self._model

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAICompatibleLLM(model={self._model!r}, base_url={self.base_url!r})"

    async def aclose(self) -> None:
        await self._client.close()

    def _kwargs(self, request: LLMRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self._model,
            "messages": [m.model_dump(exclude_none=True) for m in request.messages],
            "temperature": request.temperature,
        }
        if request.max_tokens is not None:
            kwargs["max_tokens"] = request.max_tokens
        if request.sampling_seed is not None:
            kwargs["seed"] = request.sampling_seed
        if request.stop:
            kwargs["stop"] = list(request.stop)
        fmt = request.response_format
        if fmt is ResponseFormat.JSON_SCHEMA:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.json_schema or {}, "strict": False},
            }
        elif fmt is ResponseFormat.JSON_OBJECT:
            kwargs["response_format"] = {"type": "json_object"}
        elif fmt is ResponseFormat.TOOL:
            kwargs["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": request.schema_name,
                        "description": f"Return the {request.schema_name} object.",
                        "parameters": request.json_schema or {"type": "object"},
                    },
                }
            ]
            kwargs["tool_choice"] = {"type": "function", "function": {"name": request.schema_name}}
        return kwargs

    async def complete(self, request: LLMRequest) -> LLMResponse:
        started = time.perf_counter()
        try:
            # the raw POST of the documented `client.post` route: the same request and errors
            # as `chat.completions.create`, without its recursive TypedDict transform of the
            # (already plain JSON) body (~2 ms per call), and read as plain JSON (`cast_to=object`):
            # building a ChatCompletion model costs ~0.3 ms per call for the few fields personae
            # reads, which `_read_completion` checks itself
            # `cast_to=httpx.Response` is the SDK's documented way to read a custom request's
            # headers (README, "Undocumented endpoints"): the x-ratelimit-* ones feed the limiter
            raw = await self._client.post("/chat/completions", cast_to=httpx.Response, body=self._kwargs(request))
            data = json.loads(raw.content)
        except openai.APIStatusError as exc:
            raise _status_error(exc, request, self._model) from None
        except openai.APIConnectionError as exc:  # APITimeoutError included
            raise _connection_error(exc, str(self._client.base_url), self._model, self.timeout_s) from None
        except (openai.APIResponseValidationError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
            body = f"; body starts {exc.doc[:200]!r}" if isinstance(exc, json.JSONDecodeError) else ""
            raise ModelCallError(f"malformed response body: {exc.__class__.__name__}{body}", model=self._model, retryable=True) from None
        latency = time.perf_counter() - started
        text, finish_reason, model, usage = _read_completion(data, tool=request.response_format is ResponseFormat.TOOL, model=self._model)
        if usage is None:
            usage = Usage(prompt_tokens=sum(estimate_tokens(m.content) for m in request.messages), completion_tokens=estimate_tokens(text))
        return LLMResponse(
            text=text, usage=usage, model=model, provider=self.provider, finish_reason=finish_reason, latency_s=latency,
            rate_limit=parse_rate_limit_headers(raw.headers),
        )


def _read_completion(data: Any, *, tool: bool, model: str) -> tuple[str, str | None, str, Usage | None]:
    """Text, finish reason, model and usage of a chat completion body, or a retryable error naming what is wrong."""
    try:
        choices = data.get("choices")
        if not choices:
            raise ModelCallError("response has no choices", model=model, retryable=True)
        choice = choices[0]
        message = choice.get("message") or {}
        calls = message.get("tool_calls") if tool else None
        text = (calls[0]["function"].get("arguments") if calls else message.get("content")) or ""
        if not isinstance(text, str):
            raise TypeError(f"content is {type(text).__name__}")
        usage = data.get("usage")
        details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
        counted = (
            Usage(prompt_tokens=usage.get("prompt_tokens") or 0, completion_tokens=usage.get("completion_tokens") or 0,
                  cached_tokens=(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0)
            if isinstance(usage, dict) else None
        )
        return text, choice.get("finish_reason"), data.get("model") or model, counted
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ModelCallError(f"malformed response body: {exc.__class__.__name__}: {str(exc)[:200]}", model=model, retryable=True) from None


def _connection_error(exc: openai.APIConnectionError, url: str, model: str, timeout_s: float) -> ModelCallError:
    """A refused connection or unknown host as such (the SDK may call it a timeout), else a timeout or connection error."""
    where = public_url(url)
    reason = unreachable_reason(exc)
    if reason is not None:
        message = f"endpoint unreachable: {reason} at {where} (is the server running, and is the base URL right?)"
    elif isinstance(exc, openai.APITimeoutError):
        message = f"request timed out after {timeout_s:g}s at {where} (PERSONAE_LLM_TIMEOUT_S or the model's timeout_s)"
    else:
        message = f"connection to {where} failed: {exc.__class__.__name__}"
    return ModelCallError(message, model=model, retryable=True)


def _status_error(exc: openai.APIStatusError, request: LLMRequest, model: str) -> ModelCallError:
    status = exc.status_code
    detail = _error_detail(exc)
    if status in (400, 422) and request.response_format is not ResponseFormat.TEXT:
        return UnsupportedFeature(f"endpoint rejected response format {request.response_format.value}: {detail}", status=status, model=model)
    retryable = status in (408, 409, 425, 429) or status >= 500
    retry_after = retry_after_of(exc.response.headers) if exc.response is not None else None
    return ModelCallError(f"endpoint returned HTTP {status}: {detail}", status=status, model=model, retryable=retryable, retry_after=retry_after)


def _error_detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])[:300]
    return str(exc.message)[:300]
