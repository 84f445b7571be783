"""``export_run``: a run folder as a dataset folder to push to the Hugging Face Hub as it is.

The dataset folder::

    README.md            dataset card (YAML metadata: configs, generation config, counts, scans, evaluation)
    data/<table>.parquet personas, conversations, utterances, survey_answers (when the run has interviews)
    data/<table>.jsonl   the same rows as JSON Lines
    scan_report.json     every scan finding (PII shown masked), counts, what was excluded
    SHA256SUMS           checksums of every other file (``sha256sum -c SHA256SUMS``)

Everything is written to a temporary folder beside ``out`` and renamed into place at
the end, so a failure leaves no half-written export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from personae.errors import ConfigError
from personae.export.card import render_card
from personae.export.pii import redact
from personae.export.scans import (
    DEFAULT_METRIC_LIMITS,
    PROMPT_LEAK_WORDS,
    Finding,
    ScanReport,
    ai_identity_findings,
    critic_findings,
    metric_findings,
    pii_findings,
    prompt_leak_findings,
)
from personae.export.tables import TABLES, conversation_row, persona_row, survey_rows, utterance_rows, write_table
from personae.models import Conversation, Persona

__all__ = ["ExportOptions", "ExportResult", "RunFolder", "export_run", "resolve_run", "RUN_CONFIG", "EXCLUDE_RULES"]

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"
"""Written into the run folder by the pipeline: the experiment config, seeds, models and prompt versions."""

EXCLUDE_RULES: tuple[str, ...] = ("failed", "flagged")
_RUN_FILES = ("conversations.jsonl", "personas.jsonl")


class ExportOptions(BaseModel):
    """What ``personae export`` does besides copying: mask PII, drop records, the scans' thresholds."""

    redact: bool = Field(False, description="mask what the PII scan found")
    exclude: list[Literal["failed", "flagged"]] = Field(default_factory=list, description="drop failed conversations and/or flagged records")
    metric_limits: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_METRIC_LIMITS))
    prompt_leak_words: int = Field(PROMPT_LEAK_WORDS, ge=4)
    force: bool = Field(False, description="replace an existing folder at the destination")


class ExportResult(BaseModel):
    """What an export wrote: the folder, rows per table, what the scans found and what was dropped."""

    run_dir: Path
    out: Path
    experiment: str
    counts: dict[str, int]
    scans: dict[str, dict[str, int]]
    excluded: dict[str, Any]
    redacted: bool
    files: list[str]


class RunFolder(BaseModel):
    """What a run folder holds, read once."""

    model_config = {"arbitrary_types_allowed": True}

    root: Path
    personas: list[Persona]
    conversations: list[Conversation]
    conversation_metrics: dict[str, dict[str, Any]]
    scorecard: dict[str, Any] | None
    run_config: dict[str, Any] | None

    @classmethod
    def read(cls, root: Path) -> RunFolder:
        from personae.graphs.runner import latest_conversations
        from personae.jsonl import read_jsonl, read_jsonl_dicts

        conversations = latest_conversations(root / "conversations.jsonl") if (root / "conversations.jsonl").is_file() else []
        personas = read_jsonl(root / "personas.jsonl", Persona, unique="id") if (root / "personas.jsonl").is_file() else []
        known = {p.id for p in personas}
        for conversation in conversations:  # an interviewer or a hand-cast persona is in no personas.jsonl
            for seat in conversation.participants:
                if seat.persona.id not in known:
                    known.add(seat.persona.id)
                    personas.append(seat.persona)
        metrics: dict[str, dict[str, Any]] = {}
        if (root / "conversation_metrics.jsonl").is_file():
            for _, row in read_jsonl_dicts(root / "conversation_metrics.jsonl"):
                if isinstance(row.get("conversation_id"), str):
                    metrics[row["conversation_id"]] = row.get("values") or {}
        return cls(root=root, personas=personas, conversations=conversations, conversation_metrics=metrics,
                   scorecard=_read_json(root / "scorecard.json"), run_config=_read_json(root / RUN_CONFIG))


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid JSON ({exc})", file=str(path), expected="the JSON file personae wrote") from None
    if not isinstance(data, dict):
        raise ConfigError("expected a JSON object", file=str(path), got=type(data).__name__)
    return data


