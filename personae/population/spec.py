"""The population spec: how many people, which quotas and rules, which steps run.

A spec is a YAML/JSON file (or a Python object)::

    name: survey-panel
    size: 500
    seed: 7
    taxonomy: my_taxonomy.yaml          # optional; extends the packaged one by default
    quotas:
      marginals:
        age_band: {18-24: 0.12, 25-34: 0.18, 35-44: 0.17, 45-54: 0.17, 55-64: 0.16, 65-74: 0.12, 75-90: 0.08}
        gender: {female: 0.51, male: 0.47, non-binary: 0.02}
    rules:
      - "if age < 18 then occupation in [student]"
    deep_attributes: 40
    dedup_threshold: 0.97
    sampling:                           # optional; see personae.population.coverage
      mode: coverage                    # Sobol points over the axes instead of iid draws
      axes: [age_band, gender, region]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from personae.errors import ConfigError
from personae.ids import content_hash
from personae.population.coverage import SamplingSpec
from personae.population.quotas import QuotaSpec
from personae.validation import load_data_file, validate_data

__all__ = ["PopulationSpec", "load_population_spec"]


class PopulationSpec(BaseModel):
    """Everything that determines a population (with the taxonomy, the model and the embedder)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("population", min_length=1, max_length=200)
    size: int = Field(ge=1, le=10_000_000, description="number of personas")
    seed: int = Field(0, ge=0, le=2**63 - 1)
    taxonomy: Path | None = Field(None, description="taxonomy file; None = the packaged taxonomy")
    quotas: QuotaSpec = Field(default_factory=QuotaSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="quota (iid draws) or coverage (Sobol over axes) sampling")
    rules: list[str | dict[str, Any]] = Field(default_factory=list, description="extra rules, e.g. 'if age < 18 then occupation in [student]'")
    deep_attributes: int = Field(40, ge=0, le=2000, description="deep attributes per persona, picked progressively")
    near_share: float = Field(0.7, ge=0.0, le=1.0, description="chance a deep pick is near the profile so far")
    llm_validate: bool = Field(True, description="LLM plausibility check (skipped without a gateway)")
    craft: bool = Field(True, description="LLM writes description and speaking style (skipped without a gateway)")
    dedup: bool = Field(True, description="reject and resample near-duplicate personas")
    dedup_threshold: float = Field(0.97, gt=0.0, le=1.0, description="cosine similarity at or above which personas are near-duplicates")
    dedup_collection: str = Field("personae_population", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_\-]+$")
    max_revise_rounds: int = Field(2, ge=0, le=20)
    max_attempts: int = Field(8, ge=1, le=1000, description="fresh proposals per persona before giving up")
    batch_size: int = Field(256, ge=1, le=100_000)

    _source: str | None = PrivateAttr(default=None)

    @property
    def source(self) -> str | None:
        """The file this spec was loaded from (for error messages)."""
        return self._source

    def with_source(self, source: str | os.PathLike | None) -> PopulationSpec:
        """This spec remembering the file it came from."""
        self._source = None if source is None else str(source)
        return self

    def fingerprint(self, *extra: Any) -> str:
        """Content hash of everything that determines the population (plus ``extra``).

        ``batch_size`` is left out: it changes how work is grouped, not the result; so is a
        default ``sampling``, so populations from before coverage mode still resume.
        """
        data = self.model_dump(mode="json", exclude={"batch_size", *(("sampling",) if self.sampling.is_default else ())})
        if self.taxonomy is not None:
            data["taxonomy"] = str(Path(self.taxonomy).resolve())
        return content_hash([data, *extra], length=16)


def load_population_spec(path: str | os.PathLike, **overrides: Any) -> PopulationSpec:
    """Read a spec file; ``overrides`` (e.g. ``size=100``) replace its values.

    A relative ``taxonomy`` path is resolved against the spec file's folder. Errors
    are :class:`ConfigError` naming the file and the field.
    """
    path = Path(path)
    data = load_data_file(path)
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top level of the population spec", file=str(path), expected="mapping with at least 'size'", got=type(data).__name__)
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    spec = validate_data(PopulationSpec, data, file=path, what="population spec")
    if spec.taxonomy is not None and not spec.taxonomy.is_absolute():
        spec = spec.model_copy(update={"taxonomy": (path.parent / spec.taxonomy).resolve()})
    return spec.with_source(path)
