"""Environments for the judged evaluation, and selecting the relevant ones for a persona.

Environments are data (``personae/data/environments.yaml`` or a user file). Selection is
by embedding relevance (persona profile vs environment description, no model calls) or
by asking a model through the gateway; an unusable model reply falls back to embeddings.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from personae.embeddings.base import Embedder
from personae.errors import ConfigError, ModelOutputError
from personae.llm.gateway import Gateway
from personae.llm.base import Message
from personae.models import Persona
from personae.prompts import PromptSet, default_prompts
from personae.evaluation.text import persona_profile
from personae.validation import load_data_file, validate_data

__all__ = ["Environment", "EnvironmentChoice", "load_environments", "select_environments", "PACKAGED_ENVIRONMENTS"]

log = logging.getLogger(__name__)

PACKAGED_ENVIRONMENTS = Path(__file__).resolve().parent.parent / "data" / "environments.yaml"


class Environment(BaseModel):
    """A situation a persona can be placed in."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = Field(min_length=1)
    description: str = Field(min_length=1)
    tags: list[str] = Field(default_factory=list)

    def text(self) -> str:
        """Name and description, for embedding."""
        return f"{self.name}. {self.description}"


class EnvironmentChoice(BaseModel):
    """A model's choice of environments (by id)."""

    environment_ids: list[str] = Field(min_length=1)


def load_environments(path: str | os.PathLike | None = None) -> list[Environment]:
    """Environments from a YAML/JSON list (``None`` = the packaged list); ids must be unique."""
    path = Path(path) if path is not None else PACKAGED_ENVIRONMENTS
    data = load_data_file(path)
    if not isinstance(data, list) or not data:
        raise ConfigError("expected a non-empty list of environments", file=str(path), expected="a YAML list of {id, name, description}", got=type(data).__name__)
    envs = [validate_data(Environment, item, file=path, what=f"environment #{i + 1}") for i, item in enumerate(data)]
    ids = [e.id for e in envs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError("environment ids must be unique", file=str(path), field="id", got=dupes)
    return envs


async def select_environments(
    persona: Persona,
    environments: list[Environment],
    *,
    k: int,
    embedder: Embedder | None,
    gateway: Gateway | None = None,
    method: str = "embedding",
    role: str = "evaluator",
    seed: int | None = None,
    prompts: PromptSet | None = None,
    env_vectors: np.ndarray | None = None,
) -> list[Environment]:
    """The ``k`` environments most relevant to ``persona``.

    ``method="llm"`` asks the model serving ``role``; ids it invents are dropped and the
    rest is filled by embedding relevance. ``env_vectors`` (embeddings of
    :meth:`Environment.text`, in order) may be passed to avoid re-embedding per persona.
    """
    if not environments:
        raise ConfigError("no environments to select from", field="judged.environments")
    k = min(k, len(environments))
    chosen: list[Environment] = []
    if method == "llm":
        if gateway is None:
            raise ConfigError("environment selection by model needs a gateway", field="judged.environment_selection")
        chosen = await _select_by_model(persona, environments, k=k, gateway=gateway, role=role, seed=seed, prompts=prompts)
    elif method != "embedding":
        raise ConfigError("unknown environment selection method", field="judged.environment_selection", expected="embedding | llm", got=method)
    if len(chosen) < k:
        ranked = await _rank_by_embedding(persona, environments, embedder=embedder, env_vectors=env_vectors)
        have = {e.id for e in chosen}
        chosen += [e for e in ranked if e.id not in have][: k - len(chosen)]
    return chosen


async def _select_by_model(
    persona: Persona,
    environments: list[Environment],
    *,
    k: int,
    gateway: Gateway,
    role: str,
    seed: int | None,
    prompts: PromptSet | None,
) -> list[Environment]:
    prompt = (prompts or default_prompts()).render(
        "eval_select_environments",
        profile=persona_profile(persona),
        environments=[e.model_dump() for e in environments],
        k=k,
    )
    try:
        choice = await gateway.structured([Message(role="user", content=prompt)], EnvironmentChoice, role=role, seed=seed)
    except ModelOutputError as exc:
        log.warning("environment selection for %s: unusable reply (%s); using embedding relevance", persona.id, exc.message)
        return []
    by_id = {e.id: e for e in environments}
    picked = [by_id[i.strip()] for i in dict.fromkeys(choice.environment_ids) if i.strip() in by_id]
    if len(picked) < len(choice.environment_ids):
        log.info("environment selection for %s: ignored unknown ids", persona.id)
    return picked[:k]


async def _rank_by_embedding(
    persona: Persona,
    environments: list[Environment],
    *,
    embedder: Embedder | None,
    env_vectors: np.ndarray | None,
) -> list[Environment]:
    if embedder is None:
        raise ConfigError("environment selection by embedding needs an embedder", field="embedder")
    if env_vectors is None:
        env_vectors = await embedder.aembed([e.text() for e in environments])
    query = (await embedder.aembed([persona_profile(persona)]))[0]
    sims = np.asarray(env_vectors) @ query
    order = sorted(range(len(environments)), key=lambda i: (-float(sims[i]), environments[i].id))
    return [environments[i] for i in order]
