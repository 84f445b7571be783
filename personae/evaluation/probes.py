"""Memory probes (LoCoMo style): do participants remember facts stated in earlier sessions?

After a multi-session simulation, questions are written about facts a participant stated
in a group's earlier sessions (a question and the expected answer), then every
participant of the group is asked each question twice: with its memory retrieval on
(the ``k`` best memories for the question in its prompt) and off (persona alone). A
reply is scored by the share of the expected answer's content words it contains
(token recall, LoCoMo's lexical scoring without precision, so a longer answer is not
punished); the report gives mean recall with memory on and off, and the paired
difference, each with a bootstrap interval over probes.

Questions come from a model (prompt ``probe_questions``) or, for tests and as the
fallback when a model's reply is unusable, from a deterministic cloze extraction: a
fact-like sentence with its last content words blanked out.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from personae.errors import ModelOutputError
from personae.ids import stable_id
from personae.lexical import words
from personae.llm.base import Message
from personae.llm.gateway import Gateway
from personae.models import Conversation, ConversationStatus, Participant, is_event
from personae.nodes.state import derive_seed
from personae.prompts import PromptSet, render_with

__all__ = ["Probe", "ProbeAnswer", "ProbeReport", "extract_probes", "generate_probes", "recall_score", "evaluate_probes"]

log = logging.getLogger(__name__)

_STOP = frozenset(
    "a an the and or but if so to of in on at by for with from as is are was were be been am i you he she it we they me "
    "my your his her its our their this that these those there here what which who whom whose when where why how not no "
    "yes do does did have has had will would can could should may might just very really also too then than about into "
    "out up down over again more most some any all each both few other such only own same one well oh ok okay".split()
)
_SENTENCE = re.compile(r"[^.!?]+[.!?]?")
_TOKEN = re.compile(r"\w+", re.UNICODE)


class Probe(BaseModel):
    """One memory question about a fact ``speaker`` stated in an earlier session of ``group``."""

    id: str
    group: str
    conversation_id: str
    session: int
    speaker: str = Field(description="persona id of who stated the fact")
    question: str
    answer: str = Field(description="the expected answer")
    turn: int | None = None
    source: Literal["model", "extract"] = "extract"


class ProbeAnswer(BaseModel):
    """One participant's reply to a probe, with memory retrieval on or off."""

    probe_id: str
    persona_id: str
    memory: bool
    reply: str
    recall: float = Field(ge=0.0, le=1.0)
    memories: int = 0


class ProbeReport(BaseModel):
    """Recall of earlier-session facts with memory on against off (intervals: 95 % bootstrap over probes)."""

    n_probes: int
    n_answers: int
    recall_on: float | None = None
    recall_off: float | None = None
    recall_on_ci: tuple[float, float] | None = None
    recall_off_ci: tuple[float, float] | None = None
    difference: float | None = None
    difference_ci: tuple[float, float] | None = None
    sources: dict[str, int] = Field(default_factory=dict)
    probes: list[Probe] = Field(default_factory=list)
    answers: list[ProbeAnswer] = Field(default_factory=list)

    def metrics(self, prefix: str = "probes") -> dict[str, float]:
        """Flat numbers (finite only)."""
        out = {f"{prefix}.n_probes": float(self.n_probes), f"{prefix}.n_answers": float(self.n_answers)}
        for name in ("recall_on", "recall_off", "difference"):
            value = getattr(self, name)
            if value is not None:
                out[f"{prefix}.{name}"] = float(value)
            ci = getattr(self, f"{name}_ci")
            if ci is not None:
                out[f"{prefix}.{name}_lo"], out[f"{prefix}.{name}_hi"] = float(ci[0]), float(ci[1])
        return out


# ---- scoring ------------------------------------------------------------------
def _content(text: str) -> list[str]:
    return [w for w in words(text) if w not in _STOP and (len(w) > 2 or w.isdigit())]


def recall_score(reply: str, expected: str) -> float:
    """Share of the expected answer's content words found in ``reply`` (1.0 when it has none to find)."""
    wanted = set(_content(expected)) or set(words(expected))
    if not wanted:
        return 1.0
    return len(wanted & set(words(reply))) / len(wanted)


# ---- writing probes ---------------------------------------------------------------
def _earlier(conversations: Sequence[Conversation]) -> tuple[dict[str, list[Conversation]], dict[str, Conversation]]:
    """Complete conversations of each group, earlier sessions only, and each group's last session."""
    groups: dict[str, list[Conversation]] = {}
    for c in conversations:
        if c.status is ConversationStatus.COMPLETE and c.metadata.get("group") is not None:
            groups.setdefault(str(c.metadata["group"]), []).append(c)
    earlier: dict[str, list[Conversation]] = {}
    last: dict[str, Conversation] = {}
    for group, held in groups.items():
        held.sort(key=lambda c: int(c.metadata.get("session", 1)))
        last[group] = held[-1]
        earlier[group] = [c for c in held if int(c.metadata.get("session", 1)) < int(held[-1].metadata.get("session", 1))]
    return earlier, last