def resolve_run(run: str, runs_dir: Path) -> Path:
    """The run folder ``run`` names: a folder path, or an experiment's name under ``runs_dir``.

    Raises :class:`ConfigError` naming what was expected when neither holds a run's outputs.
    """
    expected = f"a run's output folder (holding {' or '.join(_RUN_FILES)}) or the name of an experiment with outputs in {runs_dir}"
    candidates = [Path(run).expanduser()]
    if "/" not in run and os.sep not in run:
        candidates.append(runs_dir / run)
    for folder in candidates:
        if folder.is_dir():
            if any((folder / name).is_file() for name in _RUN_FILES):
                return folder
            raise ConfigError(f"{folder} holds no run outputs", field="RUN", expected=expected, got=run)
    known = sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    hint = f" (runs there: {', '.join(known[:20])})" if known else ""
    raise ConfigError(f"no run folder or experiment named {run!r}{hint}", field="RUN", expected=expected, got=run)


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    options: ExportOptions | None = None,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Scan the run in ``run_dir`` and write it to ``out`` as a dataset folder (see the module docstring).

    ``on_progress(done, total)`` is called as conversations are scanned.
    """
    from personae.paths import require_writable

    options = options or ExportOptions()
    run_dir, out = Path(run_dir), Path(out)
    if any(rule not in EXCLUDE_RULES for rule in options.exclude):
        raise ConfigError("unknown exclusion", field="--exclude", expected=" and/or ".join(EXCLUDE_RULES), got=options.exclude)
    require_writable(out, kind="dir", field="--out")
    if out.exists() and any(out.iterdir()) and not options.force:
        raise ConfigError("the export folder exists and is not empty", file=str(out), field="--out",
                          expected="a new or empty folder (or --force to replace it)")
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise ConfigError("the export folder is inside the run folder", file=str(out), field="--out", expected="a folder outside the run")
    run = RunFolder.read(run_dir)
    if not run.conversations and not run.personas:
        raise ConfigError("the run folder has neither conversations nor personas", file=str(run_dir), field="RUN",
                          expected="a run that generated personas or simulated conversations")

    report = _scan(run, options, on_progress)
    keep_conv, dropped_conv = _select_conversations(run, report, options)
    keep_personas = [p for p in run.personas if not ("flagged" in options.exclude and p.id in report.flagged_personas())]
    clean = _cleaner(options.redact)
    flags_by_record = _flags(report.findings)
    rows: dict[str, list[dict[str, Any]]] = {
        "personas": [persona_row(p, clean) for p in keep_personas],
        "conversations": [conversation_row(c, _conversation_flags(c, flags_by_record), clean) for c in keep_conv],
        "utterances": [row for c in keep_conv for row in utterance_rows(c, clean, flags_by_record)],
        "survey_answers": [row for c in keep_conv for row in survey_rows(c, clean)],
    }
    all_survey = sum(len(c.metadata.get("qa") or []) for c in run.conversations)
    # survey answers only when the run has interviews; a run not yet simulated has only its population
    tables = [t for t in TABLES if t != "survey_answers" or all_survey] if run.conversations else ["personas"]
    excluded = {
        "rules": list(options.exclude),
        "dropped": {
            "conversations": sum(dropped_conv.values()),
            "conversations_by_rule": dropped_conv,
            "utterances": sum(len(c.utterances) for c in run.conversations) - len(rows["utterances"]),
            "survey_answers": all_survey - len(rows["survey_answers"]),
            "personas": len(run.personas) - len(keep_personas),
        },
    }
    experiment = _experiment_name(run)
    meta = {
        "run": experiment,
        "tables": tables,
        "counts": {t: len(rows[t]) for t in tables},
        "generation": _generation(run),
        "scans": report.counts(),
        "redacted": options.redact,
        "excluded": excluded,
        "evaluation": _evaluation_summary(run.scorecard),
    }
    files = _write_atomically(out, options.force, lambda tmp: _write(tmp, tables, rows, report, meta))
    log.info("exported %s to %s: %s", run_dir, out, meta["counts"])
    return ExportResult(run_dir=run_dir, out=out, experiment=experiment, counts=meta["counts"], scans=meta["scans"],
                        excluded=excluded, redacted=options.redact, files=files)


def _scan(run: RunFolder, options: ExportOptions, on_progress: Callable[[int, int], None] | None) -> ScanReport:
    from personae.nodes.projection import render_system_prompt

    findings: list[Finding] = []
    for p in run.personas:
        fields = {name: getattr(p, name) for name in ("name", "location", "occupation", "education", "description", "speaking_style",
                                                      "social_identity", "personal_identity", "life_context")}
        for name in ("values", "beliefs", "goals", "linguistic_habits"):
            fields.update({f"{name}.{i}": v for i, v in enumerate(getattr(p, name))})
        fields["attributes"] = json.dumps(p.attributes, ensure_ascii=False, sort_keys=True) if p.attributes else None
        findings += pii_findings("personas", p.id, fields)[0]
    total = len(run.conversations)
    for done, c in enumerate(run.conversations, start=1):
        findings += pii_findings("conversations", c.id, {"error": c.error}, conversation_id=c.id)[0]
        for u in c.utterances:
            findings += pii_findings("utterances", u.id, {"text": u.text}, conversation_id=c.id)[0]
            findings += ai_identity_findings("utterances", u.id, u.text, conversation_id=c.id)
        for row in survey_rows(c, lambda value: value):
            findings += pii_findings("survey_answers", row["id"], {k: row[k] for k in ("asked", "answer", "extracted")}, conversation_id=c.id)[0]
        prompts = {seat.id: render_system_prompt(seat, c.scenario, c.participants) for seat in c.participants}
        findings += prompt_leak_findings(c, prompts, n=options.prompt_leak_words)
        findings += critic_findings(c)
        findings += metric_findings(c, run.conversation_metrics.get(c.id), options.metric_limits)
        if on_progress is not None:
            on_progress(done, total)
    return ScanReport(findings=findings)


def _select_conversations(run: RunFolder, report: ScanReport, options: ExportOptions) -> tuple[list[Conversation], dict[str, int]]:
    """The conversations to export and how many each rule dropped. A conversation whose persona is
    dropped as flagged goes too, so every exported ``persona_id`` is in the personas table."""
    flagged = report.flagged_conversations()
    flagged_personas = report.flagged_personas()
    dropped = {rule: 0 for rule in options.exclude}
    kept = []
    for c in run.conversations:
        if "failed" in options.exclude and c.status.value == "failed":
            dropped["failed"] += 1
        elif "flagged" in options.exclude and (c.id in flagged or any(s.persona.id in flagged_personas for s in c.participants)):
            dropped["flagged"] += 1
        else:
            kept.append(c)
    return kept, dropped


def _cleaner(masking: bool) -> Callable[[str | None], str | None]:
    if not masking:
        return lambda value: value
    return lambda value: redact(value) if value else value


def _flags(findings: list[Finding]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in findings:
        out.setdefault(f.record_id, set()).add(f"pii:{f.kind}" if f.scan == "pii" else "failed" if f.kind == "failed" else f.scan)
    return out


def _conversation_flags(c: Conversation, flags: dict[str, set[str]]) -> set[str]:
    found = set(flags.get(c.id, set()))
    for u in c.utterances:
        found |= flags.get(u.id, set())
    return found


def _experiment_name(run: RunFolder) -> str:
    experiment = (run.run_config or {}).get("experiment") or {}
    return str(experiment.get("name") or run.root.resolve().name)


def _generation(run: RunFolder) -> dict[str, Any]:
    """The generation config: the pipeline's record when the run has one, otherwise what the records carry."""
    recorded = run.run_config or {}
    seeds = recorded.get("seeds") or {"conversations": sorted({c.metadata["seed"] for c in run.conversations if isinstance(c.metadata.get("seed"), int)})}
    models = recorded.get("models") or {"utterances": sorted({str(u.metadata["model"]) for c in run.conversations for u in c.utterances if u.metadata.get("model")})}
    versions = recorded.get("prompt_versions") or (run.scorecard or {}).get("prompt_versions")
    if not versions:
        from personae.prompts import default_prompts

        versions = default_prompts().versions()
    return {
        "source": RUN_CONFIG if run.run_config else "not recorded",
        "personae_version": recorded.get("personae_version"),
        "seeds": seeds,
        "models": models,
        "prompt_versions": versions,
        "experiment": recorded.get("experiment"),
    }


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _evaluation_summary(scorecard: dict[str, Any] | None) -> dict[str, Any] | None:
    """The scorecard's aggregate figures (transcript metrics, PersonaScore, agreement), finite values only."""
    if not scorecard:
        return None
    summary: dict[str, Any] = {k: scorecard[k] for k in ("n_conversations", "n_personas", "embedder") if k in scorecard}
    transcript = scorecard.get("transcript") or {}
    aggregate = {k: round(v, 6) for k, v in (transcript.get("aggregate") or {}).items() if _finite(v)}
    if aggregate:
        summary["transcript"] = aggregate
    judged = scorecard.get("judged") or {}
    if _finite(judged.get("persona_score")):
        summary["persona_score"] = judged["persona_score"]
    agreement = judged.get("agreement") or {}
    if isinstance(agreement, dict) and _finite(agreement.get("within_1")):
        summary["judge_agreement_within_1"] = agreement["within_1"]
    return summary


