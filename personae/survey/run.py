"""Running a survey: one LangGraph run per respondent, resumable, into the tidy table.

:func:`run_survey` casts one interview job per persona (the runner's ``make_jobs``),
runs them through :func:`~personae.graphs.runner.simulate_batch` on the survey graph
(concurrency, checkpoints in SQLite, failed respondents recorded, a rerun skipping
the finished ones), then writes the tidy answer table. Model calls go through the
gateway (its cache, retries and accounting).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from personae.errors import ConfigError
from personae.graphs.runner import BatchResult, latest_conversations, make_jobs, simulate_batch
from personae.ids import stable_id
from personae.llm.gateway import Gateway
from personae.models import Persona, Scenario
from personae.prompts import PromptSet
from personae.survey.elicit import Mode
from personae.survey.graph import default_scenario, survey_graph, survey_graph_config
from personae.survey.instrument import Instrument
from personae.survey.table import answer_table, write_table

__all__ = ["SurveyConfig", "SurveyResult", "survey_paths", "run_survey"]

log = logging.getLogger(__name__)


class SurveyConfig(BaseModel):
    """How a survey is fielded (the ``survey:`` section of an experiment, paths resolved).

    ``targets`` is optional: without human targets the run writes the answers and the
    distribution-free realism figures (variance, extremes, mode collapse) only.
    """

    model_config = ConfigDict(extra="forbid")

    instrument: Path = Field(description="the instrument file (YAML/JSON)")
    targets: Path | None = Field(None, description="human targets: microdata (CSV/Parquet) or aggregates (YAML/CSV)")
    mode: Mode = Field("two_pass", description="direct: answer in the schema; two_pass: free text, then classified")
    respondents: int | None = Field(None, ge=1, description="survey the first N personas (default: all)")
    seed: int | None = Field(None, description="seed of option orders and model calls (default: the experiment's)")
    concurrency: int = Field(16, ge=1, le=10_000)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(200, ge=16, le=4000)
    min_cell: int = Field(5, ge=1, description="cells with fewer respondents (simulated or human) are left out of per-cell figures")
    calibrate: bool = Field(True, description="with targets: add the reweighted and mapped columns beside the raw ones (personae.survey.calibration)")
    split_seed: int | None = Field(None, description="seed of the question split the mapping is trained on (default: the survey's seed)")


class SurveyResult(BaseModel):
    """What a survey run did and wrote."""

    batch: BatchResult
    respondents: int
    rows: int
    table: dict[str, Path]
    conversations: Path


def survey_paths(out_dir: str | os.PathLike) -> dict[str, Path]:
    """The files of a survey run folder."""
    out = Path(out_dir)
    return {
        "conversations": out / "survey_conversations.jsonl",
        "checkpoint": out / "checkpoints" / "survey.sqlite",
        "parquet": out / "answers.parquet",
        "csv": out / "answers.csv",
        "realism": out / "realism.json",
    }


async def run_survey(
    instrument: Instrument,
    personas: Sequence[Persona],
    *,
    gateway: Gateway,
    out_dir: str | os.PathLike,
    mode: Mode = "two_pass",
    seed: int = 0,
    scenario: Scenario | None = None,
    concurrency: int = 16,
    checkpoint: bool = True,
    retry_failed: bool = False,
    prompts: PromptSet | None = None,
    temperature: float = 0.7,
    max_tokens: int = 200,
) -> tuple[SurveyResult, pd.DataFrame]:
    """Survey every persona with ``instrument``; write the conversations and the tidy table.

    Returns the result and the table (also written as ``answers.parquet`` and
    ``answers.csv`` in ``out_dir``). Rerunning with the same arguments skips the
    respondents already done, and resumes half-done ones from their checkpoint.
    """
    if not personas:
        raise ConfigError("no personas to survey", field="personas", expected="at least one persona")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = survey_paths(out)
    scenario = scenario or default_scenario(instrument)
    config = survey_graph_config(instrument)
    jobs = make_jobs(personas, [scenario], config, n_conversations=len(personas), seed=seed)
    # a respondent's run is keyed by the whole instrument (options, skips) and the mode too, so
    # a rerun with another instrument or mode in the same folder never replays the old answers
    jobs = [j.model_copy(update={"id": stable_id("survey", j.id, instrument.fingerprint(), mode)}) for j in jobs]

    def factory(checkpointer):
        return survey_graph(instrument, gateway=gateway, mode=mode, seed=seed, prompts=prompts, checkpointer=checkpointer,
                            temperature=temperature, max_tokens=max_tokens)

    batch = await simulate_batch(
        jobs, gateway=gateway, out_path=paths["conversations"], checkpoint_path=paths["checkpoint"] if checkpoint else None,
        concurrency=concurrency, retry_failed=retry_failed, graph_factory=factory,
    )
    ids = {j.id for j in jobs}
    conversations = [c for c in latest_conversations(paths["conversations"]) if c.id in ids]
    frame = answer_table(conversations, instrument)
    table = write_table(frame, out)
    if batch.unfinished:
        log.warning("%d of %d respondents failed; they are recorded in %s", batch.unfinished, len(jobs), paths["conversations"])
    result = SurveyResult(batch=batch, respondents=len(jobs), rows=len(frame), table=table, conversations=paths["conversations"])
    return result, frame
