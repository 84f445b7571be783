"""A local OpenAI-compatible HTTP server for tests and offline demos (a test double, named as such).

It speaks real HTTP/1.1 on 127.0.0.1, so the real ``openai`` client and the whole
gateway stack (retries, limits, cache, fallbacks) are exercised end to end. It runs
its own asyncio event loop in a background thread; latency is an ``asyncio.sleep``,
so hundreds of concurrent requests overlap at little cost.

Endpoints: ``POST /v1/chat/completions`` (text, ``json_schema``, ``json_object``,
tools), ``POST /v1/embeddings`` (float or base64), ``GET /v1/models``. Faults are
injected at ``fault_rate`` from a seeded generator: 429 (with ``Retry-After``),
500, timeout (the server hangs until the client gives up), malformed (a 200 whose
body is broken JSON), truncated (JSON content cut short) and schema_invalid
(valid JSON that violates the schema).

``quota_rpm``/``quota_tpm`` turn on the quota mode (:mod:`personae.testing.quota`): chat
and embeddings requests (one quota for both) past the quota get a 429 with ``Retry-After`` and ``x-ratelimit-*`` headers, and
admitted ones carry the ``x-ratelimit-*`` headers too (:attr:`~OpenAITestServer.quota`
counts both).

``hold_until_in_flight=N`` holds every reply until N requests are in flight at once
(:attr:`~OpenAITestServer.gate_opened`), which proves that a client overlaps N calls
whatever the machine's speed, where a wall-clock bound would not.

Run it on its own with ``python -m personae.testing.server --port 8765`` or
``personae testserver``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from personae.errors import ConfigError
from personae.ids import content_hash
from personae.llm.base import estimate_tokens
from personae.testing import replies
from personae.testing.quota import ServerQuota
from personae.validation import validate_data

__all__ = ["TestServerConfig", "OpenAITestServer", "FaultKind", "ALL_FAULTS", "serve_until_interrupted", "config_from_options", "main"]

log = logging.getLogger(__name__)

FaultKind = Literal["429", "500", "timeout", "malformed", "schema_invalid", "truncated"]
ALL_FAULTS: tuple[FaultKind, ...] = ("429", "500", "timeout", "malformed", "schema_invalid", "truncated")
_TRANSPORT_FAULTS = frozenset({"429", "500", "timeout", "malformed"})
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 429: "Too Many Requests", 500: "Internal Server Error"}
_CHAT, _EMBEDDINGS, _MODELS = "/v1/chat/completions", "/v1/embeddings", "/v1/models"
_ENDPOINTS = {_CHAT: "chat.completions", _EMBEDDINGS: "embeddings", _MODELS: "models"}
_MAX_HEADER_BYTES = 64 * 1024


class TestServerConfig(BaseModel):
    """Behaviour of :class:`OpenAITestServer`; change it at run time with ``configure``."""

    __test__ = False  # not a pytest test class
    model_config = ConfigDict(extra="forbid")

    latency_s: float = Field(0.0, ge=0.0, description="seconds every reply waits (asyncio.sleep)")
    fault_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of requests that get a fault")
    faults: list[FaultKind] = Field(default_factory=lambda: list(ALL_FAULTS), description="fault kinds to draw from")
    reject_json_schema: bool = Field(False, description="answer response_format json_schema with HTTP 400")
    reject_tools: bool = Field(False, description="answer requests with tools with HTTP 400")
    retry_after_s: float | None = Field(None, ge=0.0, description="Retry-After sent with injected 429s")
    seed: int = Field(0, description="seeds replies and the fault draw")
    embedding_dim: int = Field(256, ge=8, description="embedding size unless the request sets 'dimensions'")
    embedding_formats: list[Literal["float", "base64"]] = Field(
        default_factory=lambda: ["float", "base64"],
        description="encoding_format values the embeddings endpoint accepts (like OpenAI: both); another gets HTTP 400",
    )
    embedding_ignore_format: bool = Field(False, description="answer embeddings with floats whatever encoding_format asks (as some servers do)")
    hang_s: float = Field(30.0, gt=0.0, description="longest a 'timeout' fault hangs before closing the connection")
    hold_until_in_flight: int = Field(
        0, ge=0,
        description="hold every reply until this many requests are in flight at once, then answer them all (0: off); "
        "the gate opens once and stays open",
    )
    hold_s: float = Field(60.0, gt=0.0, description="longest a reply waits for the hold_until_in_flight gate before it is answered anyway")
    quota_rpm: int | None = Field(None, ge=1, description="quota mode: chat and embeddings requests per minute, past which it answers 429")
    quota_tpm: int | None = Field(None, ge=1, description="quota mode: tokens per minute (prompt + max_tokens, settled to the real usage)")
    quota_window_s: float = Field(
        60.0, gt=0.0, le=3600.0,
        description="quota mode: seconds of quota the buckets hold (the largest burst); 1 enforces the quota per second",
    )
    simulate_prompt_cache: bool = Field(
        False,
        description="report usage.prompt_tokens_details.cached_tokens from a simulated provider prompt cache: the estimated tokens "
        "of the longest common prefix (whole messages, then characters) with the previous request that began with the same "
        "first message (a stand-in for the same speaker's previous call); a simulation of the accounting, not a cache",
    )


@dataclass
class _Request:
    method: str
    path: str
    body: bytes
    keep_alive: bool


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(payload, separators=(",", ":")).encode("utf-8"), headers or {})


def _error(status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> _Reply:
    return _json_reply(status, replies.error_body(message, kind=kind, param=param, code=code))


class _Hang:
    """Marker: hang the connection instead of replying."""


class OpenAITestServer:
    """An OpenAI-compatible server on ``127.0.0.1`` in a background thread.

    Args:
        config: behaviour (latency, faults, rejected features); defaults to a fault-free server.
        reply: optional ``reply(request_body) -> str`` deciding the chat reply content (the
            tool-call arguments in tool mode); return ``None`` to fall back to the default.
        port: TCP port; ``0`` picks a free one (read it from :attr:`port` / :attr:`base_url`).
        host: interface to bind.
        max_recorded: how many request bodies :attr:`requests` keeps (oldest dropped).

    Use it as a context manager, or call :meth:`start`/:meth:`stop`.
    """

    __test__ = False

    def __init__(
        self,
        config: TestServerConfig | None = None,
        *,
        reply: Callable[[dict[str, Any]], str | None] | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        max_recorded: int = 10_000,
    ) -> None:
        self.config = config or TestServerConfig()
        self.reply = reply
        self.host = host
        self.port: int | None = None
        self._requested_port = port
        self._lock = threading.Lock()
        self._rng = random.Random(self.config.seed)
        self._requests: deque[dict[str, Any]] = deque(maxlen=max_recorded)
        self._counts: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._startup_error: BaseException | None = None
        self._in_flight = 0
        self.peak_in_flight = 0
        """Most requests the server was handling at once (since start or :meth:`reset_counts`)."""
        self.quota: ServerQuota | None = self._new_quota(self.config)
        """The quota mode's buckets and counts (``admitted``, ``rejected``), or None when it is off."""
        self._gate: asyncio.Event | None = None
        self._last_prompt: dict[str, list[tuple[Any, str]]] = {}  # first message's hash → that request's message texts (simulate_prompt_cache)
        self.gate_opened = False
        """Whether ``hold_until_in_flight`` requests were once in flight at the same time (the gate opened)."""

    # ---- lifecycle ---------------------------------------------------------
    def start(self) -> OpenAITestServer:
        """Bind and serve in a background thread; returns once the port is open."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="personae-testserver", daemon=True)
        self._thread.start()
        ready.wait(30)
        if self._startup_error is not None or self.port is None:
            self._thread.join(5)
            self._thread = None
            error = self._startup_error or TimeoutError("the test server did not start within 30 s")
            raise RuntimeError(f"could not start the test server on {self.host}:{self._requested_port}: {error}") from error
        log.info("OpenAI test server listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        """Close every connection (hanging ones included) and stop the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        except Exception as exc:  # noqa: BLE001 - stopping must not fail the caller
            log.warning("test server shutdown was not clean: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = self._loop = self._server = None
        self.port = None

    def __enter__(self) -> OpenAITestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self._requested_port, backlog=2048, limit=_MAX_HEADER_BYTES)
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
            self._loop = loop
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._startup_error = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    # ---- inspection and control --------------------------------------------
    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:8765/v1``."""
        if self.port is None:
            raise RuntimeError("the test server is not running; call start() or use it in a with block")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def request_count(self) -> int:
        """HTTP requests received (every endpoint, faulted ones included)."""
        with self._lock:
            return sum(self._counts.values())

    @property
    def endpoint_counts(self) -> dict[str, int]:
        """Requests per endpoint: ``chat.completions``, ``embeddings``, ``models``, ``other``."""
        with self._lock:
            return dict(self._counts)

    @property
    def fault_counts(self) -> dict[str, int]:
        """Injected faults by kind."""
        with self._lock:
            return dict(self._faults)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Recorded JSON bodies of POST requests, oldest first (bodies that were not JSON are skipped)."""
        with self._lock:
            return list(self._requests)

    def configure(self, **changes: Any) -> TestServerConfig:
        """Change the behaviour of the running server, e.g. ``configure(fault_rate=0.0)``.

        Raises :class:`~personae.errors.ConfigError` naming an unknown or invalid field.
        """
        new = validate_data(TestServerConfig, {**self.config.model_dump(), **changes}, what="test server config")
        with self._lock:
            if new.seed != self.config.seed:
                self._rng = random.Random(new.seed)
            if (new.quota_rpm, new.quota_tpm, new.quota_window_s) != (self.config.quota_rpm, self.config.quota_tpm, self.config.quota_window_s):
                self.quota = self._new_quota(new)
            self.config = new
        return new

    @staticmethod
    def _new_quota(config: TestServerConfig) -> ServerQuota | None:
        if config.quota_rpm is None and config.quota_tpm is None:
            return None
        return ServerQuota(rpm=config.quota_rpm, tpm=config.quota_tpm, window_s=config.quota_window_s)

    def reset_counts(self) -> None:
        """Forget counted requests, recorded bodies and fault counts."""
        with self._lock:
            self._counts.clear()
            self._faults.clear()
            self._requests.clear()
            self.peak_in_flight = self._in_flight

    # ---- HTTP ----------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                if isinstance(request, _Reply):
                    writer.write(_encode(request, keep_alive=False))
                    await writer.drain()
                    return
                self._in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
                hold = self.config.hold_until_in_flight
                if hold and self._in_flight >= hold and not self.gate_opened:
                    self.gate_opened = True
                    self._gate_event().set()
                try:
                    reply = await self._dispatch(request)
                finally:
                    self._in_flight -= 1
                if isinstance(reply, _Hang):
                    await self._hang(reader)
                    return
                writer.write(_encode(reply, keep_alive=request.keep_alive))
                await writer.drain()
                if not request.keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return  # the client went away or sent something unparseable (e.g. a bad chunk size)
        except asyncio.CancelledError:  # server shutdown; end the connection quietly
            return
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()

    def _gate_event(self) -> asyncio.Event:
        if self._gate is None:  # created on the server's loop, the only one that touches it
            self._gate = asyncio.Event()
        return self._gate

    async def _wait_for_gate(self) -> None:
        """Hold the reply until ``hold_until_in_flight`` requests were in flight at once (at most ``hold_s``)."""
        if not self.config.hold_until_in_flight or self.gate_opened:
            return
        try:
            await asyncio.wait_for(self._gate_event().wait(), timeout=self.config.hold_s)
        except (TimeoutError, asyncio.TimeoutError):
            log.warning("the gate of %d requests in flight did not open within %gs (peak %d); answering anyway",
                        self.config.hold_until_in_flight, self.config.hold_s, self.peak_in_flight)

    async def _hang(self, reader: asyncio.StreamReader) -> None:
        """Answer nothing until the client gives up (closes) or ``hang_s`` passes."""
        try:
            await asyncio.wait_for(reader.read(1), timeout=self.config.hang_s)
        except (TimeoutError, asyncio.TimeoutError, ConnectionError):
            pass

    async def _dispatch(self, request: _Request) -> _Reply | _Hang:
        endpoint = _ENDPOINTS.get(request.path.rstrip("/"), "other")
        with self._lock:
            self._counts[endpoint] += 1
        expected = "GET" if endpoint == "models" else "POST"
        if endpoint == "other":
            return _error(404, f"unknown endpoint {request.method} {request.path}", code="not_found")
        if request.method != expected:
            return _error(405, f"{request.path} expects {expected}, got {request.method}")
        if endpoint == "models":
            return await self._serve(endpoint, None, lambda body, fault, rng: _json_reply(200, replies.models_body()))
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        with self._lock:
            self._requests.append(body)
        if endpoint == "embeddings":
            raw = body.get("input")
            texts = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
            prompt = sum(estimate_tokens(t) for t in texts if isinstance(t, str))
            return await self._within_quota(endpoint, body, prompt, 0, self._embeddings)
        return await self._chat(body)

    def _draw_fault(self, applicable: set[str]) -> str | None:
        cfg = self.config
        if cfg.fault_rate <= 0:
            return None
        with self._lock:
            if self._rng.random() >= cfg.fault_rate:
                return None
            kinds = [k for k in cfg.faults if k in applicable]
            if not kinds:
                return None
            kind = self._rng.choice(kinds)
            self._faults[kind] += 1
            return kind

    async def _serve(self, endpoint: str, body: dict[str, Any] | None, build: Callable[..., _Reply], applicable: set[str] = _TRANSPORT_FAULTS) -> _Reply | _Hang:
        """Wait for the gate, inject a transport fault or sleep ``latency_s``, then build the reply."""
        await self._wait_for_gate()
        cfg = self.config
        fault = self._draw_fault(set(applicable))
        if fault == "429":
            headers = {} if cfg.retry_after_s is None else {"Retry-After": f"{cfg.retry_after_s:g}"}
            reply = _error(429, "rate limit reached (injected by the personae test server)", kind="rate_limit_error", code="rate_limit_exceeded")
            reply.headers.update(headers)
            return reply
        if fault == "timeout":
            return _Hang()
        if cfg.latency_s:
            await asyncio.sleep(cfg.latency_s)
        if fault == "500":
            return _error(500, "internal error (injected by the personae test server)", kind="server_error")
        rng = replies.request_rng(body or {}, cfg.seed)
        try:
            reply = build(body, fault, rng)
        except Exception as exc:  # noqa: BLE001 - reported to the client as a 500
            log.exception("test server could not build a reply for %s", endpoint)
            return _error(500, f"test server could not build a reply: {exc.__class__.__name__}: {exc}", kind="server_error")
        if fault == "malformed":
            reply.body = reply.body[: max(1, len(reply.body) // 2)]
        return reply

    def _embeddings(self, body: dict[str, Any], fault: str | None, rng: random.Random) -> _Reply:
        dim = body.get("dimensions") or self.config.embedding_dim
        if body.get("input") in (None, "", []):
            return _error(400, "'input' must be a non-empty string or list", param="input")
        if not isinstance(dim, int) or dim < 8:
            return _error(400, "'dimensions' must be an integer >= 8", param="dimensions")
        encoding = body.get("encoding_format", "float")
        if encoding not in self.config.embedding_formats:
            accepted = " or ".join(repr(f) for f in self.config.embedding_formats)
            return _error(400, f"'encoding_format' must be {accepted}, got {encoding!r}", param="encoding_format")
        if self.config.embedding_ignore_format:
            body = {**body, "encoding_format": "float"}
        return _json_reply(200, replies.embeddings_body(body, dim))

    async def _chat(self, body: dict[str, Any]) -> _Reply | _Hang:
        cfg = self.config
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "'messages' must be a non-empty list", param="messages")
        response_format = body.get("response_format")
        if cfg.reject_json_schema and isinstance(response_format, dict) and response_format.get("type") == "json_schema":
            return _error(400, "response_format of type 'json_schema' is not supported by this model", param="response_format", code="unsupported_parameter")
        if cfg.reject_tools and body.get("tools"):
            return _error(400, "tools are not supported by this model", param="tools", code="unsupported_parameter")
        plan = replies.plan_chat(body)
        applicable = set(_TRANSPORT_FAULTS)
        if plan.mode != "text":
            applicable.add("truncated")
            if plan.schema is not None:
                applicable.add("schema_invalid")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        return await self._within_quota(
            "chat.completions", body, replies.prompt_tokens(body["messages"]), max_tokens if isinstance(max_tokens, int) else None,
            lambda b, fault, rng: self._chat_reply(b, plan, fault, rng), applicable,
        )

    async def _within_quota(
        self, endpoint: str, body: dict[str, Any], prompt: int, max_tokens: int | None, build: Callable[..., _Reply],
        applicable: set[str] = _TRANSPORT_FAULTS,
    ) -> _Reply | _Hang:
        """Serve a chat or embeddings request under the quota, if the quota mode is on: one quota
        for both kinds (as providers count them per key), a 429 with headers past it."""
        quota = self.quota
        if quota is None:
            return await self._serve(endpoint, body, build, applicable)
        reserved, headers = quota.admit(prompt, max_tokens)
        if reserved is None:
            reply = _error(429, "rate limit reached: quota of the personae test server", kind="requests", code="rate_limit_exceeded")
            reply.headers.update(headers)
            return reply
        used = 0

        def counted(b: dict[str, Any], fault: str | None, rng: random.Random) -> _Reply:
            nonlocal used
            out = build(b, fault, rng)
            if out.status == 200:
                used = json.loads(out.body)["usage"]["total_tokens"]
            return out

        try:
            reply = await self._serve(endpoint, body, counted, applicable)
        finally:
            quota.settle(reserved, used)
        if isinstance(reply, _Reply):
            reply.headers.update(headers)
        return reply

    def _chat_reply(self, body: dict[str, Any], plan: replies.ChatPlan, fault: str | None, rng: random.Random) -> _Reply:
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        content, finish = replies.default_content(plan, rng, max_tokens=max_tokens if isinstance(max_tokens, int) else None)
        if self.reply is not None:
            scripted = self.reply(body)
            if scripted is not None:
                content, finish = str(scripted), "stop"
        if fault == "schema_invalid" and plan.schema is not None:
            content = json.dumps(replies.violate_schema(plan.schema, rng))
        elif fault == "truncated":
            content, finish = replies.truncate_json(content), "length"
        payload = replies.chat_completion(body, plan, content, finish)
        if self.config.simulate_prompt_cache:
            payload["usage"]["prompt_tokens_details"] = {"cached_tokens": self._simulated_cached_tokens(body.get("messages") or [])}
        return _json_reply(200, payload)

    def _simulated_cached_tokens(self, messages: list[Any]) -> int:
        """Estimated tokens of the prompt prefix shared with the previous request that began with the same first message."""
        parts = [(m.get("role"), replies._text_of(m.get("content"))) if isinstance(m, dict) else (None, "") for m in messages]
        if not parts:
            return 0
        key = content_hash(list(parts[0]))
        with self._lock:
            previous = self._last_prompt.get(key, [])
            if len(self._last_prompt) >= 10_000:
                self._last_prompt.clear()
            self._last_prompt[key] = parts
        shared = 0
        while shared < min(len(parts), len(previous)) and parts[shared] == previous[shared]:
            shared += 1
        cached = sum(estimate_tokens(text) for _, text in parts[:shared])
        if shared < min(len(parts), len(previous)) and parts[shared][0] == previous[shared][0]:
            cached += len(os.path.commonprefix([parts[shared][1], previous[shared][1]])) // 4  # whole tokens of a partly shared message
        return min(cached, replies.prompt_tokens(messages))


async def _read_request(reader: asyncio.StreamReader) -> _Request | _Reply | None:
    """One HTTP/1.1 request; ``None`` when the client closed the connection, a reply on bad input."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        return _error(400, "request headers too large")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return _error(400, "malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            return _error(400, "bad Content-Length")
        body = await reader.readexactly(length) if length > 0 else b""
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
    return _Request(method.upper(), target.split("?", 1)[0], body, keep_alive)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # trailer end (no trailers expected)
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _encode(reply: _Reply, *, keep_alive: bool) -> bytes:
    head = [
        f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(reply.body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        "Server: personae-testserver",
    ]
    head += [f"{k}: {v}" for k, v in reply.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body


def serve_until_interrupted(config: TestServerConfig, *, port: int, host: str = "127.0.0.1", on_ready: Callable[[OpenAITestServer], None] | None = None) -> None:
    """Run a server in the foreground until Ctrl-C (for ``personae testserver`` and ``python -m``)."""
    with OpenAITestServer(config, port=port, host=host) as server:
        if on_ready is not None:
            on_ready(server)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m personae.testing.server", description="Local OpenAI-compatible test server (a test double).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--latency", type=float, default=0.0, help="seconds per reply")
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--faults", default=",".join(ALL_FAULTS), help="comma-separated subset of " + ",".join(ALL_FAULTS))
    p.add_argument("--retry-after", type=float, default=None, help="Retry-After seconds sent with 429s")
    p.add_argument("--reject-json-schema", action="store_true")
    p.add_argument("--reject-tools", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embedding-dim", type=int, default=256)
    p.add_argument("--quota-rpm", type=int, default=None, help="quota mode: chat requests per minute (429 past it)")
    p.add_argument("--quota-tpm", type=int, default=None, help="quota mode: tokens per minute (429 past it)")
    p.add_argument("--quota-window", type=float, default=60.0, help="quota mode: seconds of quota the buckets hold")
    p.add_argument("--simulate-prompt-cache", action="store_true", help="report cached_tokens from a simulated provider prompt cache")
    p.add_argument("--hold-until-in-flight", type=int, default=0, help="hold replies until this many requests are in flight (0: off)")
    p.add_argument("--hold", type=float, default=60.0, help="longest a reply waits for --hold-until-in-flight")
    p.add_argument("--hang", type=float, default=30.0, help="longest a 'timeout' fault hangs")
    p.add_argument("--embedding-formats", default="float,base64", help="comma-separated encoding_format values the embeddings endpoint accepts")
    p.add_argument("--embedding-ignore-format", action="store_true", help="answer embeddings with floats whatever encoding_format asks")
    return p


def config_from_options(
    *,
    latency: float = 0.0,
    fault_rate: float = 0.0,
    faults: str = ",".join(ALL_FAULTS),
    retry_after: float | None = None,
    reject_json_schema: bool = False,
    reject_tools: bool = False,
    seed: int = 0,
    embedding_dim: int = 256,
    quota_rpm: int | None = None,
    quota_tpm: int | None = None,
    quota_window: float = 60.0,
    simulate_prompt_cache: bool = False,
    hold_until_in_flight: int = 0,
    hold: float = 60.0,
    hang: float = 30.0,
    embedding_formats: str = "float,base64",
    embedding_ignore_format: bool = False,
) -> TestServerConfig:
    """A config from command-line style options (``faults`` comma-separated); bad values raise ConfigError."""
    return validate_data(
        TestServerConfig,
        {
            "latency_s": latency,
            "fault_rate": fault_rate,
            "faults": [f.strip() for f in faults.split(",") if f.strip()],
            "retry_after_s": retry_after,
            "reject_json_schema": reject_json_schema,
            "reject_tools": reject_tools,
            "seed": seed,
            "embedding_dim": embedding_dim,
            "quota_rpm": quota_rpm,
            "quota_tpm": quota_tpm,
            "quota_window_s": quota_window,
            "simulate_prompt_cache": simulate_prompt_cache,
            "hold_until_in_flight": hold_until_in_flight,
            "hold_s": hold,
            "hang_s": hang,
            "embedding_formats": [f.strip() for f in embedding_formats.split(",") if f.strip()],
            "embedding_ignore_format": embedding_ignore_format,
        },
        what="test server options",
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m personae.testing.server``: print the base URL, serve until Ctrl-C."""
    parser = _parser()
    args = vars(parser.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    try:
        config = config_from_options(**args)
    except ConfigError as exc:
        parser.error(str(exc))
    serve_until_interrupted(config, port=port, host=host, on_ready=lambda s: print(s.base_url, flush=True))  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()