def _write(folder: Path, tables: list[str], rows: dict[str, list[dict[str, Any]]], report: ScanReport, meta: dict[str, Any]) -> None:
    for table in tables:
        write_table(folder, table, rows[table])
    scan_report = {"counts": meta["scans"], "redacted": meta["redacted"], "excluded": meta["excluded"],
                   "findings": [f.model_dump(exclude_none=True) for f in report.findings]}
    (folder / "scan_report.json").write_text(json.dumps(scan_report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(render_card(meta), encoding="utf-8")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    sums = [f"{_sha256(p)}  {p.relative_to(folder).as_posix()}" for p in files]
    (folder / "SHA256SUMS").write_text("\n".join(sums) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(out: Path, replace: bool, write: Callable[[Path], None]) -> list[str]:
    """Run ``write(tmp)`` on a fresh folder beside ``out``, then rename it to ``out`` (replacing it if allowed)."""
    created = out.parent.absolute()
    while not created.parent.exists():
        created = created.parent
    created = None if created.exists() else created  # the top folder this call creates, removed again on failure
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    old: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        write(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would make the export private to the writer
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        if out.exists():
            if not replace and any(out.iterdir()):
                raise ConfigError("the export folder appeared while exporting", file=str(out), field="--out", expected="a new or empty folder")
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            old.rename(out)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return files
