"""Prefect flows: ``generate``, ``simulate``, ``evaluate`` and the ``pipeline`` calling them.

Flows stay thin: their tasks call the library (population, graphs, evaluation)
and tracking is an adapter they call. Nothing below this package imports Prefect.
"""

from personae.flows.evaluate import evaluate_flow
from personae.flows.generate import generate_flow
from personae.flows.pipeline import pipeline_flow
from personae.flows.progress import ProgressCallback, ProgressEvent
from personae.flows.simulate import simulate_flow

__all__ = ["ProgressCallback", "ProgressEvent", "evaluate_flow", "generate_flow", "pipeline_flow", "simulate_flow"]
