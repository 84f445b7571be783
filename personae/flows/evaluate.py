"""The evaluate stage: transcript metrics and the judged suite into a scorecard."""

from __future__ import annotations

import json
import logging
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from personae.costs import BudgetMeter
from personae.errors import BudgetExceeded, ConfigError
from personae.experiment import Experiment, build_gateway_for
from personae.flows.context import StageResult, embedder_for, embedding_gates, open_memory, run_stage, settings_in_task
from personae.flows.progress import ProgressCallback, ProgressEvent, emit
from personae.jsonl import read_jsonl
from personae.graphs.runner import latest_conversations
from personae.models import Persona

__all__ = ["evaluate_flow", "evaluate_task"]

log = logging.getLogger(__name__)


@task(name="evaluate-run", cache_policy=NONE)
async def evaluate_task(
    experiment: Experiment, overrides: dict[str, Any], progress: ProgressCallback | None = None,
    meter: BudgetMeter | None = None,
) -> StageResult:
    """Evaluate the run folder's conversations; writes scorecard.json/html and plots there.

    With a budget ``meter``, reaching a limit stops the evaluation before its scorecard is
    written (the result says which limit); a rerun replays the judge calls made so far
    from the cache."""
    from personae.evaluation import evaluate_run

    settings, paths = settings_in_task(experiment, overrides)
    if not paths.conversations.is_file():
        raise ConfigError("no conversations to evaluate: run the simulate stage first", file=str(paths.conversations), field="stages", expected="simulate before evaluate")
    conversations = latest_conversations(paths.conversations)
    personas = read_jsonl(paths.personas, Persona, unique="id") if paths.personas.is_file() else []
    population_report = _read_json(paths.population_report)
    probing = experiment.evaluation.probes.enabled
    if probing and not (experiment.memory_enabled and experiment.simulation.sessions):
        raise ConfigError(
            "memory probes need a multi-session run with memory", field="evaluation.probes.enabled",
            expected="simulation.sessions and memory.enabled, or probes off",
        )
    meter = meter.child() if meter is not None else None
    gateway = build_gateway_for(experiment, settings, meter=meter) if experiment.evaluation.judged.enabled or probing else None

    def on_progress(done: int, total: int) -> None:
        usage = gateway.usage.total() if gateway is not None else None
        emit(progress, ProgressEvent(
            stage="evaluate", done=done, total=total, calls=usage.calls if usage else 0,
            model_calls=usage.model_calls if usage else 0,
            tokens=(usage.prompt_tokens + usage.completion_tokens) if usage else 0,
        ))

    emit(progress, ProgressEvent(stage="evaluate", done=0, total=len(conversations)))
    gates = embedding_gates(experiment, settings)  # the embedder's way when no gateway is needed
    try:
        embedder = embedder_for(settings, gateway=gateway if gateway is not None else gates, meter=meter)
        probes = await _probe(experiment, settings, embedder, conversations, gateway) if probing else None
        scorecard = await evaluate_run(
            conversations, personas, config=experiment.evaluation, gateway=gateway, embedder=embedder,
            out_dir=paths.root, population_report=population_report, title=f"{experiment.name} scorecard",
            on_progress=on_progress, probes=probes,
        )
    except BudgetExceeded as exc:
        log.warning("evaluate: %s; no scorecard written", exc)
        return StageResult.of({}, gateway, meter=meter, stop=exc).with_usage(gates.usage)
    finally:
        if gateway is not None:
            await gateway.aclose()
    emit(progress, ProgressEvent(stage="evaluate", done=len(conversations), total=len(conversations), finished=True))
    metrics = {f"eval.{k}": v for k, v in scorecard.metrics().items()}
    return StageResult.of(metrics, gateway, meter=meter).with_usage(gates.usage)


async def _probe(experiment: Experiment, settings: Any, embedder: Any, conversations: list, gateway: Any) -> Any:
    """Memory probes of the run, on the run's memory (opened here and closed again: local Qdrant allows one client)."""
    from personae.evaluation.probes import evaluate_probes

    cfg = experiment.evaluation.probes
    memory, opened = open_memory(experiment, settings, embedder)
    try:
        report = await evaluate_probes(
            conversations, gateway=gateway, memory=memory, per_conversation=cfg.per_conversation, k=cfg.k,
            questions=cfg.questions, question_role=cfg.question_role, answer_role=cfg.answer_role, seed=experiment.seed,
        )
    finally:
        if opened is not None:
            opened.close()
    log.info("memory probes: recall %s with memory on, %s off (%d questions)", report.recall_on, report.recall_off, report.n_probes)
    return report


@flow(name="personae-evaluate")
def evaluate_flow(
    experiment: str,
    data_dir: str | None = None,
    parent_run_id: str | None = None,
    track: bool = True,
    progress: ProgressCallback | None = None,
    budget_spent: dict[str, float] | None = None,
) -> dict[str, float]:
    """Evaluate the experiment's conversations (tracked as the ``evaluate`` child run).

    ``budget_spent``: what earlier stages of the run spent of the experiment's budget."""
    return run_stage(
        "evaluate", evaluate_task, experiment, data_dir=data_dir, parent_run_id=parent_run_id, track=track,
        progress=progress, artifacts=lambda p: [p.scorecard_json, p.scorecard_html, p.conversation_metrics],
        plots=lambda path: not path.name.startswith("population"), budget_spent=budget_spent,
    )


def _read_json(path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON: {exc.msg}", file=str(path), line=exc.lineno) from None
