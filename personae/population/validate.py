"""Validate → Revise: rules first, then an optional LLM plausibility check; revise only what is flagged.

Every issue names the attribute paths it concerns. Flagged categorical and numeric
attributes are resampled under the rules (conditioned on the rest of the persona);
flagged free-text attributes are rewritten by the LLM. Quota-cell attributes are
never changed (the quota must stay exact), so an issue about those alone rejects
the proposal. Rounds are bounded; what still fails is rejected with its reasons.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from personae.errors import ModelCallError, ModelOutputError
from personae.ids import content_hash
from personae.llm.gateway import Gateway
from personae.population.conditions import Rule
from personae.population.mapping import format_value
from personae.population.sampling import PersonaSampler
from personae.population.taxonomy import Taxonomy
from personae.prompts import PromptSet, render_with

__all__ = [
    "Issue",
    "AttributeIssue",
    "PlausibilityVerdict",
    "RevisedValue",
    "TextRevision",
    "RuleValidator",
    "LLMPlausibilityCheck",
    "ReviseOutcome",
    "Validator",
    "validate_and_revise",
    "derive_seed",
]

log = logging.getLogger(__name__)


def derive_seed(*parts: Any) -> int:
    """A deterministic 48-bit seed from ``parts`` (so identical reruns hit the LLM cache)."""
    return int(content_hash(list(parts), length=12), 16)


@dataclass(frozen=True)
class Issue:
    """A problem with some attributes of a persona."""

    paths: tuple[str, ...]
    problem: str
    source: Literal["rule", "llm", "custom"] = "custom"

    def as_dict(self) -> dict[str, Any]:
        return {"attributes": list(self.paths), "problem": self.problem, "source": self.source}


Validator = Callable[[Mapping[str, Any]], list[Issue]]
"""A synchronous check users can add: attributes → issues (empty when fine)."""


class AttributeIssue(BaseModel):
    """One implausibility the LLM found."""

    attributes: list[str] = Field(default_factory=list, description="attribute paths involved, copied from the list")
    problem: str = Field("", description="what is implausible, one sentence")


class PlausibilityVerdict(BaseModel):
    """The LLM validator's reply."""

    issues: list[AttributeIssue] = Field(default_factory=list, max_length=50)


class RevisedValue(BaseModel):
    """A rewritten free-text attribute."""

    attribute: str
    value: str = Field(min_length=1, max_length=500)


class TextRevision(BaseModel):
    """The LLM reviser's reply."""

    values: list[RevisedValue] = Field(default_factory=list, max_length=50)


