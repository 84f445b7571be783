"""Transcript metrics without a judge: embeddings plus text statistics.

Per conversation, from an injected :class:`~personae.embeddings.Embedder`:

* **persona drift** — similarity of each speaker's utterances to its own persona
  profile over its turns: the least-squares slope (negative = drifting away) and the
  early-minus-late difference (positive = drifting away);
* **echoing** — similarity of an utterance to the partner turns just before it,
  against a shuffled baseline (its mean similarity to the partner's other turns);
* **role confusion** — utterances attributed to the participant whose persona they
  resemble most (accuracy; confusion = 1 − accuracy), and authorship verification by
  similarity to each speaker's *other* utterances;
* **adherence** — the speaker's persona retrieved from its utterances among the whole
  population (reciprocal rank, hit@1, hit@k; MRR over speakers);
* speaker share and its Gini (monopolisation), length and turn statistics,
  distinct-1/2, repetition, stop reasons and statuses.

Failed conversations are counted but not measured.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Generator, Iterable, Sequence

import numpy as np
from pydantic import BaseModel, Field

from personae.embeddings.base import Embedder, normalize
from personae.evaluation.config import EvaluationConfig
from personae.evaluation.text import distinct_n, finite_mean, gini, persona_profile, words
from personae.models import Conversation, ConversationStatus, Persona

__all__ = [
    "SpeakerMetrics",
    "ConversationMetrics",
    "AdherenceSummary",
    "TranscriptReport",
    "transcript_metrics",
    "evaluate_transcripts",
    "population_for",
]

DRIFT_BINS = 5
_CHUNK = 256
_EMBED_BATCH = 512


class SpeakerMetrics(BaseModel):
    """One participant in one conversation."""

    speaker: str
    persona_id: str
    turns: int
    words: int
    turn_share: float
    word_share: float
    persona_sim: float | None = None
    drift_slope: float | None = None
    drift_drop: float | None = None
    attribution_accuracy: float | None = None
    adherence_rank: int | None = None


class ConversationMetrics(BaseModel):
    """Metrics of one conversation: ``values`` are flat numbers (``None`` = undefined here)."""

    conversation_id: str
    status: str
    stop_reason: str | None
    values: dict[str, float | None] = Field(default_factory=dict)
    speakers: list[SpeakerMetrics] = Field(default_factory=list)


class AdherenceSummary(BaseModel):
    """Persona retrieval from utterances among the population."""

    k: int
    n_queries: int
    n_candidates: int
    mrr: float | None
    hit_1: float | None
    hit_k: float | None


class TranscriptReport(BaseModel):
    """Transcript metrics over a set of conversations."""

    n_conversations: int
    n_measured: int
    embedder: str
    aggregate: dict[str, float | None]
    adherence: AdherenceSummary
    stop_reasons: dict[str, int]
    statuses: dict[str, int]
    drift_curve: list[float | None] = Field(description=f"mean persona similarity per relative position bin ({DRIFT_BINS} bins)")
    per_conversation: list[ConversationMetrics] = Field(default_factory=list)

    def samples(self, metric: str) -> list[float]:
        """Finite per-conversation values of ``metric`` (for tests across arms)."""
        out = []
        for conv in self.per_conversation:
            value = conv.values.get(metric)
            if value is not None and math.isfinite(value):
                out.append(float(value))
        return out

    def metric_names(self) -> list[str]:
        """Every per-conversation metric name that occurs."""
        return sorted({k for c in self.per_conversation for k in c.values})

    def metrics(self, prefix: str = "transcript") -> dict[str, float]:
        """Flat, finite figures for tracking."""
        out: dict[str, float | None] = {f"{prefix}.{k}": v for k, v in self.aggregate.items()}
        out[f"{prefix}.n_conversations"] = float(self.n_conversations)
        out[f"{prefix}.n_measured"] = float(self.n_measured)
        a = self.adherence
        out.update({f"{prefix}.adherence.mrr": a.mrr, f"{prefix}.adherence.hit_1": a.hit_1, f"{prefix}.adherence.hit_{a.k}": a.hit_k,
                    f"{prefix}.adherence.n_candidates": float(a.n_candidates)})
        for reason, count in self.stop_reasons.items():
            out[f"{prefix}.stop_reason.{reason}"] = float(count)
        for status, count in self.statuses.items():
            out[f"{prefix}.status.{status}"] = float(count)
        return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


# ---- public entry points ------------------------------------------------------------


def population_for(conversations: Iterable[Conversation], personas: Sequence[Persona] | None = None) -> list[Persona]:
    """The candidate personas for adherence: ``personas`` plus every participant's persona."""
    found: dict[str, Persona] = {p.id: p for p in personas or ()}
    for conv in conversations:
        for participant in conv.participants:
            found.setdefault(participant.persona.id, participant.persona)
    return list(found.values())


