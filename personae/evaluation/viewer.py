"""The scorecard's transcript viewer: conversations to read, with critic verdicts and flagged turns.

:func:`transcript_view` builds the data the HTML scorecard embeds (the viewer lives only
in ``scorecard.html``, never in ``scorecard.json``): each conversation's turns with the
speaker's name and role, the critic's verdict and rejected drafts
(``utterance.metadata["critic"]``), and per-turn flags from the same lexical checks as
the transcript metrics (:mod:`personae.evaluation.lexical`):

* ``echo`` — the turn copies at least :data:`~personae.evaluation.lexical.COPY_SHARE` of
  one of the partner's two previous turns, in order;
* ``repetition`` — it copies one of the speaker's own earlier turns;
* ``role_confusion`` — it writes a line for another participant or claims another's
  role (:func:`personae.nodes.critic.role_confusion_issues`);
* ``prompt_leak`` — it repeats the persona prompt's fixed wording;
* ``critic_gave_up`` — the critic rejected every attempt and the best one was kept.

Huge runs are capped: the first ``limit`` conversations are embedded, and the page says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from personae.evaluation.lexical import COPY_SHARE, copies, leaks_prompt, prompt_fragments
from personae.evaluation.text import words
from personae.evaluation.transcript import TranscriptReport
from personae.models import Conversation, Utterance, is_event
from personae.nodes.critic import role_confusion_issues
from personae.nodes.state import speaker_labels

__all__ = ["MAX_CONVERSATIONS", "FLAG_CODES", "ordered_turns", "turn_flags", "transcript_view", "embed_json"]

MAX_CONVERSATIONS = 200
"""Conversations embedded in the HTML by default (the first ones of the run)."""
FLAG_CODES = ("echo", "repetition", "role_confusion", "prompt_leak", "critic_gave_up")
_MAX_TEXT = 4000
_MAX_DRAFT = 1500


def ordered_turns(conv: Conversation) -> list[Utterance]:
    """The utterances of ``conv`` in turn order."""
    return sorted(conv.utterances, key=lambda u: u.turn)


def turn_flags(conv: Conversation, *, fragments: frozenset[tuple[str, ...]] | None = None) -> list[list[dict[str, str]]]:
    """The flags (``{"code", "detail"}``) of each turn of :func:`ordered_turns`, in that order.

    Turns by participants of ``conv`` are compared with each other as the transcript
    metrics compare them, so a turn flagged ``echo`` here is counted by ``echo_rate``
    there; a turn by an unknown speaker gets no flags.
    """
    fragments = prompt_fragments() if fragments is None else fragments
    labels = speaker_labels(conv.participants)
    by_id = {p.id: p for p in conv.participants}
    ordered = ordered_turns(conv)
    position = [i for i, u in enumerate(ordered) if u.speaker in by_id]
    utts = [ordered[i] for i in position]
    tokens = [words(u.text) for u in utts]
    out: list[list[dict[str, str]]] = [[] for _ in ordered]
    for t, u in enumerate(utts):
        found: list[dict[str, str]] = []
        partner = [q for q in range(t) if utts[q].speaker != u.speaker][-2:]
        own = [q for q in range(t) if utts[q].speaker == u.speaker]
        for code, candidates in (("echo", partner), ("repetition", own)):
            best = _best_copy(tokens[t], [(q, tokens[q]) for q in candidates])
            if best is not None and best[1] >= COPY_SHARE:
                q, share = best
                found.append({"code": code, "detail": f"copies {share:.0%} of {labels.get(utts[q].speaker, utts[q].speaker)}'s turn {utts[q].turn}"})
        if len(conv.participants) > 1:
            found += [{"code": "role_confusion", "detail": d} for d in role_confusion_issues(u.text, by_id[u.speaker], conv.participants)]
        if leaks_prompt(tokens[t], fragments):
            found.append({"code": "prompt_leak", "detail": "repeats the persona prompt's wording"})
        critic = u.metadata.get("critic")
        if isinstance(critic, dict) and critic.get("verdict") == "gave_up":
            found.append({"code": "critic_gave_up", "detail": f"kept the best of {critic.get('attempts', '?')} rejected attempts"})
        out[position[t]] = found
    return out


def _best_copy(turn: list[str], candidates: list[tuple[int, list[str]]]) -> tuple[int, float] | None:
    """The candidate ``turn`` copies most, by :func:`copies` (``None`` when the turn is too short to judge)."""
    best: tuple[int, float] | None = None
    for q, other in candidates:
        share = copies(turn, [other])
        if share is None:
            return None
        if best is None or share > best[1]:
            best = (q, share)
    return best


def transcript_view(
    conversations: Sequence[Conversation],
    report: TranscriptReport | None = None,
    *,
    limit: int = MAX_CONVERSATIONS,
) -> dict[str, Any]:
    """The viewer's data: the first ``limit`` conversations with their turns, flags, critic verdicts and metrics.

    ``report`` supplies each conversation's metric values (for filtering and sorting);
    ``flagged_turns`` and ``n_turns`` are always there.
    """
    values = {c.conversation_id: c.values for c in report.per_conversation} if report is not None else {}
    fragments = prompt_fragments()
    shown = list(conversations[:limit])
    items = [_conversation(conv, values.get(conv.id, {}), fragments) for conv in shown]
    metrics = sorted({name for item in items for name in item["metrics"]})
    return {
        "n_total": len(conversations),
        "n_shown": len(shown),
        "limit": limit,
        "metrics": metrics,
        "flag_codes": list(FLAG_CODES),
        "conversations": items,
    }


def _conversation(conv: Conversation, values: dict[str, float | None], fragments: frozenset[tuple[str, ...]]) -> dict[str, Any]:
    flags = turn_flags(conv, fragments=fragments)
    labels = speaker_labels(conv.participants)
    roles = {p.id: p.role for p in conv.participants}
    turns = [_turn(u, labels, roles, f) for u, f in zip(ordered_turns(conv), flags)]
    metrics = {k: round(float(v), 4) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    metrics["flagged_turns"] = float(sum(1 for t in turns if t["flags"]))
    metrics["n_turns"] = float(len(turns))
    return {
        "id": conv.id,
        "scenario": conv.scenario.name,
        "status": conv.status.value,
        "stop_reason": conv.stop_reason.value if conv.stop_reason else None,
        "error": _cap(conv.error, _MAX_TEXT) if conv.error else None,
        "participants": [{"name": labels[p.id], "role": p.role} for p in conv.participants],
        "metrics": metrics,
        "turns": turns,
    }


def _turn(u: Utterance, labels: dict[str, str], roles: dict[str, str], flags: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "turn": u.turn,
        "speaker": labels.get(u.speaker, u.speaker),
        "role": roles.get(u.speaker, "event" if is_event(u) else "?"),
        "text": _cap(u.text, _MAX_TEXT),
        "flags": flags,
        "critic": _critic(u.metadata.get("critic")),
    }


def _critic(verdict: Any) -> dict[str, Any] | None:
    """The recorded verdict, with rejected drafts' text capped (what the critic node stores, see its module)."""
    if not isinstance(verdict, dict):
        return None
    history = [
        {"attempt": e.get("attempt"), "text": _cap(str(e.get("text", "")), _MAX_DRAFT), "source": e.get("source"),
         "issues": [_issue(i) for i in e.get("issues") or []]}
        for e in verdict.get("history") or [] if isinstance(e, dict)
    ]
    return {
        "verdict": str(verdict.get("verdict", "?")),
        "attempts": verdict.get("attempts"),
        "llm": bool(verdict.get("llm")),
        "chosen_attempt": verdict.get("chosen_attempt"),
        "issues": [_issue(i) for i in verdict.get("issues") or []],
        "history": history,
    }


def _issue(issue: Any) -> str:
    if isinstance(issue, dict):
        return ": ".join(str(issue[k]) for k in ("code", "detail") if issue.get(k))
    return str(issue)


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text) - limit} more characters]"


def embed_json(data: Any) -> str:
    """``data`` as JSON safe to place inside a ``<script type="application/json">`` element."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