class RuleValidator:
    """Declarative constraints as a validator: one issue per broken rule."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = list(rules)

    def __call__(self, attrs: Mapping[str, Any]) -> list[Issue]:
        return [Issue(tuple(sorted(rule.paths)), f"breaks rule: {rule}", "rule") for rule in self.rules if rule.violated(attrs)]


def _listing(attrs: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(p, format_value(v)) for p, v in attrs.items() if not p.startswith("_")]


class LLMPlausibilityCheck:
    """Asks the model (role ``validator``) which attribute combinations are implausible.

    Attribute names in the reply are matched to taxonomy paths (full path or unique
    leaf name); names that match nothing are dropped and logged.
    """

    def __init__(self, gateway: Gateway, taxonomy: Taxonomy, *, prompts: PromptSet | None = None, role: str = "validator", reviser_role: str = "crafter") -> None:
        self.gateway = gateway
        self.taxonomy = taxonomy
        self.prompts = prompts
        self.role = role
        self.reviser_role = reviser_role

    async def check(self, attrs: Mapping[str, Any], *, seed: int) -> list[Issue]:
        """Issues with known attribute paths (empty when plausible)."""
        prompt = render_with(self.prompts, "population_validate", {"attributes": _listing(attrs)})
        verdict = await self.gateway.structured([{"role": "user", "content": prompt}], PlausibilityVerdict, role=self.role, seed=seed)
        issues = []
        for item in verdict.issues:
            paths = []
            for name in item.attributes:
                try:
                    path = self.taxonomy.resolve(name.strip())
                except KeyError:
                    log.debug("validator named an unknown attribute %r; ignored", name)
                    continue
                if path in attrs and path not in paths:
                    paths.append(path)
            if paths:
                issues.append(Issue(tuple(paths), item.problem.strip() or "implausible", "llm"))
        return issues

    async def revise_text(self, attrs: Mapping[str, Any], paths: Sequence[str], issues: Sequence[Issue], *, seed: int) -> dict[str, str]:
        """New values for free-text ``paths`` (only those the model returned)."""
        targets = [(p, self.taxonomy.by_path[p].hint or "") for p in paths]
        prompt = render_with(self.prompts, "population_revise", {"attributes": _listing(attrs), "issues": [i.problem for i in issues], "targets": targets})
        reply = await self.gateway.structured([{"role": "user", "content": prompt}], TextRevision, role=self.reviser_role, seed=seed)
        wanted = set(paths)
        out: dict[str, str] = {}
        for item in reply.values:
            try:
                path = self.taxonomy.resolve(item.attribute.strip())
            except KeyError:
                continue
            if path in wanted:
                out[path] = item.value.strip()
        return out


@dataclass
class ReviseOutcome:
    """What validate→revise did to one proposal."""

    attrs: dict[str, Any]
    accepted: bool
    rounds: int = 0
    revised: list[str] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    history: list[list[Issue]] = field(default_factory=list)
    llm_failed: bool = False


async def validate_and_revise(
    attrs: Mapping[str, Any],
    *,
    sampler: PersonaSampler,
    validators: Sequence[Validator] = (),
    llm: LLMPlausibilityCheck | None = None,
    fixed: Iterable[str] = (),
    max_rounds: int = 2,
    index: int = 0,
    attempt: int = 0,
    seed: int = 0,
) -> ReviseOutcome:
    """Check ``attrs`` and revise flagged attributes for up to ``max_rounds`` rounds.

    The rules the sampler enforces are checked first (a :class:`RuleValidator`),
    then ``validators``, then the LLM check if given. A model failure (bad output,
    transport error) counts as "no issues found" for that round and is reported in
    ``llm_failed``: the rules still hold, and one flaky reply must not stall a run.
    """
    current = dict(attrs)
    fixed_set = set(fixed)
    checks: list[Validator] = [RuleValidator(sampler.rules), *validators]
    outcome = ReviseOutcome(attrs=current, accepted=False)
    for round_no in range(max_rounds + 1):
        issues: list[Issue] = [issue for check in checks for issue in check(current)]
        if not issues and llm is not None:
            try:
                issues = await llm.check(current, seed=derive_seed(seed, index, attempt, round_no, "validate"))
            except (ModelOutputError, ModelCallError) as exc:
                log.warning("plausibility check failed for persona %d (attempt %d): %s", index, attempt, exc)
                outcome.llm_failed = True
                issues = []
        outcome.history.append(issues)
        outcome.issues = issues
        outcome.rounds = round_no
        if not issues:
            outcome.accepted = True
            outcome.attrs = current
            return outcome
        if round_no == max_rounds:
            break
        flagged = [p for issue in issues for p in issue.paths if p in current and p not in fixed_set]
        flagged = list(dict.fromkeys(flagged))
        if not flagged:
            break  # only quota attributes (or nothing revisable) are at fault
        text = [p for p in flagged if sampler.taxonomy.by_path[p].type == "text"]
        other = [p for p in flagged if p not in text]
        if other or (text and llm is None):
            current = sampler.resample(current, other + ([] if llm is not None else text), index=index, attempt=attempt, round_no=round_no, fixed=fixed_set)
        if text and llm is not None:
            try:
                new = await llm.revise_text(current, text, issues, seed=derive_seed(seed, index, attempt, round_no, "revise"))
            except (ModelOutputError, ModelCallError) as exc:
                log.warning("text revision failed for persona %d: %s", index, exc)
                new = {}
            current = {**current, **new}
        outcome.revised.extend(p for p in flagged if p not in outcome.revised)
    outcome.attrs = current
    return outcome

