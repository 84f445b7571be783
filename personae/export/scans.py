"""The scans an export runs before writing: PII, AI-identity leakage, prompt leakage, critic and metric failures.

Every scan returns :class:`Finding` records naming the table, the record, the field and
the kind of problem. A finding's ``excerpt`` never repeats what a PII scan found (the
match is shown masked), so the report can be published with the data.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from personae.export.pii import PiiMatch, find_pii, mask
from personae.lexical import words
from personae.models import Conversation

__all__ = [
    "SCANS",
    "Finding",
    "ScanReport",
    "DEFAULT_METRIC_LIMITS",
    "PROMPT_LEAK_WORDS",
    "pii_findings",
    "ai_identity_findings",
    "prompt_leak_findings",
    "critic_findings",
    "metric_findings",
    "excerpt",
]

Scan = Literal["pii", "ai_identity", "prompt_leak", "critic", "metric"]
SCANS: tuple[str, ...] = ("pii", "ai_identity", "prompt_leak", "critic", "metric")

PROMPT_LEAK_WORDS = 10
"""An utterance sharing a run of this many consecutive words with a system prompt of its conversation leaks it."""

DEFAULT_METRIC_LIMITS: dict[str, float] = {"echo_rate": 0.5, "repetition_rate": 0.5, "role_confusion": 0.5}
"""Per-conversation metrics (``conversation_metrics.jsonl``) at or above which a conversation is flagged."""

_AI_IDENTITY = re.compile(
    r"""
    \bas\ an?\ (?:ai|a\.i\.|artificial\ intelligence)(?:\ (?:language\ )?model|\ assistant|\ system)?\b
    | \bas\ a\ (?:large\ )?language\ model\b
    | \bi(?:\ am|'m|’m)\ (?:just\ |only\ |merely\ )?(?:an?\ )?(?:ai|a\.i\.|artificial\ intelligence|(?:large\ )?language\ model|chatbot|virtual\ assistant|ai\ assistant|bot)\b
    | \bi(?:\ am|'m|’m)\ not\ (?:a\ )?(?:real\ )?(?:person|human)\b
    | \bi\ (?:do\ not|don't|don’t)\ have\ (?:personal\ )?(?:feelings|emotions|a\ body|personal\ experiences|personal\ opinions)\b
    | \bmy\ (?:training\ data|knowledge\ cutoff)\b
    | \bi\ was\ (?:trained|created|developed)\ by\ (?:openai|anthropic|google|meta|microsoft)\b
    | \b(?:this|the)\ (?:simulation|role-?play)\ (?:i\ am|i'm)\ (?:in|part\ of)\b
    """,
    re.VERBOSE | re.IGNORECASE,
)


class Finding(BaseModel):
    """One thing a scan found."""

    scan: Scan
    kind: str = Field(description="what exactly: email, phone, url, card, credential; phrase; ngram; gave_up; a metric name; failed")
    table: str = Field(description="personas, conversations, utterances or survey_answers")
    record_id: str
    conversation_id: str | None = None
    field: str | None = None
    start: int | None = None
    end: int | None = None
    excerpt: str = ""
    detail: str = ""


class ScanReport(BaseModel):
    """Every finding, and counts by scan and kind."""

    findings: list[Finding] = Field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        """``scan → kind → count``, every scan present (an empty dict when it found nothing)."""
        out: dict[str, dict[str, int]] = {scan: {} for scan in SCANS}
        for (scan, kind), n in sorted(Counter((f.scan, f.kind) for f in self.findings).items()):
            out[scan][kind] = n
        return out

    def flagged_conversations(self) -> set[str]:
        """Ids of conversations with at least one finding (in themselves, their utterances or survey answers).

        A failed conversation is not flagged for failing: ``--exclude failed`` is the separate choice for that.
        """
        return {f.conversation_id for f in self.findings if f.conversation_id and f.kind != "failed"}

    def flagged_personas(self) -> set[str]:
        """Ids of personas whose own record has a finding."""
        return {f.record_id for f in self.findings if f.table == "personas"}


def excerpt(text: str, start: int, end: int, *, pii: Sequence[PiiMatch] = (), width: int = 40) -> str:
    """Up to ``width`` characters either side of ``text[start:end]``, every PII match in it masked."""
    lo, hi = max(0, start - width), min(len(text), end + width)
    out, last = [], lo
    for m in sorted(pii, key=lambda p: p.start):
        if m.end <= lo or m.start >= hi:
            continue
        out.append(text[last : max(last, m.start)])
        out.append(mask(m.kind))
        last = max(last, m.end)
    out.append(text[last:hi])
    body = "".join(out).replace("\n", " ")
    return ("…" if lo > 0 else "") + body + ("…" if hi < len(text) else "")


def pii_findings(table: str, record_id: str, fields: Mapping[str, str | None], *, conversation_id: str | None = None) -> tuple[list[Finding], dict[str, list[PiiMatch]]]:
    """PII in the text ``fields`` of one record; also the matches per field (what ``--redact`` masks)."""
    findings: list[Finding] = []
    matches: dict[str, list[PiiMatch]] = {}
    for name, text in fields.items():
        if not text:
            continue
        found = find_pii(text)
        if not found:
            continue
        matches[name] = found
        for m in found:
            findings.append(Finding(
                scan="pii", kind=m.kind, table=table, record_id=record_id, conversation_id=conversation_id, field=name,
                start=m.start, end=m.end, excerpt=excerpt(text, m.start, m.end, pii=found),
            ))
    return findings, matches


def ai_identity_findings(table: str, record_id: str, text: str, *, conversation_id: str | None, field: str = "text") -> list[Finding]:
    """Phrases of a model speaking as itself ("As an AI language model, …") instead of as the persona."""
    pii = find_pii(text)
    return [
        Finding(scan="ai_identity", kind="phrase", table=table, record_id=record_id, conversation_id=conversation_id, field=field,
                start=m.start(), end=m.end(), excerpt=excerpt(text, m.start(), m.end(), pii=pii), detail=m.group(0).lower())
        for m in _AI_IDENTITY.finditer(text)
    ]


def _ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def prompt_leak_findings(
    conversation: Conversation, system_prompts: Mapping[str, str], *, n: int = PROMPT_LEAK_WORDS
) -> list[Finding]:
    """Utterances sharing a run of ``n`` consecutive words with a system prompt of the conversation.

    ``system_prompts``: participant id → the system prompt that participant spoke under. A
    persona repeating its instructions or its profile verbatim leaks the prompt; ten words in
    a row in common with it do not happen by chance in conversation.
    """
    grams = {pid: _ngrams(words(prompt), n) for pid, prompt in system_prompts.items()}
    findings: list[Finding] = []
    for u in conversation.utterances:
        tokens = words(u.text)
        own = _ngrams(tokens, n)
        for pid, prompt_grams in grams.items():
            shared = own & prompt_grams
            if not shared:
                continue
            whose = "its own" if pid == u.speaker else f"{pid}'s"
            findings.append(Finding(
                scan="prompt_leak", kind="ngram", table="utterances", record_id=u.id, conversation_id=conversation.id, field="text",
                excerpt=excerpt(u.text, 0, min(len(u.text), 80), pii=find_pii(u.text), width=0),
                detail=f"shares {len(shared)} run(s) of {n} words with {whose} system prompt, e.g. {' '.join(sorted(shared)[0])!r}",
            ))
            break
    return findings


def critic_findings(conversation: Conversation) -> list[Finding]:
    """Utterances the critic never accepted (it gave up after its attempts and kept the least bad one)."""
    findings = []
    for u in conversation.utterances:
        verdict = u.metadata.get("critic") or {}
        if verdict.get("verdict") == "gave_up":
            findings.append(Finding(
                scan="critic", kind="gave_up", table="utterances", record_id=u.id, conversation_id=conversation.id,
                detail=f"critic gave up after {verdict.get('attempts', '?')} attempt(s): {'; '.join(map(str, _issues(verdict)))[:200]}",
            ))
    return findings


def _issues(verdict: Mapping[str, Any]) -> Iterable[Any]:
    for issue in verdict.get("issues") or []:
        yield issue.get("message", issue) if isinstance(issue, Mapping) else issue


def metric_findings(
    conversation: Conversation, values: Mapping[str, Any] | None, limits: Mapping[str, float] = DEFAULT_METRIC_LIMITS
) -> list[Finding]:
    """A failed conversation, and per-conversation metrics at or above their ``limits``."""
    findings = []
    if conversation.status.value == "failed":
        findings.append(Finding(scan="metric", kind="failed", table="conversations", record_id=conversation.id,
                                conversation_id=conversation.id, detail=(conversation.error or "failed")[:200]))
    for name, limit in sorted(limits.items()):
        value = (values or {}).get(name)
        if isinstance(value, (int, float)) and value >= limit:
            findings.append(Finding(scan="metric", kind=name, table="conversations", record_id=conversation.id,
                                    conversation_id=conversation.id, detail=f"{name} = {value:.3g} (limit {limit:g})"))
    return findings