def _probe(c: Conversation, speaker: str, question: str, answer: str, turn: int | None, source: str) -> Probe:
    return Probe(
        id=stable_id("probe", c.id, speaker, question, answer), group=str(c.metadata["group"]), conversation_id=c.id,
        session=int(c.metadata.get("session", 1)), speaker=speaker, question=question, answer=answer, turn=turn, source=source,
    )


def _cloze(sentence: str) -> tuple[str, str] | None:
    """``sentence`` with its last two content words blanked, and those words; ``None`` if too thin."""
    tokens = list(_TOKEN.finditer(sentence))
    content = [m for m in tokens if m.group().lower() not in _STOP and (len(m.group()) > 2 or m.group().isdigit())]
    if len(tokens) < 5 or len(content) < 4:
        return None
    hidden = content[-2:]
    out, at = [], 0
    for m in hidden:
        out.append(sentence[at:m.start()] + "___")
        at = m.end()
    out.append(sentence[at:])
    return "".join(out).strip(), " ".join(m.group() for m in hidden)


def _fact_weight(sentence: str) -> float:
    tokens = _TOKEN.findall(sentence)
    digits = sum(any(ch.isdigit() for ch in t) for t in tokens)
    names = sum(t[:1].isupper() for t in tokens[1:])
    return 2.0 * digits + names + len(tokens) / 100.0


def extract_probes(conversation: Conversation, *, n: int = 3) -> list[Probe]:
    """Up to ``n`` cloze probes from ``conversation``: the most fact-like sentences participants said (one per turn)."""
    names = {p.id: p.persona.name for p in conversation.participants}
    scenario = conversation.scenario.name
    session = int(conversation.metadata.get("session", 1))
    candidates: list[tuple[float, int, Probe]] = []
    for u in conversation.utterances:
        if is_event(u) or u.speaker not in names:
            continue
        best: tuple[float, str, str] | None = None
        for sentence in (s.strip() for s in _SENTENCE.findall(u.text)):
            cloze = _cloze(sentence)
            if cloze is not None and (best is None or _fact_weight(sentence) > best[0]):
                best = (_fact_weight(sentence), *cloze)
        if best is None:
            continue
        weight, masked, answer = best
        question = (
            f'In an earlier conversation ("{scenario}", session {session}), {names[u.speaker]} said: "{masked}" '
            "What were the missing words?"
        )
        speaker = conversation.participant(u.speaker).persona.id
        candidates.append((weight, u.turn, _probe(conversation, speaker, question, answer, u.turn, "extract")))
    candidates.sort(key=lambda item: (-item[0], item[1]))
    return [p for _, _, p in candidates[:n]]


class WrittenProbe(BaseModel):
    speaker: str = Field(min_length=1)
    question: str = Field(min_length=5, max_length=500)
    answer: str = Field(min_length=1, max_length=200)


class ProbeQuestions(BaseModel):
    probes: list[WrittenProbe] = Field(default_factory=list, max_length=20)


async def generate_probes(
    conversation: Conversation,
    gateway: Gateway,
    *,
    n: int = 3,
    role: str = "evaluator",
    prompts: PromptSet | None = None,
) -> list[Probe]:
    """Up to ``n`` probes written by the model serving ``role``; the cloze extraction when its reply is unusable."""
    names = {p.persona.name.lower(): p.persona.id for p in conversation.participants}
    firsts = [p.persona.name.split()[0].lower() for p in conversation.participants if p.persona.name.split()]
    for p in conversation.participants:  # a model often names people by their first name
        first = p.persona.name.split()[0].lower() if p.persona.name.split() else ""
        if first and firsts.count(first) == 1:
            names.setdefault(first, p.persona.id)
    labels = {p.id: p.persona.name for p in conversation.participants}
    lines = [{"speaker": labels.get(u.speaker, u.speaker), "text": u.text} for u in conversation.utterances if not is_event(u)]
    prompt = render_with(prompts, "probe_questions", {
        "lines": lines, "n": n, "scenario": conversation.scenario.name, "session": conversation.metadata.get("session"),
    })
    try:
        reply = await gateway.structured([Message(role="user", content=prompt)], ProbeQuestions, role=role, seed=derive_seed(conversation.id, "probes"))
    except ModelOutputError as exc:
        log.warning("probe questions for %s: unusable reply (%s); using the extraction", conversation.id, exc.message)
        return extract_probes(conversation, n=n)
    said = " ".join(u.text for u in conversation.utterances).lower()
    probes = [
        _probe(conversation, names[w.speaker.strip().lower()], w.question.strip(), w.answer.strip(), None, "model")
        for w in reply.probes
        if w.speaker.strip().lower() in names and set(_content(w.answer)) & set(words(said))  # the answer was said
    ][:n]
    if not probes:
        log.warning("probe questions for %s: none usable (speaker unknown or answer never said); using the extraction", conversation.id)
        return extract_probes(conversation, n=n)
    return probes


