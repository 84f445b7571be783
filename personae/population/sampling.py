"""Seeded, rule-respecting, progressive attribute sampling (no LLM, no arithmetic by a model).

One persona's attributes are a pure function of ``(seed, index, attempt, cell)``:
the random stream is a numpy ``Generator`` seeded with ``[seed, index, attempt, sub]``.

Order: the quota cell's values are fixed first; then every *core* attribute in
dependency order; then ``deep_attributes`` *deep* attributes chosen progressively
(DeepPersona style): each pick is *near* the profile so far (a sibling of a chosen
attribute, or one whose distribution depends on a chosen attribute) with probability
``near_share``, otherwise *far* (any deep attribute). Every draw is conditioned on
the attributes already chosen (``when`` clauses, ``follows``) and filtered by the
rules: a candidate value that would break a rule whose attributes are all known is
never drawn. A dead end restarts the persona on a fresh sub-stream; the result is
checked against every rule before it is returned, so rules are never violated.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from personae.errors import PersonaeError
from personae.population.conditions import Rule
from personae.population.taxonomy import Leaf, Taxonomy

__all__ = ["PersonaSampler", "SamplingError", "violations"]

_SKIP = object()
_NUMERIC = {"<", "<=", ">", ">=", "=="}
_CACHE_LIMIT = 200_000
_PROBE_STREAM = 2**31 - 1
_PRIOR_STREAM = 2**31 - 2


class SamplingError(PersonaeError):
    """No persona satisfying the rules could be drawn for a quota cell."""

    def __init__(self, cell: Mapping[str, Any], reason: str) -> None:
        self.cell = dict(cell)
        self.reason = reason
        super().__init__(f"cannot sample a persona for cell {self.cell}: {reason}")

    def __reduce__(self):  # noqa: D105
        return (SamplingError, (self.cell, self.reason))


class _Infeasible(Exception):
    """No value of one attribute fits the rules given the others (restart the persona)."""


def violations(rules: Iterable[Rule], attrs: Mapping[str, Any]) -> list[Rule]:
    """The rules ``attrs`` break."""
    return [rule for rule in rules if rule.violated(attrs)]


class _Draws:
    """Uniform and normal draws from one seeded numpy stream, buffered for speed."""

    __slots__ = ("_rng", "_buf", "_pos")

    def __init__(self, entropy: list[int]) -> None:
        self._rng = np.random.default_rng(entropy)
        self._buf: list[float] = self._rng.random(96).tolist()
        self._pos = 0

    def uniform(self) -> float:
        if self._pos >= len(self._buf):
            self._buf = self._rng.random(96).tolist()
            self._pos = 0
        value = self._buf[self._pos]
        self._pos += 1
        return value

    def below(self, n: int) -> int:
        return min(int(self.uniform() * n), n - 1)

    def normal(self) -> float:
        u1 = max(self.uniform(), 1e-12)
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * self.uniform())


def _key(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class PersonaSampler:
    """Draws attribute dicts (taxonomy path → value) from a compiled taxonomy under rules.

    Args:
        taxonomy: the compiled taxonomy.
        rules: every rule to respect (taxonomy rules plus the user's).
        seed: the population seed.
        deep_attributes: how many deep attributes each persona gets (at most).
        near_share: probability that a deep pick is near the profile so far.
        max_restarts: fresh sub-streams tried before giving up on a cell.
    """

    def __init__(
        self,
        taxonomy: Taxonomy,
        rules: list[Rule],
        *,
        seed: int,
        deep_attributes: int = 40,
        near_share: float = 0.7,
        max_restarts: int = 50,
    ) -> None:
        self.taxonomy = taxonomy
        self.rules = list(rules)
        self.seed = int(seed)
        self.deep_attributes = deep_attributes
        self.near_share = near_share
        self.max_restarts = max_restarts
        self._core = [leaf for leaf in taxonomy.leaves if leaf.tier == "core"]
        self._deep = [leaf for leaf in taxonomy.leaves if leaf.tier == "deep" and (leaf.type != "text" or leaf.examples)]
        self._rules_for: dict[str, list[Rule]] = {leaf.path: [] for leaf in taxonomy.leaves}
        for rule in self.rules:
            for path in rule.paths:
                self._rules_for[path].append(rule)
        self._keys: dict[str, tuple[str, ...]] = {}
        for leaf in taxonomy.leaves:
            paths = set(leaf.deps)
            for rule in self._rules_for[leaf.path]:
                paths |= rule.paths
            paths.discard(leaf.path)
            self._keys[leaf.path] = tuple(sorted(paths))
        self._cache: dict[tuple, tuple[tuple[str, ...], list[float]]] = {}
        self._expand, self._core_near = self._neighbourhoods()

    # ---- neighbourhoods (near / far) ---------------------------------------------
    def _neighbourhoods(self) -> tuple[dict[str, list[int]], list[int]]:
        by_group: dict[str, list[int]] = {}
        for i, leaf in enumerate(self._deep):
            by_group.setdefault(leaf.group, []).append(i)
        dependents: dict[str, list[int]] = {}
        for i, leaf in enumerate(self._deep):
            for dep in leaf.deps:
                dependents.setdefault(dep, []).append(i)
        expand: dict[str, list[int]] = {}
        for leaf in self.taxonomy.leaves:
            near = [j for j in by_group.get(leaf.group, []) if self._deep[j].path != leaf.path]
            near += dependents.get(leaf.path, [])
            expand[leaf.path] = near
        core_near: list[int] = []
        seen: set[int] = set()
        for leaf in self._core:
            related = list(expand[leaf.path])
            for group in self.taxonomy.groups.get(leaf.group, {}).get("related", []):
                related += [j for g, members in by_group.items() if g == group or g.startswith(group + ".") for j in members]
            for j in related:
                if j not in seen:
                    seen.add(j)
                    core_near.append(j)
        return expand, core_near

    # ---- public API ----------------------------------------------------------------
    def sample(self, index: int, cell: Mapping[str, Any] | None = None, attempt: int = 0, *, deep: bool = True, restarts: int | None = None) -> dict[str, Any]:
        """Attributes of persona ``index`` in ``cell`` (fixed values), on ``attempt``.

        ``deep=False`` draws the core attributes only. Raises :class:`SamplingError`
        when no rule-respecting persona exists for the cell.
        """
        cell = dict(cell or {})
        reason = "no value fits the rules"
        for sub in range(restarts or self.max_restarts):
            draws = _Draws([self.seed, int(index), int(attempt), sub])
            attrs: dict[str, Any] = dict(cell)
            try:
                for leaf in self._core:
                    if leaf.path in cell:
                        continue
                    value = self._draw(leaf, attrs, draws)
                    if value is not _SKIP:
                        attrs[leaf.path] = value
                if deep:
                    self._deep_pass(attrs, draws)
            except _Infeasible as exc:
                reason = str(exc)
                continue
            broken = violations(self.rules, attrs)
            if broken:
                reason = f"rule broken: {broken[0]}"
                continue
            return attrs
        raise SamplingError(cell, reason)

    def resample(self, attrs: Mapping[str, Any], paths: Iterable[str], *, index: int, attempt: int, round_no: int, fixed: Iterable[str] = ()) -> dict[str, Any]:
        """``attrs`` with ``paths`` drawn again (conditioned on the rest, under the rules).

        Paths in ``fixed`` (quota cell attributes) are kept. A path that cannot be
        redrawn consistently keeps its old value, and the result still satisfies the rules.
        """
        keep = set(fixed)
        targets = [self.taxonomy.by_path[p] for p in dict.fromkeys(paths) if p in self.taxonomy.by_path and p not in keep and p in attrs]
        order = {leaf.path: i for i, leaf in enumerate(self.taxonomy.leaves)}
        targets.sort(key=lambda leaf: order[leaf.path])
        for sub in range(self.max_restarts):
            draws = _Draws([self.seed, int(index), int(attempt), 1_000_000 + 1_000 * int(round_no) + sub])
            out = dict(attrs)
            for leaf in targets:
                out.pop(leaf.path, None)
            try:
                for leaf in targets:
                    value = self._draw(leaf, out, draws)
                    if value is _SKIP:
                        continue
                    out[leaf.path] = value
            except _Infeasible:
                continue
            if not violations(self.rules, out):
                return out
        return dict(attrs)

    def probe(self, cell: Mapping[str, Any]) -> str | None:
        """``None`` if some rule-abiding persona has the values in ``cell``, else why not."""
        try:
            self.sample(_PROBE_STREAM, cell, deep=False, restarts=min(self.max_restarts, 20))
        except SamplingError as exc:
            return exc.reason
        return None

    def sample_prior(self, i: int) -> dict[str, Any]:
        """Core attributes of the ``i``-th unconstrained draw (the raking prior)."""
        return self.sample(i, None, _PRIOR_STREAM, deep=False)

    def check(self, attrs: Mapping[str, Any]) -> list[Rule]:
        """The rules ``attrs`` break (empty for anything :meth:`sample` returned)."""
        return violations(self.rules, attrs)

    # ---- deep attributes -------------------------------------------------------------
    def _deep_pass(self, attrs: dict[str, Any], draws: _Draws) -> None:
        deep = self._deep
        if not deep or self.deep_attributes <= 0:
            return
        target = min(self.deep_attributes, len(deep))
        near = list(self._core_near)
        tried: set[int] = set()
        got = 0
        budget = 3 * target + 10
        while got < target and budget > 0 and len(tried) < len(deep):
            budget -= 1
            pick = -1
            for _ in range(12):
                if near and draws.uniform() < self.near_share:
                    j = near[draws.below(len(near))]
                else:
                    j = draws.below(len(deep))
                if j not in tried:
                    pick = j
                    break
            if pick < 0:
                rest = [j for j in range(len(deep)) if j not in tried]
                pick = rest[draws.below(len(rest))]
            tried.add(pick)
            leaf = deep[pick]
            if leaf.path in attrs:
                continue
            try:
                value = self._draw(leaf, attrs, draws)
            except _Infeasible:
                continue
            if value is _SKIP:
                continue
            attrs[leaf.path] = value
            got += 1
            near.extend(self._expand[leaf.path])

    # ---- one attribute -----------------------------------------------------------------
    def _draw(self, leaf: Leaf, attrs: dict[str, Any], draws: _Draws) -> Any:
        if leaf.applies_if is not None and leaf.applies_if.evaluate(attrs) is not True:
            return _SKIP
        if leaf.type in ("int", "float"):
            return self._numeric(leaf, attrs, draws)
        values, cum = self._distribution(leaf, attrs)
        if not values:
            raise _Infeasible(f"no value of {leaf.path} fits the rules")
        if leaf.type == "multi":
            return self._multi(leaf, attrs, values, cum, draws)
        return values[bisect.bisect_right(cum, draws.uniform() * cum[-1]) if cum[-1] > 0 else 0]

    def _distribution(self, leaf: Leaf, attrs: dict[str, Any]) -> tuple[tuple[str, ...], list[float]]:
        key = (leaf.path, *(_key(attrs.get(p)) for p in self._keys[leaf.path]))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        cand = self._weights(leaf, attrs)
        rules = self._rules_for[leaf.path]
        if rules:
            had = attrs.pop(leaf.path, _SKIP)
            for value in list(cand):
                attrs[leaf.path] = [value] if leaf.type == "multi" else value
                if any(rule.violated(attrs) for rule in rules):
                    del cand[value]
            attrs.pop(leaf.path, None)
            if had is not _SKIP:
                attrs[leaf.path] = had
        values = tuple(v for v, w in cand.items() if w > 0)
        cum: list[float] = []
        total = 0.0
        for v in values:
            total += cand[v]
            cum.append(total)
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = (values, cum)
        return values, cum

    def _weights(self, leaf: Leaf, attrs: Mapping[str, Any]) -> dict[str, float]:
        base = dict(zip(leaf.values, leaf.weights)) if leaf.values else dict.fromkeys(leaf.examples, 1.0)
        cand = dict(base)
        replaced = False
        for clause in leaf.when:
            if clause.cond.evaluate(attrs) is not True:
                continue
            if clause.values is not None:
                new = {v: (clause.set_weights[v] if clause.set_weights else base.get(v, 1.0)) for v in clause.values}
                cand = {v: w for v, w in new.items() if v in cand} if replaced else new
                replaced = True
            if clause.weights:
                for v, factor in clause.weights.items():
                    if v in cand:
                        cand[v] *= factor
            for v in clause.exclude:
                cand.pop(v, None)
        if leaf.follows is not None:
            target = self._position(leaf.follows, attrs)
            if target is not None:
                scale = [v for v in leaf.scale if v in cand]
                n = len(leaf.scale)
                spread = leaf.follows[2]
                for v in scale:
                    pos = leaf.scale.index(v) / (n - 1) if n > 1 else 0.5
                    cand[v] *= math.exp(-((pos - target) ** 2) / (2 * spread * spread))
        return cand

    def _position(self, follows: tuple[str, int, float], attrs: Mapping[str, Any]) -> float | None:
        path, direction, _ = follows
        value = attrs.get(path)
        if value is None:
            return None
        parent = self.taxonomy.by_path[path]
        if parent.is_numeric and parent.range is not None:
            lo, hi = parent.range
            pos = 0.5 if hi <= lo else (float(value) - lo) / (hi - lo)
        elif value in parent.scale:
            n = len(parent.scale)
            pos = parent.scale.index(value) / (n - 1) if n > 1 else 0.5
        else:
            return None
        return pos if direction > 0 else 1.0 - pos

    def _multi(self, leaf: Leaf, attrs: dict[str, Any], values: tuple[str, ...], cum: list[float], draws: _Draws) -> list[str]:
        weights = [cum[0]] + [cum[i] - cum[i - 1] for i in range(1, len(cum))]
        rules = self._rules_for[leaf.path]
        lo, hi = leaf.pick
        for _ in range(8):
            k = lo + draws.below(hi - lo + 1)
            pool = dict(zip(values, weights))
            chosen: list[str] = []
            while len(chosen) < k and pool:
                names = list(pool)
                total = sum(pool.values())
                if total <= 0:
                    break
                u = draws.uniform() * total
                acc = 0.0
                pick = names[-1]
                for name in names:
                    acc += pool[name]
                    if u < acc:
                        pick = name
                        break
                chosen.append(pick)
                del pool[pick]
                if pick in leaf.exclusive:
                    break
                for name in leaf.exclusive:
                    pool.pop(name, None)
            if not rules:
                return chosen
            attrs[leaf.path] = chosen
            ok = not any(rule.violated(attrs) for rule in rules)
            del attrs[leaf.path]
            if ok:
                return chosen
        raise _Infeasible(f"no combination of {leaf.path} fits the rules")

    def _numeric(self, leaf: Leaf, attrs: dict[str, Any], draws: _Draws) -> int | float:
        lo, hi, mean, sd, normal, is_int = self.numeric_params(leaf, attrs)
        rules = self._rules_for[leaf.path]
        for _ in range(24):
            value: float = mean + sd * draws.normal() if normal else lo + draws.uniform() * (hi - lo + (1 if is_int else 0))
            if normal and not lo <= value <= hi:
                value = lo + draws.uniform() * (hi - lo + (1 if is_int else 0)) if _ % 3 == 2 else value
            out: int | float = min(int(math.floor(value + (0.5 if normal else 0.0))), int(hi)) if is_int else round(value, leaf.decimals)
            if not lo <= out <= hi:
                continue
            if self._fits(leaf, out, rules, attrs):
                return out
        allowed = self.allowed_ints(leaf, attrs, lo, hi) if is_int else []
        if allowed:
            return allowed[draws.below(len(allowed))]
        raise _Infeasible(f"no value of {leaf.path} fits the rules")

    def allowed_ints(self, leaf: Leaf, attrs: dict[str, Any], lo: float, hi: float) -> list[int]:
        """Every integer in ``[lo, hi]`` (at most 1001 of them) that breaks no rule of ``leaf`` given ``attrs``."""
        if hi - lo > 1000:
            return []
        rules = self._rules_for[leaf.path]
        return [v for v in range(int(lo), int(hi) + 1) if self._fits(leaf, v, rules, attrs)]

    def numeric_params(self, leaf: Leaf, attrs: dict[str, Any]) -> tuple[float, float, float, float, bool, bool]:
        """``(lo, hi, mean, sd, normal, is_int)`` of a numeric leaf given ``attrs`` (clauses, ``follows``, rule bounds).

        Raises ``_Infeasible`` when the rules leave no room.
        """
        lo, hi = leaf.range or (0.0, 1.0)
        mean, sd = leaf.mean, leaf.sd
        for clause in leaf.when:
            if clause.cond.evaluate(attrs) is not True:
                continue
            if clause.range is not None:
                lo, hi = max(lo, clause.range[0]), min(hi, clause.range[1])
            mean = clause.mean if clause.mean is not None else mean
            sd = clause.sd if clause.sd is not None else sd
        if leaf.follows is not None:
            pos = self._position(leaf.follows, attrs)
            if pos is not None:
                mean = lo + pos * (hi - lo)
        is_int = leaf.type == "int"
        rules = self._rules_for[leaf.path]
        lo, hi = self._rule_bounds(leaf, rules, attrs, lo, hi, is_int)
        if is_int:
            lo, hi = math.ceil(lo), math.floor(hi)
        if lo > hi:
            raise _Infeasible(f"no value of {leaf.path} fits the rules (range {lo}..{hi})")
        normal = leaf.dist == "normal"
        if mean is None:
            mean = (lo + hi) / 2
        if sd is None:
            sd = (hi - lo) / 4 or 1.0
        return lo, hi, mean, sd, normal, is_int

    @staticmethod
    def _fits(leaf: Leaf, value: Any, rules: list[Rule], attrs: dict[str, Any]) -> bool:
        if not rules:
            return True
        had = attrs.get(leaf.path, _SKIP)
        attrs[leaf.path] = value
        ok = not any(rule.violated(attrs) for rule in rules)
        if had is _SKIP:
            del attrs[leaf.path]
        else:
            attrs[leaf.path] = had
        return ok

    @staticmethod
    def _rule_bounds(leaf: Leaf, rules: list[Rule], attrs: Mapping[str, Any], lo: float, hi: float, is_int: bool) -> tuple[float, float]:
        """Tighten [lo, hi] with rules whose ``when`` already holds and that bound this attribute."""
        for rule in rules:
            if rule.when is not None:
                if leaf.path in rule.when.paths or rule.when.evaluate(attrs) is not True:
                    continue
            for pred in rule.then.predicates:
                if pred.path != leaf.path or pred.op not in _NUMERIC:
                    continue
                rhs = pred.rhs(attrs)
                if rhs is None or isinstance(rhs, (str, tuple)):
                    continue
                step = 1 if is_int else 0.0
                if pred.op == "<":
                    hi = min(hi, (math.ceil(rhs) - 1) if is_int else rhs)
                elif pred.op == "<=":
                    hi = min(hi, rhs)
                elif pred.op == ">":
                    lo = max(lo, (math.floor(rhs) + step) if is_int else rhs)
                elif pred.op == ">=":
                    lo = max(lo, rhs)
                else:
                    lo, hi = max(lo, rhs), min(hi, rhs)
        return lo, hi
