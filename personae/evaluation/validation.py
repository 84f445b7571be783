"""Metric validation: inject known defects at known doses into real transcripts, and see which metrics notice.

A metric earns its place in the scorecard by detecting the defect its name promises.
:func:`validate_metrics` takes finished conversations (any run, or the shipped
reference dialogues), builds a copy of the whole run for every defect and dose, in
which that share of turns carries the defect, measures every copy with the same
transcript metrics, and reports per metric and defect:

* the **detection AUC** at each dose: the probability that a defective conversation
  scores worse than a clean one (0.5 = chance, 1 = always);
* the **Spearman rank correlation** between dose (0 for clean) and the metric.

A metric *passes* when its AUC at the 20 % dose is at least 0.9 for each defect it
targets. The defects are the failures seen in simulated dialogue: verbatim and
paraphrased echo of the partner, repetition loops, speaker swaps (writing the
partner's lines: role confusion), a persona swapped mid-conversation (drift), one
speaker monopolising, and off-scenario turns. Injection is seeded and deterministic.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Sequence
from enum import Enum
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field
from rich.table import Table
from scipy import stats

from personae.embeddings.base import Embedder, MemoEmbedder
from personae.errors import ConfigError
from personae.evaluation.config import EvaluationConfig
from personae.evaluation.transcript import TranscriptReport, evaluate_transcripts
from personae.models import Conversation, ConversationStatus, Persona, Utterance
from personae.nodes.state import speaker_labels

__all__ = [
    "Defect",
    "MetricSpec",
    "HEADLINE_METRICS",
    "DOSES",
    "PASS_DOSE",
    "PASS_AUC",
    "inject",
    "detection_auc",
    "MetricValidation",
    "ValidationReport",
    "validate_metrics",
    "reference_dialogues",
    "measured_validity",
]

DOSES: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
PASS_DOSE = 0.2
PASS_AUC = 0.9
_DATA = Path(__file__).resolve().parents[1] / "data"
VALIDITY_FILE = _DATA / "metric_validity.json"
"""Measured validity of every metric (written by ``bench/validation.py``; read by the scorecard)."""


class Defect(str, Enum):
    """A defect injected into transcripts."""

    ECHO_VERBATIM = "echo_verbatim"
    ECHO_PARAPHRASE = "echo_paraphrase"
    REPETITION = "repetition"
    SPEAKER_SWAP = "speaker_swap"
    PERSONA_DRIFT = "persona_drift"
    MONOPOLY = "monopoly"
    OFF_SCENARIO = "off_scenario"


class MetricSpec(BaseModel):
    """What a metric claims to measure: the defects it should detect, and which way is worse."""

    name: str
    defects: list[Defect]
    higher_is_worse: bool = True
    definition: str


HEADLINE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(name="echo_rate", defects=[Defect.ECHO_VERBATIM, Defect.ECHO_PARAPHRASE],
               definition="share of turns (≥ 4 words) whose words are, in order, ≥ 60 % of one of the partner's 2 previous turns (longest common subsequence)"),
    MetricSpec(name="echo_lcs", defects=[Defect.ECHO_VERBATIM, Defect.ECHO_PARAPHRASE],
               definition="mean longest-common-subsequence share of a turn in the partner's most similar recent turn"),
    MetricSpec(name="echo_excess", defects=[Defect.ECHO_VERBATIM, Defect.ECHO_PARAPHRASE],
               definition="centred cosine to the partner's recent turns minus centred cosine to the partner role's turns in other conversations of the scenario"),
    MetricSpec(name="repetition_rate", defects=[Defect.REPETITION],
               definition="share of turns (≥ 4 words) that copy ≥ 60 % of one of the speaker's own earlier turns, in order"),
    MetricSpec(name="role_confusion", defects=[Defect.SPEAKER_SWAP],
               definition="share of turns that write a line for another participant ('Name (role): ...'), claim another's role, or repeat the persona prompt's wording"),
    MetricSpec(name="attribution_confusion", defects=[Defect.SPEAKER_SWAP],
               definition="share of turns closer (centred embeddings) to another participant's persona than to the speaker's own"),
    MetricSpec(name="drift_drop", defects=[Defect.PERSONA_DRIFT],
               definition="centred cosine to the speaker's own persona, first half of its turns minus second half"),
    MetricSpec(name="self_drift", defects=[Defect.PERSONA_DRIFT],
               definition="1 − cosine between the centroids of a speaker's first and second half of turns (centred embeddings)"),
    MetricSpec(name="dominance", defects=[Defect.MONOPOLY],
               definition="largest excess of a participant's word share over its role's mean share in the scenario's other conversations"),
    MetricSpec(name="top_share", defects=[Defect.MONOPOLY], definition="the largest participant's share of the words"),
    MetricSpec(name="gini", defects=[Defect.MONOPOLY], definition="normalised Gini of the participants' word counts (0 equal, 1 one speaker)"),
    MetricSpec(name="scenario_sim", defects=[Defect.OFF_SCENARIO], higher_is_worse=False,
               definition="mean centred cosine of the turns to the centroid of the scenario's other conversations"),
)

_FILLERS = ("So,", "Right, so", "Okay,", "I see,", "Yes,", "Mm, so")
_SWAPS = {"i": "you", "you": "I", "my": "your", "your": "my", "me": "you", "i'm": "you're", "you're": "I'm"}
_BACKCHANNELS = ("Mm-hm.", "Okay.", "Right.", "I see.", "Sure.", "Yes.")


def reference_dialogues() -> list[Conversation]:
    """The shipped hand-written reference dialogues (``personae/data/reference/dialogues.jsonl``)."""
    from personae.jsonl import read_jsonl

    return read_jsonl(_DATA / "reference" / "dialogues.jsonl", Conversation)


def _off_topic_lines() -> list[str]:
    return [line.strip() for line in (_DATA / "reference" / "off_topic.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- injection ------------------------------------------------------------------------


def _paraphrase(text: str, rng: random.Random) -> str:
    """A mirrored near-copy: pronouns swapped, about a fifth of the words dropped, one pair swapped, a filler first."""
    tokens = [_SWAPS.get(w.lower(), w) for w in text.split()]
    kept = [w for w in tokens if rng.random() > 0.2] or tokens
    if len(kept) > 3:
        i = rng.randrange(len(kept) - 1)
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return f"{rng.choice(_FILLERS)} {' '.join(kept)}"


def _chosen(candidates: list[int], dose: float, total: int, rng: random.Random) -> list[int]:
    k = min(len(candidates), max(1, round(dose * total)))
    return sorted(rng.sample(candidates, k)) if candidates else []


def inject(
    conversations: Sequence[Conversation],
    defect: Defect,
    dose: float,
    *,
    seed: int = 0,
    off_topic: Sequence[str] | None = None,
) -> list[Conversation]:
    """Copies of ``conversations`` in which ``dose`` of each one's turns carry ``defect`` (at least one turn when dose > 0).

    Replacement text comes from the conversation itself (echo, repetition), from other
    conversations of the same scenario (speaker swap, persona drift) or from a bank of
    off-topic lines (off-scenario). Seeded: the same call gives the same copies.
    """
    if not 0.0 < dose <= 1.0:
        raise ConfigError("a defect dose is a share of turns", field="dose", expected="0 < dose <= 1", got=dose)
    pool: dict[tuple[str, str], list[tuple[str, list[str]]]] = {}
    for conv in conversations:
        role_of = {p.id: p.role for p in conv.participants}
        for p in conv.participants:
            texts = [u.text for u in sorted(conv.utterances, key=lambda u: u.turn) if u.speaker == p.id]
            pool.setdefault((conv.scenario.id, role_of[p.id]), []).append((conv.id, texts))
    bank = list(off_topic) if off_topic is not None else _off_topic_lines()
    out: list[Conversation] = []
    for index, conv in enumerate(conversations):
        if conv.status is ConversationStatus.FAILED or len(conv.utterances) < 3:
            out.append(conv)
            continue
        rng = random.Random(f"{seed}:{defect.value}:{dose}:{index}:{conv.id}")
        utts = [u.model_copy(deep=True) for u in sorted(conv.utterances, key=lambda u: u.turn)]
        _DEFECTS[defect](conv, utts, dose, rng, pool, bank)
        for u in utts:
            u.id = ""
            u.metadata = {k: v for k, v in u.metadata.items() if k != "critic"}
        copy = conv.model_copy(update={"utterances": [Utterance.model_validate(u.model_dump(exclude={"id"})) for u in utts]})
        out.append(copy)
    return out


def _echo(conv, utts, dose, rng, pool, bank, *, paraphrase: bool) -> None:
    original = [u.text for u in utts]
    candidates = [t for t in range(1, len(utts)) if any(utts[q].speaker != utts[t].speaker for q in range(t))]
    for t in _chosen(candidates, dose, len(utts), rng):
        previous = next(original[q] for q in range(t - 1, -1, -1) if utts[q].speaker != utts[t].speaker)
        utts[t].text = _paraphrase(previous, rng) if paraphrase else previous


def _repetition(conv, utts, dose, rng, pool, bank) -> None:
    original = [u.text for u in utts]
    candidates = [t for t in range(len(utts)) if any(utts[q].speaker == utts[t].speaker for q in range(t))]
    for t in _chosen(candidates, dose, len(utts), rng):
        earlier = [original[q] for q in range(t) if utts[q].speaker == utts[t].speaker]
        utts[t].text = rng.choice(earlier)


def _others(pool, conv: Conversation, role: str) -> list[list[str]]:
    return [texts for conv_id, texts in pool.get((conv.scenario.id, role), []) if conv_id != conv.id and texts]


def _speaker_swap(conv, utts, dose, rng, pool, bank) -> None:
    labels = speaker_labels(conv.participants)
    role_of = {p.id: p.role for p in conv.participants}
    for t in _chosen(list(range(len(utts))), dose, len(utts), rng):
        partner = rng.choice([p for p in conv.participants if p.id != utts[t].speaker])
        lines = [line for texts in _others(pool, conv, role_of[partner.id]) for line in texts] or [u.text for u in utts if u.speaker == partner.id]
        line = rng.choice(lines)
        label = labels[partner.id] if rng.random() < 0.5 else f"{labels[partner.id]} ({partner.role})"
        utts[t].text = f"{label}: {line}" if rng.random() < 0.5 else f"{utts[t].text}\n{label}: {line}"


def _persona_drift(conv, utts, dose, rng, pool, bank) -> None:
    speaker = utts[0].speaker
    role = next(p.role for p in conv.participants if p.id == speaker)
    donors = _others(pool, conv, role)
    if not donors:
        return
    donor = rng.choice(donors)
    own = [t for t, u in enumerate(utts) if u.speaker == speaker]
    k = min(len(own), max(1, round(dose * len(utts))))
    for i, t in enumerate(own[len(own) - k :]):
        utts[t].text = donor[min(len(donor) - 1, len(donor) - k + i)] if len(donor) >= k else donor[i % len(donor)]


def _monopoly(conv, utts, dose, rng, pool, bank) -> None:
    dominant = rng.choice(conv.participants).id
    own = [u.text for u in utts if u.speaker == dominant]
    candidates = [t for t, u in enumerate(utts) if u.speaker != dominant]
    for t in _chosen(candidates, dose, len(utts), rng):
        utts[t].text = rng.choice(_BACKCHANNELS)
        following = next((q for q in range(t + 1, len(utts)) if utts[q].speaker == dominant), None)
        if following is not None and own:
            utts[following].text = f"{utts[following].text} {rng.choice(own)}"


def _off_scenario(conv, utts, dose, rng, pool, bank) -> None:
    for t in _chosen(list(range(len(utts))), dose, len(utts), rng):
        utts[t].text = rng.choice(bank)


_DEFECTS: dict[Defect, Callable[..., None]] = {
    Defect.ECHO_VERBATIM: lambda *a: _echo(*a, paraphrase=False),
    Defect.ECHO_PARAPHRASE: lambda *a: _echo(*a, paraphrase=True),
    Defect.REPETITION: _repetition,
    Defect.SPEAKER_SWAP: _speaker_swap,
    Defect.PERSONA_DRIFT: _persona_drift,
    Defect.MONOPOLY: _monopoly,
    Defect.OFF_SCENARIO: _off_scenario,
}


# ---- measuring ------------------------------------------------------------------------


def detection_auc(clean: Sequence[float], defective: Sequence[float], *, higher_is_worse: bool = True) -> float | None:
    """P(a defective conversation scores worse than a clean one), ties counted half; ``None`` without data."""
    a = np.asarray([x for x in clean if x is not None and math.isfinite(x)], dtype=float)
    b = np.asarray([x for x in defective if x is not None and math.isfinite(x)], dtype=float)
    if not len(a) or not len(b):
        return None
    if not higher_is_worse:
        a, b = -a, -b
    greater = (b[:, None] > a[None, :]).sum()
    ties = (b[:, None] == a[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(a) * len(b)))


class MetricValidation(BaseModel):
    """One metric against one defect: AUC per dose and the dose–metric rank correlation."""

    metric: str
    defect: Defect
    auc: dict[str, float | None] = Field(description="dose (as a string) → detection AUC")
    spearman: float | None
    n: int

    def auc_at(self, dose: float) -> float | None:
        """The AUC at ``dose``."""
        return self.auc.get(f"{dose:g}")


class ValidationReport(BaseModel):
    """Every metric against its defects, on one set of transcripts and one embedder."""

    embedder: str
    n_conversations: int
    doses: list[float]
    pass_dose: float = PASS_DOSE
    pass_auc: float = PASS_AUC
    rows: list[MetricValidation]

    def passes(self, metric: str) -> bool:
        """Whether ``metric`` detects each defect it targets with AUC ≥ ``pass_auc`` at ``pass_dose``."""
        rows = [r for r in self.rows if r.metric == metric]
        return bool(rows) and all((r.auc_at(self.pass_dose) or 0.0) >= self.pass_auc for r in rows)

    def passing(self) -> list[str]:
        """The metrics that pass, in registry order."""
        return [spec.name for spec in HEADLINE_METRICS if self.passes(spec.name)]

    def table(self) -> Table:
        """A rich table: metric, defect, AUC per dose, Spearman, verdict."""
        table = Table(title=f"Metric validation ({self.embedder}, {self.n_conversations} conversations): AUC by share of defective turns")
        table.add_column("metric", no_wrap=True)
        table.add_column("defect", no_wrap=True)
        for dose in self.doses:
            table.add_column(f"{dose:.0%}", justify="right")
        table.add_column("Spearman", justify="right")
        table.add_column("verdict")
        for r in self.rows:
            ok = (r.auc_at(self.pass_dose) or 0.0) >= self.pass_auc
            table.add_row(r.metric, r.defect.value, *(_fmt(r.auc_at(d)) for d in self.doses), _fmt(r.spearman),
                          "pass" if ok else "experimental", style=None if ok else "dim")
        return table

    def to_json(self, *, indent: int | None = 2) -> str:
        """The report as JSON."""
        return json.dumps(self.model_dump(mode="json"), indent=indent)


async def validate_metrics(
    conversations: Sequence[Conversation],
    *,
    embedder: Embedder,
    personas: Sequence[Persona] | None = None,
    config: EvaluationConfig | None = None,
    doses: Sequence[float] = DOSES,
    defects: Iterable[Defect] = tuple(Defect),
    seed: int = 0,
    on_progress: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Inject every defect at every dose into ``conversations`` and score each metric's detection.

    Needs at least 4 complete conversations with 3 or more turns; speaker swaps and
    persona drift draw replacement lines from other conversations of the same scenario.
    """
    usable = [c for c in conversations if c.status is not ConversationStatus.FAILED and len(c.utterances) >= 3]
    if len(usable) < 4:
        raise ConfigError("metric validation needs at least 4 complete conversations with 3 or more turns",
                          field="conversations", expected=">= 4", got=len(usable))
    memo = MemoEmbedder(embedder)
    defects = list(defects)

    async def measure(run: Sequence[Conversation]) -> TranscriptReport:
        return await evaluate_transcripts(run, embedder=memo, personas=personas, config=config)  # type: ignore[arg-type]

    clean = await measure(usable)
    measured: dict[tuple[Defect, float], TranscriptReport] = {}
    for defect in defects:
        for dose in doses:
            if on_progress is not None:
                on_progress(f"{defect.value} at {dose:.0%}")
            measured[(defect, dose)] = await measure(inject(usable, defect, dose, seed=seed))
    rows: list[MetricValidation] = []
    for spec in HEADLINE_METRICS:
        for defect in spec.defects:
            if defect not in defects:
                continue
            base = clean.samples(spec.name)
            aucs = {f"{dose:g}": detection_auc(base, measured[(defect, dose)].samples(spec.name), higher_is_worse=spec.higher_is_worse) for dose in doses}
            xs = [0.0] * len(base) + [dose for dose in doses for _ in measured[(defect, dose)].samples(spec.name)]
            ys = base + [v for dose in doses for v in measured[(defect, dose)].samples(spec.name)]
            rho = None
            if len(set(ys)) > 1:
                rho = float(stats.spearmanr(xs, ys).statistic)
                rho = rho if spec.higher_is_worse else -rho
            rows.append(MetricValidation(metric=spec.name, defect=defect, auc=aucs, spearman=rho if rho is None or math.isfinite(rho) else None, n=len(base)))
    return ValidationReport(embedder=embedder.name, n_conversations=len(usable), doses=list(doses), rows=rows)


def measured_validity(path: str | Path | None = None) -> dict[str, dict[str, bool]]:
    """Embedder → metric → passed, as measured by ``bench/validation.py`` and shipped with the package (empty if absent)."""
    file = Path(path) if path else VALIDITY_FILE
    if not file.exists():
        return {}
    data = json.loads(file.read_text(encoding="utf-8"))
    return {embedder: {m: bool(v["passed"]) for m, v in metrics.items()} for embedder, metrics in data.get("embedders", {}).items()}


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"