def transcript_metrics(
    conversations: Sequence[Conversation],
    *,
    embedder: Embedder,
    personas: Sequence[Persona] | None = None,
    config: EvaluationConfig | None = None,
) -> TranscriptReport:
    """Transcript metrics (synchronous embedding; use :func:`evaluate_transcripts` in async code)."""
    steps = _steps(conversations, personas, config or EvaluationConfig(), embedder.name)
    try:
        texts = next(steps)
        while True:
            texts = steps.send(_join([embedder.embed(b) for b in _batches(texts)]))
    except StopIteration as done:
        return done.value


async def evaluate_transcripts(
    conversations: Sequence[Conversation],
    *,
    embedder: Embedder,
    personas: Sequence[Persona] | None = None,
    config: EvaluationConfig | None = None,
) -> TranscriptReport:
    """Transcript metrics of ``conversations``; adherence ranks among ``personas`` ∪ participants."""
    steps = _steps(conversations, personas, config or EvaluationConfig(), embedder.name)
    try:
        texts = next(steps)
        while True:
            texts = steps.send(_join([await embedder.aembed(b) for b in _batches(texts)]))
    except StopIteration as done:
        return done.value


def _steps(
    conversations: Sequence[Conversation], personas: Sequence[Persona] | None, config: EvaluationConfig, embedder_name: str
) -> Generator[list[str], np.ndarray, TranscriptReport]:
    """The measurement as a generator: yields texts to embed, receives their vectors.

    One core for the sync and the async entry points, which differ only in how they embed.
    """
    population = population_for(conversations, personas)
    acc = _Accumulator(population, (yield [persona_profile(p) for p in population]), config, embedder_name)
    for chunk in _chunks(conversations):
        texts = _texts(chunk)
        vectors = (yield texts) if texts else []
        acc.add(chunk, dict(zip(texts, vectors)))
    return acc.finish(len(conversations))


