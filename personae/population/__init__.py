"""Population engine: taxonomy-guided sampling with exact quotas, validate→revise,
LLM crafting, semantic de-duplication and a population report.

Typical use::

    from personae.population import PopulationSpec, generate_population
    spec = PopulationSpec(size=500, seed=7, quotas={"marginals": {"gender": {"female": 0.5, "male": 0.5}}})
    report = await generate_population(spec, gateway=gw, embedder=emb, qdrant=None, out_dir=Path("out"))

or, without any model, ``sample_population(spec, embedder=HashingEmbedder())``.
"""

from personae.population.conditions import Condition, Predicate, Rule, parse_condition, parse_rule
from personae.population.coverage import AxisSpec, CoveragePlan, CoverageReport, SamplingSpec, plan_coverage
from personae.population.craft import CraftedPersona, TextPersona, craft_persona, personas_from_texts
from personae.population.dedup import DedupIndex, persona_text
from personae.population.engine import (
    PopulationError,
    PopulationPlan,
    generate_population,
    plan_population,
    sample_population,
)
from personae.population.mapping import META_KEY, persona_meta, to_persona
from personae.population.parse import ParsedPersona, ParseReport, ParseResult, PersonaLine, parse_personas, read_persona_lines
from personae.population.quotas import Cell, JointQuota, QuotaPlan, QuotaSpec, integerise, ipf, largest_remainder, plan_quotas
from personae.population.report import PopulationReport, ReportBuilder, distinct_n, plot_marginals
from personae.population.sampling import PersonaSampler, SamplingError, violations
from personae.population.spec import PopulationSpec, load_population_spec
from personae.population.taxonomy import Leaf, Taxonomy, default_taxonomy_path, load_taxonomy
from personae.population.validate import (
    Issue,
    LLMPlausibilityCheck,
    PlausibilityVerdict,
    ReviseOutcome,
    RuleValidator,
    Validator,
    validate_and_revise,
)

__all__ = [
    "ParsedPersona",
    "ParseReport",
    "ParseResult",
    "PersonaLine",
    "parse_personas",
    "read_persona_lines",
    "AxisSpec",
    "CoveragePlan",
    "CoverageReport",
    "SamplingSpec",
    "plan_coverage",
    "Cell",
    "Condition",
    "CraftedPersona",
    "DedupIndex",
    "Issue",
    "JointQuota",
    "LLMPlausibilityCheck",
    "Leaf",
    "META_KEY",
    "PersonaSampler",
    "PlausibilityVerdict",
    "PopulationError",
    "PopulationPlan",
    "PopulationReport",
    "PopulationSpec",
    "Predicate",
    "QuotaPlan",
    "QuotaSpec",
    "ReportBuilder",
    "ReviseOutcome",
    "Rule",
    "RuleValidator",
    "SamplingError",
    "Taxonomy",
    "TextPersona",
    "Validator",
    "craft_persona",
    "default_taxonomy_path",
    "distinct_n",
    "generate_population",
    "integerise",
    "ipf",
    "largest_remainder",
    "load_population_spec",
    "load_taxonomy",
    "parse_condition",
    "parse_rule",
    "persona_meta",
    "persona_text",
    "personas_from_texts",
    "plan_population",
    "plan_quotas",
    "plot_marginals",
    "sample_population",
    "to_persona",
    "validate_and_revise",
    "violations",
]
