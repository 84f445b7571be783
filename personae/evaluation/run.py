"""``evaluate_run``: every evaluation of one run, into one scorecard on disk.

No tracking here: the evaluate flow logs :meth:`Scorecard.metrics` and the written
files to MLflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from personae.embeddings.base import Embedder
from personae.errors import ConfigError
from personae.evaluation.compare import ComparisonReport
from personae.evaluation.config import EvaluationConfig
from personae.evaluation.judged import evaluate_judged
from personae.evaluation.probes import ProbeReport
from personae.evaluation.reference import human_likeness, load_reference
from personae.evaluation.scorecard import Scorecard, population_metrics
from personae.evaluation.transcript import evaluate_transcripts, population_for
from personae.llm.gateway import Gateway
from personae.models import Conversation, Persona
from personae.prompts import PromptSet, default_prompts

__all__ = ["evaluate_run"]

log = logging.getLogger(__name__)


async def evaluate_run(
    conversations: Sequence[Conversation],
    personas: Sequence[Persona],
    *,
    config: EvaluationConfig | None = None,
    gateway: Gateway | None,
    embedder: Embedder,
    out_dir: str | Path,
    population_report: dict[str, Any] | None = None,
    comparison: ComparisonReport | None = None,
    prompts: PromptSet | None = None,
    title: str = "personae scorecard",
    on_progress: Callable[[int, int], None] | None = None,
    probes: ProbeReport | None = None,
) -> Scorecard:
    """Evaluate a run and write ``out_dir/scorecard.json`` and ``out_dir/scorecard.html`` (+ plots).

    Args:
        conversations: the run's conversations (failed ones are counted, not measured).
        personas: the population; adherence ranks among it (plus every participant), and
            the judged suite evaluates it (the participants' personas when empty).
        config: what to evaluate; the judged suite runs only if ``config.judged.enabled``, the
            human-likeness metrics only if ``config.reference`` names a reference JSONL.
        gateway: model gateway for the judged suite (may be ``None`` when it is off).
        embedder: embedder for transcript metrics and environment selection.
        population_report: the population engine's report (dict), passed through.
        comparison: a comparison with another run or arm to include in the report.
        on_progress: ``(done, total)`` callback of the judged suite, per persona.
        probes: memory probes of a multi-session run (:func:`personae.evaluation.probes.evaluate_probes`).
    """
    config = config or EvaluationConfig()
    population = population_for(conversations, personas)
    judged_personas = list(personas) if personas else population_for(conversations)
    if config.judged.enabled and gateway is None:
        raise ConfigError("the judged evaluation is enabled but no model gateway was given", field="judged.enabled")
    human = load_reference(config.reference) if config.reference is not None else None  # fails before any work
    transcript = None
    if config.transcript and conversations:
        transcript = await evaluate_transcripts(conversations, embedder=embedder, personas=population, config=config)
    judged = None
    if config.judged.enabled:
        judged = await evaluate_judged(judged_personas, config=config.judged, gateway=gateway, embedder=embedder, prompts=prompts,
                                       on_progress=on_progress)
    reference = human_likeness(conversations, human, label=config.reference.name) if human is not None else None
    ps = prompts or default_prompts()
    scorecard = Scorecard(
        title=title,
        n_conversations=len(conversations),
        n_personas=len(population),
        embedder=embedder.name,
        config=config,
        transcript=transcript,
        judged=judged,
        population=population_metrics(population_report) or None,
        comparison=comparison,
        reference=reference,
        probes=probes,
        prompt_versions={n: v for n, v in ps.versions().items() if n.startswith("eval_") or (probes is not None and n.startswith("probe_"))},
    )
    paths = scorecard.write(out_dir, conversations=conversations)
    log.info("scorecard written to %s", paths["html"])
    return scorecard