def _join(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def _chunks(conversations: Sequence[Conversation]) -> Iterable[list[Conversation]]:
    for start in range(0, len(conversations), _CHUNK):
        yield list(conversations[start : start + _CHUNK])


def _texts(chunk: Sequence[Conversation]) -> list[str]:
    return list(dict.fromkeys(u.text for c in chunk if c.status is not ConversationStatus.FAILED for u in c.utterances))


def _batches(texts: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(texts), _EMBED_BATCH):
        yield texts[start : start + _EMBED_BATCH]


# ---- the measurements ---------------------------------------------------------------


class _Accumulator:
    """Measures conversations chunk by chunk, keeping only what adherence needs."""

    def __init__(self, population: list[Persona], persona_vectors: np.ndarray, config: EvaluationConfig, embedder_name: str) -> None:
        self.population = population
        self.persona_index = {p.id: i for i, p in enumerate(population)}
        self.persona_vectors = normalize(np.asarray(persona_vectors))
        self.config = config
        self.embedder_name = embedder_name
        self.results: list[ConversationMetrics] = []
        self.queries: list[np.ndarray] = []
        self.query_owner: list[tuple[int, int, str]] = []  # (result index, speaker index, persona id)
        self.drift_bins: list[list[float]] = [[] for _ in range(DRIFT_BINS)]
        self.stop_reasons: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()

    def add(self, chunk: Sequence[Conversation], vectors: dict[str, np.ndarray]) -> None:
        for conv in chunk:
            self.statuses[conv.status.value] += 1
            self.stop_reasons[conv.stop_reason.value if conv.stop_reason else "none"] += 1
            if conv.status is ConversationStatus.FAILED:
                continue
            self.results.append(self._measure(conv, vectors))

    def _persona_vector(self, persona_id: str) -> np.ndarray:
        return self.persona_vectors[self.persona_index[persona_id]]

    def _measure(self, conv: Conversation, vectors: dict[str, np.ndarray]) -> ConversationMetrics:
        utts = sorted(conv.utterances, key=lambda u: u.turn)
        known = {p.id for p in conv.participants}
        utts = [u for u in utts if u.speaker in known]
        result = ConversationMetrics(conversation_id=conv.id, status=conv.status.value, stop_reason=conv.stop_reason.value if conv.stop_reason else None)
        values = result.values
        values.update(_text_stats(utts))
        for key, value in conv.metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[f"recorded.{key}"] = float(value)
        speakers = _speaker_shares(conv, utts)
        result.speakers = speakers
        values["top_share"] = max((s.word_share for s in speakers), default=None) if utts else None
        values["turn_top_share"] = max((s.turn_share for s in speakers), default=None) if utts else None
        # normalised Gini (× n/(n−1)): 0 = equal shares, 1 = one participant says everything
        n_part = len(speakers)
        values["gini"] = _none_if_nan(gini([s.words for s in speakers]) * n_part / (n_part - 1)) if n_part > 1 else None
        if not utts:
            return result
        emb = normalize(np.stack([vectors[u.text] for u in utts]))
        owner = [u.speaker for u in utts]
        persona_of = {p.id: p.persona.id for p in conv.participants}
        persona_mat = np.stack([self._persona_vector(persona_of[s.speaker]) for s in speakers])
        speaker_pos = {s.speaker: i for i, s in enumerate(speakers)}
        persona_sims = emb @ persona_mat.T  # utterance × participant

        own_sims = np.array([persona_sims[t, speaker_pos[owner[t]]] for t in range(len(utts))])
        values["persona_sim"] = float(own_sims.mean())
        slopes, drops = [], []
        for s in speakers:
            idx = [t for t in range(len(utts)) if owner[t] == s.speaker]
            if not idx:
                continue
            series = own_sims[idx]
            s.persona_sim = float(series.mean())
            for i, value in enumerate(series):
                pos = i / (len(series) - 1) if len(series) > 1 else 0.0
                self.drift_bins[min(int(pos * DRIFT_BINS), DRIFT_BINS - 1)].append(float(value))
            if len(series) >= 2:
                s.drift_slope = float(np.polyfit(np.arange(len(series), dtype=float), series, 1)[0])
                half = len(series) // 2
                s.drift_drop = float(series[:half].mean() - series[len(series) - half :].mean())
                slopes.append(s.drift_slope)
                drops.append(s.drift_drop)
        values["drift_slope"] = _mean_opt(slopes)
        values["drift_drop"] = _mean_opt(drops)

        values.update(_echo(emb, owner, self.config.echo_window))
        values.update(_attribution(emb, owner, persona_sims, speakers, speaker_pos))

        result_index = len(self.results)
        for s_idx, s in enumerate(speakers):
            idx = [t for t in range(len(utts)) if owner[t] == s.speaker]
            if idx:
                self.queries.append(normalize(emb[idx].mean(axis=0, keepdims=True))[0])
                self.query_owner.append((result_index, s_idx, s.persona_id))
        return result

    def finish(self, n_conversations: int) -> TranscriptReport:
        adherence = self._adherence()
        names = sorted({k for r in self.results for k in r.values})
        aggregate = {name: _mean_opt(r.values.get(name) for r in self.results) for name in names}
        return TranscriptReport(
            n_conversations=n_conversations,
            n_measured=len(self.results),
            embedder=self.embedder_name,
            aggregate=aggregate,
            adherence=adherence,
            stop_reasons=dict(sorted(self.stop_reasons.items())),
            statuses=dict(sorted(self.statuses.items())),
            drift_curve=[_mean_opt(b) for b in self.drift_bins],
            per_conversation=self.results,
        )

    def _adherence(self) -> AdherenceSummary:
        k = self.config.hit_k
        ranks: list[int] = []
        for start in range(0, len(self.queries), 1024):
            block = np.stack(self.queries[start : start + 1024])
            sims = block @ self.persona_vectors.T
            for row, (res_i, spk_i, persona_id) in enumerate(self.query_owner[start : start + 1024]):
                true = sims[row, self.persona_index[persona_id]]
                rank = int((sims[row] > true).sum()) + 1
                ranks.append(rank)
                self.results[res_i].speakers[spk_i].adherence_rank = rank
        by_conv: dict[int, list[int]] = {}
        for (res_i, _, _), rank in zip(self.query_owner, ranks):
            by_conv.setdefault(res_i, []).append(rank)
        for res_i, rs in by_conv.items():
            values = self.results[res_i].values
            values["adherence_rr"] = float(np.mean([1.0 / r for r in rs]))
            values["adherence_hit1"] = float(np.mean([r == 1 for r in rs]))
            values[f"adherence_hit{k}"] = float(np.mean([r <= k for r in rs]))
        return AdherenceSummary(
            k=k,
            n_queries=len(ranks),
            n_candidates=len(self.population),
            mrr=float(np.mean([1.0 / r for r in ranks])) if ranks else None,
            hit_1=float(np.mean([r == 1 for r in ranks])) if ranks else None,
            hit_k=float(np.mean([r <= k for r in ranks])) if ranks else None,
        )


def _text_stats(utts) -> dict[str, float | None]:
    tokens = [words(u.text) for u in utts]
    lengths = np.array([len(t) for t in tokens], dtype=float)
    seen: set[str] = set()
    repeats = 0
    for u in utts:
        norm = " ".join(words(u.text))
        if norm and norm in seen:
            repeats += 1
        seen.add(norm)
    n = len(utts)
    return {
        "n_utterances": float(n),
        "n_speakers": float(len({u.speaker for u in utts})),
        "words_total": float(lengths.sum()),
        "words_mean": float(lengths.mean()) if n else None,
        "words_std": float(lengths.std()) if n else None,
        "empty_rate": float(np.mean(lengths == 0)) if n else None,
        "repetition_rate": repeats / n if n else None,
        "distinct_1": _none_if_nan(distinct_n(tokens, 1)),
        "distinct_2": _none_if_nan(distinct_n(tokens, 2)),
    }


def _speaker_shares(conv: Conversation, utts) -> list[SpeakerMetrics]:
    turns = Counter(u.speaker for u in utts)
    word_counts = Counter()
    for u in utts:
        word_counts[u.speaker] += len(words(u.text))
    total_turns = sum(turns.values()) or 1
    total_words = sum(word_counts.values()) or 1
    return [
        SpeakerMetrics(
            speaker=p.id,
            persona_id=p.persona.id,
            turns=turns[p.id],
            words=word_counts[p.id],
            turn_share=turns[p.id] / total_turns,
            word_share=word_counts[p.id] / total_words,
        )
        for p in conv.participants
    ]


def _echo(emb: np.ndarray, owner: list[str], window: int) -> dict[str, float | None]:
    """Similarity to the preceding partner turns vs the mean similarity to the partner's other turns."""
    sims = emb @ emb.T
    echo, base, excess = [], [], []
    for t in range(len(owner)):
        partner = [q for q in range(len(owner)) if owner[q] != owner[t]]
        recent = [q for q in partner if q < t][-window:]
        if not recent:
            continue
        e = float(sims[t, recent].mean())
        echo.append(e)
        others = [q for q in partner if q not in recent]
        if others:
            b = float(sims[t, others].mean())
            base.append(b)
            excess.append(e - b)
    return {"echo": _mean_opt(echo), "echo_baseline": _mean_opt(base), "echo_excess": _mean_opt(excess)}


def _attribution(emb, owner, persona_sims, speakers, speaker_pos) -> dict[str, float | None]:
    """Who said it? By persona similarity (role confusion) and by the speakers' other turns (authorship)."""
    active = [s for s in speakers if s.turns > 0]
    if len(active) < 2:
        return {"attribution_accuracy": None, "role_confusion": None, "authorship_accuracy": None}
    cols = [speaker_pos[s.speaker] for s in active]
    by_speaker = {s.speaker: [t for t in range(len(owner)) if owner[t] == s.speaker] for s in active}
    sums = {s: emb[idx].sum(axis=0) for s, idx in by_speaker.items()}
    hits, authorship = [], []
    per_speaker_hits: dict[str, list[bool]] = {s.speaker: [] for s in active}
    for t, who in enumerate(owner):
        row = persona_sims[t, cols]
        mine = row[[s.speaker for s in active].index(who)]
        correct = bool(mine > max(v for s, v in zip(active, row) if s.speaker != who))
        hits.append(correct)
        per_speaker_hits[who].append(correct)
        scores = {}
        for s in active:
            n = len(by_speaker[s.speaker]) - (1 if s.speaker == who else 0)
            if n == 0:
                continue
            centroid = sums[s.speaker] - (emb[t] if s.speaker == who else 0.0)
            norm = np.linalg.norm(centroid)
            scores[s.speaker] = float(emb[t] @ centroid / norm) if norm else 0.0
        if who in scores and len(scores) >= 2:
            authorship.append(scores[who] > max(v for s, v in scores.items() if s != who))
    for s in active:
        s.attribution_accuracy = float(np.mean(per_speaker_hits[s.speaker]))
    accuracy = float(np.mean(hits))
    return {
        "attribution_accuracy": accuracy,
        "role_confusion": 1.0 - accuracy,
        "authorship_accuracy": float(np.mean(authorship)) if authorship else None,
    }


def _mean_opt(values: Iterable[float | None]) -> float | None:
    m = finite_mean(v for v in values if v is not None)
    return None if math.isnan(m) else m


def _none_if_nan(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