# ---- asking ------------------------------------------------------------------------
async def _ask(
    probe: Probe, participant: Participant, *, memory: Any, use_memory: bool, gateway: Gateway, k: int, role: str, prompts: PromptSet | None,
) -> ProbeAnswer:
    persona = participant.persona
    memories: list[str] = []
    if use_memory and memory is not None:
        memories = [s.record.text for s in await memory.retrieve(persona.id, probe.question, k=k)]
    prompt = render_with(prompts, "probe_answer", {
        "name": persona.name, "description": persona.description or persona.summary(), "memories": memories, "question": probe.question,
    })
    reply = await gateway.text(
        [Message(role="user", content=prompt)], role=participant.model or role, temperature=0.0, max_tokens=80,
        seed=derive_seed(probe.id, persona.id, use_memory),
    )
    text = reply.text.strip()
    return ProbeAnswer(probe_id=probe.id, persona_id=persona.id, memory=use_memory, reply=text,
                       recall=recall_score(text, probe.answer), memories=len(memories))


def _interval(by_probe: list[list[float]], rng: np.random.Generator, rounds: int = 1000) -> tuple[float, float] | None:
    """95 % percentile bootstrap of the mean over probes (each probe's answers resampled together)."""
    if len(by_probe) < 2:
        return None
    means = []
    for _ in range(rounds):
        picked = rng.integers(0, len(by_probe), len(by_probe))
        values = [v for i in picked for v in by_probe[i]]
        means.append(float(np.mean(values)))
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


async def evaluate_probes(
    conversations: Sequence[Conversation],
    *,
    gateway: Gateway,
    memory: Any,
    per_conversation: int = 3,
    k: int = 5,
    questions: Literal["model", "extract"] = "model",
    question_role: str = "evaluator",
    answer_role: str = "persona",
    prompts: PromptSet | None = None,
    concurrency: int = 16,
    seed: int = 0,
) -> ProbeReport:
    """Probe every group of a multi-session run: facts from its earlier sessions, asked of its last session's participants.

    ``memory`` is the run's :class:`~personae.memory.AgentMemory` (read after the last
    session); answers with memory on get its ``k`` best memories for the question, scored
    as in a conversation (recency, importance, relevance). After a long simulated gap the
    last session's memories are the only recent ones and take the top of the ranking, so
    choose ``k`` above what one session leaves per participant (with ``k=8`` and 8-turn
    sessions the test run recalled nothing), or lower the recency weight of the memory.
    Conversations without ``metadata.group`` (single-session runs) give no probes.
    """
    earlier, last = _earlier(conversations)
    probes: list[Probe] = []
    askers: dict[str, list[Participant]] = {}
    for group, held in earlier.items():
        for c in held:
            written = await generate_probes(c, gateway, n=per_conversation, role=question_role, prompts=prompts) if questions == "model" \
                else extract_probes(c, n=per_conversation)
            probes.extend(written)
        askers[group] = list(last[group].participants)
    limit = asyncio.Semaphore(concurrency)

    async def one(probe: Probe, participant: Participant, on: bool) -> ProbeAnswer:
        async with limit:
            return await _ask(probe, participant, memory=memory, use_memory=on, gateway=gateway, k=k, role=answer_role, prompts=prompts)

    answers = list(await asyncio.gather(*(
        one(p, who, on) for p in probes for who in askers[p.group] for on in (True, False)
    )))
    return _report(probes, answers, seed=seed)


def _report(probes: list[Probe], answers: list[ProbeAnswer], *, seed: int = 0) -> ProbeReport:
    rng = np.random.default_rng(seed)
    on = [[a.recall for a in answers if a.probe_id == p.id and a.memory] for p in probes]
    off = [[a.recall for a in answers if a.probe_id == p.id and not a.memory] for p in probes]
    diff = [[x - y for x, y in zip(a, b)] for a, b in zip(on, off)]
    on, off, diff = ([v for v in xs if v] for xs in (on, off, diff))
    flat = lambda xs: float(np.mean([v for vs in xs for v in vs])) if xs else None  # noqa: E731
    sources: dict[str, int] = {}
    for p in probes:
        sources[p.source] = sources.get(p.source, 0) + 1
    return ProbeReport(
        n_probes=len(probes), n_answers=len(answers),
        recall_on=flat(on), recall_off=flat(off), difference=flat(diff),
        recall_on_ci=_interval(on, rng), recall_off_ci=_interval(off, rng), difference_ci=_interval(diff, rng),
        sources=sources, probes=probes, answers=answers,
    )
