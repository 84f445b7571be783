"""Export a run as a dataset folder for the Hugging Face Hub, after scanning it for PII and leaks.

``export_run(run_dir, out, ExportOptions(redact=True, exclude=["failed", "flagged"]))``
writes Parquet and JSONL tables, a dataset card and checksums (see :mod:`personae.export.dataset`).
Logging the export to MLflow is the tracking layer's job (:mod:`personae.tracking_export`).
"""

from personae.export.dataset import EXCLUDE_RULES, RUN_CONFIG, ExportOptions, ExportResult, RunFolder, export_run, resolve_run
from personae.export.pii import PII_KINDS, PiiMatch, find_pii, luhn_valid, redact
from personae.export.scans import SCANS, Finding, ScanReport

__all__ = [
    "EXCLUDE_RULES",
    "RUN_CONFIG",
    "ExportOptions",
    "ExportResult",
    "RunFolder",
    "export_run",
    "resolve_run",
    "PII_KINDS",
    "PiiMatch",
    "find_pii",
    "luhn_valid",
    "redact",
    "SCANS",
    "Finding",
    "ScanReport",
]
