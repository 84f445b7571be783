"""Vectorised sampling: a whole chunk of personas drawn column by column with numpy.

The non-LLM population path draws attributes for thousands of personas at once instead
of one persona at a time. It keeps the meaning of :class:`~personae.population.sampling.PersonaSampler`:

* quota-cell (and coverage) values are fixed first, then every core attribute in
  dependency order, then ``deep_attributes`` deep attributes picked progressively
  (near the profile so far with probability ``near_share``, else any untried one);
* each attribute's distribution given the persona so far is the scalar sampler's own
  (``when`` clauses, ``follows``, ``applies_if``, rule filtering, numeric rule bounds):
  rows are grouped by the values the distribution depends on, the distribution is
  computed once per group, and the group's rows are drawn as a column;
* a numeric value is redrawn until it fits the rules (checked as boolean masks over
  the column), a multi-valued attribute is drawn as weighted sampling without
  replacement (Gumbel top-k, the same law as sequential draws), exclusive values alone;
* a persona that hits a dead end in its core attributes, or whose result breaks a rule
  (checked for every rule over the whole chunk as masks), is redrawn on a fresh stream;
  after ``max_restarts`` it goes to the scalar sampler, which raises the usual error.

Randomness is one numpy stream per (seed, chunk, restart), so a chunk's personas are a
pure function of the spec: resuming at any index redraws that index's chunk and gets
the same personas. The streams differ from the scalar sampler's per-persona streams,
so the same seed gives a different (equally valid) population than before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from personae.population.conditions import Condition, Predicate, Rule
from personae.population.sampling import PersonaSampler, _Infeasible
from personae.population.taxonomy import Leaf

__all__ = ["ColumnSampler", "CHUNK"]

CHUNK = 32768
"""Personas drawn together (fixed, so that a chunk is reproducible whatever the batch size)."""

_STREAM_TAG = 0xC01
_MISS = object()
_TAKEN = object()  # a window's persona already handed out
_CACHE_LIMIT = 200_000
_WINDOW = 1024  # personas decoded to dicts together
_RESTARTS = 8  # vectorised redraws of a dead-end persona before the scalar sampler takes over


class _Enc:
    """How one leaf is stored in a column: value codes (categorical, text, multi) or floats."""

    __slots__ = ("kind", "values", "index", "width")

    def __init__(self, leaf: Leaf) -> None:
        if leaf.is_numeric:
            self.kind = "num"
            self.values: tuple[str, ...] = ()
        else:
            self.kind = "multi" if leaf.type == "multi" else "cat"
            extra = [v for clause in leaf.when for v in (clause.values or ())]
            self.values = tuple(dict.fromkeys([*leaf.values, *extra, *leaf.examples]))
        self.index = {v: i for i, v in enumerate(self.values)}
        self.width = max(1, leaf.pick[1]) if self.kind == "multi" else 1


class _Store:
    """The columns of one block of personas (absent: code -1, NaN, or ``present`` false).

    Categorical codes of every leaf live in one ``(n, leaves)`` matrix and numeric values
    in another, so a step that draws different leaves for different rows writes them all
    with one scatter.
    """

    def __init__(self, n: int, encs: Mapping[str, _Enc], slots: Mapping[str, int]) -> None:
        self.n = n
        self.encs = encs
        self.slots = slots
        n_num = sum(1 for p in slots if encs[p].kind == "num")
        self.cat = np.full((n, len(slots) - n_num), -1, dtype=np.int16)
        self.num = np.full((n, n_num), np.nan)
        self.cols: dict[str, np.ndarray] = {}
        self.present: dict[str, np.ndarray] = {}
        self.touched: set[str] = set()

    def col(self, path: str) -> np.ndarray:
        self.touched.add(path)
        enc = self.encs[path]
        if enc.kind == "num":
            return self.num[:, self.slots[path]]
        if enc.kind == "cat":
            return self.cat[:, self.slots[path]]
        got = self.cols.get(path)
        if got is None:
            got = np.full((self.n, enc.width), -1, dtype=np.int16)
            self.present[path] = np.zeros(self.n, dtype=bool)
            self.cols[path] = got
        return got

    def has(self, path: str, rows: np.ndarray) -> np.ndarray:
        enc = self.encs[path]
        col = self.col(path)
        if enc.kind == "num":
            return ~np.isnan(col[rows])
        if enc.kind == "multi":
            return self.present[path][rows]
        return col[rows] >= 0

    def value(self, path: str, row: int) -> Any:
        """The Python value of ``path`` for ``row`` (``None`` when absent)."""
        enc = self.encs[path]
        col = self.col(path)
        if enc.kind == "num":
            x = col[row]
            return None if np.isnan(x) else x
        if enc.kind == "multi":
            return [enc.values[c] for c in col[row] if c >= 0] if self.present[path][row] else None
        c = int(col[row])
        return enc.values[c] if c >= 0 else None

    def set_value(self, path: str, row: int, value: Any) -> None:
        enc = self.encs[path]
        col = self.col(path)
        if enc.kind == "num":
            col[row] = float(value)
        elif enc.kind == "multi":
            codes = [enc.index[v] for v in value]
            col[row] = -1
            col[row, : len(codes)] = codes
            self.present[path][row] = True
        else:
            col[row] = enc.index[str(value)]

    def stable(self, path: str, rows: np.ndarray) -> np.ndarray:
        """The values at ``rows`` as float64 numbers that mean the same in every block (absent: -inf)."""
        enc = self.encs[path]
        col = self.col(path)[rows]
        if enc.kind == "cat":
            return col.astype(np.float64)
        if enc.kind == "num":
            return np.nan_to_num(col, nan=-np.inf)
        radix = len(enc.values) + 1
        code = np.zeros(len(rows), dtype=np.float64)
        for k in range(enc.width):
            code = code * radix + (col[:, k].astype(np.float64) + 1)
        return np.where(self.present[path][rows], code, -1.0)


# ---- conditions and rules as masks ---------------------------------------------------


def _pred_masks(pred: Predicate, store: _Store, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true, false) masks of ``pred`` over ``rows``; neither where it is unknown."""
    enc = store.encs[pred.path]
    known = store.has(pred.path, rows)
    n = len(rows)
    rhs: Any = pred.value
    rhs_num: np.ndarray | None = None
    if pred.ref is not None:
        other = store.encs[pred.ref]
        if other.kind != "num":  # a text or list right-hand side is unknown
            return np.zeros(n, bool), np.zeros(n, bool)
        rhs_num = store.col(pred.ref)[rows] + pred.offset
        known = known & ~np.isnan(rhs_num)
    op = pred.op
    if enc.kind == "num":
        x = store.col(pred.path)[rows]
        if rhs_num is not None:
            rhs_arr: Any = rhs_num
        elif isinstance(rhs, tuple):
            rhs_arr = None
        else:
            rhs_arr = rhs
        if op in ("in", "not in"):
            nums = [v for v in rhs if isinstance(v, (int, float)) and not isinstance(v, bool)]
            hit = np.isin(x, nums) if nums else np.zeros(n, bool)
            true = hit if op == "in" else ~hit
        elif op == "contains" or (isinstance(rhs_arr, str) and op not in ("==", "!=")):
            true = np.zeros(n, bool)
        elif isinstance(rhs_arr, str):
            true = np.full(n, op == "!=")
        else:
            with np.errstate(invalid="ignore"):
                true = {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}[op](x, rhs_arr)
    elif enc.kind == "cat":
        codes = store.col(pred.path)[rows]
        if rhs_num is not None or op in ("<", "<=", ">", ">=", "contains"):
            true = np.full(n, op == "!=") if rhs_num is not None and op in ("==", "!=") else np.zeros(n, bool)
        elif op in ("in", "not in"):
            wanted = [enc.index[v] for v in rhs if v in enc.index]
            hit = np.isin(codes, wanted)
            true = hit if op == "in" else ~hit
        else:
            hit = codes == enc.index.get(rhs, -2)
            true = hit if op == "==" else ~hit
    else:  # multi: a list of codes per row
        mat = store.col(pred.path)[rows]
        if rhs_num is not None or op in ("<", "<=", ">", ">="):
            true = np.full(n, op == "!=") if rhs_num is not None and op in ("==", "!=") else np.zeros(n, bool)
        elif op in ("in", "not in"):
            wanted = [enc.index[v] for v in rhs if v in enc.index]
            hit = np.isin(mat, wanted)
            true = ((mat < 0) | hit).all(axis=1) if op == "in" else ~hit.any(axis=1)
        else:
            hit = (mat == enc.index.get(rhs, -2)).any(axis=1)
            true = ~hit if op == "!=" else hit
    true = true & known
    return true, known & ~true


def _cond_true(cond: Condition, store: _Store, rows: np.ndarray) -> np.ndarray:
    """Rows where every predicate holds (``evaluate(...) is True``)."""
    out = np.ones(len(rows), bool)
    for pred in cond.predicates:
        out &= _pred_masks(pred, store, rows)[0]
    return out


def _violated(rule: Rule, store: _Store, rows: np.ndarray) -> np.ndarray:
    """Rows that break ``rule`` (its ``when`` true and some ``then`` predicate false)."""
    bad = np.zeros(len(rows), bool)
    for pred in rule.then.predicates:
        bad |= _pred_masks(pred, store, rows)[1]
    if rule.when is not None and bad.any():
        bad &= _cond_true(rule.when, store, rows)
    return bad


def _broken(rules: Sequence[Rule], store: _Store, rows: np.ndarray) -> np.ndarray:
    bad = np.zeros(len(rows), bool)
    for rule in rules:
        bad |= _violated(rule, store, rows)
    return bad


class _Chunk(Sequence):
    """The personas of one chunk: blocks drawn on fresh streams until every persona has one."""

    def __init__(self, owner: ColumnSampler, fixed: Sequence[Mapping[str, Any]], chunk: int) -> None:
        # persona pos is row row_of[pos] of blocks[block_of[pos]] (block -1: none); arrays, not
        # tuples, so a chunk adds no objects for the garbage collector to walk
        self.blocks: list[_Decoded] = []
        self.block_of = np.full(len(fixed), -1, dtype=np.int64)
        self.row_of = np.zeros(len(fixed), dtype=np.int64)
        todo = np.arange(len(fixed))
        for sub in range(min(owner.sampler.max_restarts, _RESTARTS)):
            if not len(todo):
                break
            rng = np.random.default_rng([owner.sampler.seed, int(chunk), sub, _STREAM_TAG])
            block = owner._block([fixed[i] for i in todo.tolist()], rng)
            self.block_of[todo[block.alive]] = len(self.blocks)
            self.row_of[todo] = np.arange(len(todo))
            self.blocks.append(block)
            todo = todo[~block.alive]
        self._window: tuple[int, list[Any]] = (-1, [])

    @property
    def where(self) -> list[tuple[_Decoded, int] | None]:
        """Where each persona is: ``(block, row)``, or ``None``."""
        return [None if b < 0 else (self.blocks[b], r) for b, r in zip(self.block_of.tolist(), self.row_of.tolist())]

    def __len__(self) -> int:
        return len(self.block_of)

    def __getitem__(self, pos: int) -> dict[str, Any] | None:  # type: ignore[override]
        """Persona ``pos``: its window of :data:`_WINDOW` personas is decoded at once (and kept
        until another window is read), so reading a chunk in order decodes each persona once."""
        if not 0 <= pos < len(self.block_of):
            raise IndexError(pos)
        start = pos - pos % _WINDOW
        if self._window[0] != start:
            self._window = (start, self._decode(start, min(len(self.block_of), start + _WINDOW)))
        window = self._window[1]
        got = window[pos - start]
        if got is _TAKEN:  # read before: decode it afresh (the caller may have changed the first copy)
            b = int(self.block_of[pos])
            return None if b < 0 else self.blocks[b][int(self.row_of[pos])]
        window[pos - start] = _TAKEN
        return got

    def _decode(self, start: int, stop: int) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = [None] * (stop - start)
        blocks, rows = self.block_of[start:stop], self.row_of[start:stop]
        for b in np.unique(blocks[blocks >= 0]).tolist():
            at = np.flatnonzero(blocks == b)
            for k, attrs in zip(at.tolist(), self.blocks[b].decode(rows[at])):
                out[k] = attrs
        return out


class _Decoded(Sequence):
    """A block's personas as attribute dicts, built on access (a chunk's dicts never all live at once)."""

    def __init__(self, owner: ColumnSampler, store: _Store, alive: np.ndarray, order_fixed: list[list[str]], core: list[str], steps: np.ndarray) -> None:
        self.owner, self.store, self.alive, self.order_fixed, self.core, self.steps = owner, store, alive, order_fixed, core, steps

    def __len__(self) -> int:
        return self.store.n

    def __getitem__(self, row: int) -> dict[str, Any] | None:  # type: ignore[override]
        return self.decode(np.array([row], dtype=np.int64))[0]

    def decode(self, rows: np.ndarray) -> list[dict[str, Any] | None]:
        """The attribute dicts of ``rows`` (``None`` for a dead row), decoded column-wise.

        Each persona's attributes come in the order they were set: its fixed values, the
        core attributes, then its deep attributes in the order they were picked.
        """
        owner, store = self.owner, self.store
        alive = self.alive[rows]
        live = rows[alive]
        m = len(live)
        out: list[dict[str, Any] | None] = [None] * len(rows)
        if not m:
            return out
        leaf_id = owner._leaf_id
        fixed_lists = [[leaf_id[p] for p in self.order_fixed[r]] for r in live.tolist()]
        width = max(map(len, fixed_lists))
        fixed = np.full((m, width), -1, dtype=np.int64)
        for i, ids in enumerate(fixed_lists):
            fixed[i, : len(ids)] = ids
        core = np.broadcast_to(np.array([leaf_id[p] for p in self.core], dtype=np.int64), (m, len(self.core)))
        steps = self.steps[live].astype(np.int64)
        deep = np.where(steps >= 0, owner._deep_ids[np.maximum(steps, 0)], -1) if len(owner._deep_ids) else np.full(steps.shape, -1, dtype=np.int64)
        rest = np.concatenate([core, deep], axis=1)
        for f in range(width):  # a fixed value comes first and once
            rest = np.where((rest == fixed[:, f : f + 1]) & (fixed[:, f : f + 1] >= 0), -1, rest)
        seq = np.concatenate([fixed, rest], axis=1)
        row_of = np.broadcast_to(np.arange(m)[:, None], seq.shape)
        valid = seq >= 0
        leaf = np.where(valid, seq, 0)
        kind, slot = owner._leaf_kind[leaf], owner._leaf_slot[leaf]
        srow = live[row_of]
        is_cat, is_multi = kind == 0, kind == 2
        is_num = (kind == 1) | (kind == 3)
        code = np.where(is_cat, store.cat[srow, np.where(is_cat, slot, 0)], -1) if store.cat.shape[1] else np.full(seq.shape, -1)
        x = np.where(is_num, store.num[srow, np.where(is_num, slot, 0)], np.nan) if store.num.shape[1] else np.full(seq.shape, np.nan)
        present = valid & ((is_cat & (code >= 0)) | (is_num & ~np.isnan(x)))
        multi_at = np.flatnonzero((valid & is_multi).ravel())
        multi_lists: list[list[str]] = []
        multi_keep = np.zeros(len(multi_at), dtype=bool)
        paths = owner._leaf_paths
        for j, flat in enumerate(multi_at.tolist()):
            i, c = divmod(flat, seq.shape[1])
            path = paths[int(seq[i, c])]
            r = int(live[i])
            if path in store.present and store.present[path][r]:
                values = owner._info[path][2]
                multi_lists.append([values[v] for v in store.cols[path][r].tolist() if v >= 0])
                multi_keep[j] = True
        present_flat = present.ravel()
        present_flat[multi_at[multi_keep]] = True
        keep = np.flatnonzero(present_flat)
        vals = np.empty(len(keep), dtype=object)
        kind_k = kind.ravel()[keep]
        cat_k = kind_k == 0
        vals[cat_k] = owner._value_table[owner._value_offset[leaf.ravel()[keep][cat_k]] + code.ravel()[keep][cat_k]]
        float_k = kind_k == 1
        vals[float_k] = x.ravel()[keep][float_k]
        int_k = kind_k == 3
        vals[int_k] = x.ravel()[keep][int_k].astype(np.int64)
        for pos, value in zip(np.searchsorted(keep, multi_at[multi_keep]).tolist(), multi_lists):
            vals[pos] = value
        keys = owner._path_table[leaf.ravel()[keep]].tolist()
        values_list = vals.tolist()
        counts = present_flat.reshape(m, -1).sum(axis=1)
        ends = np.cumsum(counts).tolist()
        starts = [0, *ends[:-1]]
        dicts = [dict(zip(keys[a:b], values_list[a:b])) for a, b in zip(starts, ends)]
        for k, attrs in zip(np.flatnonzero(alive).tolist(), dicts):
            out[k] = attrs
        return out


# ---- the sampler -----------------------------------------------------------------------


class ColumnSampler:
    """Draws chunks of personas as columns, with the meaning of a :class:`PersonaSampler`.

    Args:
        sampler: the scalar sampler (taxonomy, rules, seed, deep settings, distribution cache).
    """

    def __init__(self, sampler: PersonaSampler) -> None:
        self.sampler = sampler
        self.taxonomy = sampler.taxonomy
        self.encs = {leaf.path: _Enc(leaf) for leaf in self.taxonomy.leaves}
        nums = [leaf.path for leaf in self.taxonomy.leaves if self.encs[leaf.path].kind == "num"]
        others = [leaf.path for leaf in self.taxonomy.leaves if self.encs[leaf.path].kind != "num"]
        self.slots = {**{p: i for i, p in enumerate(others)}, **{p: i for i, p in enumerate(nums)}}
        self._info = {leaf.path: ("int" if leaf.type == "int" else self.encs[leaf.path].kind, self.slots[leaf.path], self.encs[leaf.path].values) for leaf in self.taxonomy.leaves}
        deep = sampler._deep
        self._deep_paths = [leaf.path for leaf in deep]
        self._deep_slots = np.array([self.slots[leaf.path] for leaf in deep], dtype=np.int64)
        self._deep_kind = np.array([{"cat": 0, "num": 1, "multi": 2}[self.encs[leaf.path].kind] for leaf in deep], dtype=np.int8)
        lists = [sampler._expand[leaf.path] for leaf in deep]
        self._max_expand = max((len(e) for e in lists), default=0)
        expand = np.full((len(deep), max(self._max_expand, 1)), -1, dtype=np.int16)
        for j, e in enumerate(lists):
            expand[j, : len(e)] = e
        self._expand_table = (expand, np.array([len(e) for e in lists], dtype=np.int64))
        # per leaf, for decoding: kind (0 categorical, 1 float, 2 multi, 3 int), slot, path, and
        # every categorical value in one table (value of leaf l, code c: _value_table[_value_offset[l] + c])
        leaves = self.taxonomy.leaves
        self._leaf_paths = [leaf.path for leaf in leaves]
        self._leaf_id = {p: i for i, p in enumerate(self._leaf_paths)}
        self._path_table = np.array(self._leaf_paths, dtype=object)
        self._leaf_kind = np.array([3 if leaf.type == "int" else {"cat": 0, "num": 1, "multi": 2}[self.encs[leaf.path].kind] for leaf in leaves], dtype=np.int8)
        self._leaf_slot = np.array([self.slots[leaf.path] for leaf in leaves], dtype=np.int64)
        sizes = [len(self.encs[leaf.path].values) if self.encs[leaf.path].kind == "cat" else 0 for leaf in leaves]
        self._value_offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if leaves else np.zeros(0, np.int64)
        table = [v for leaf in leaves if self.encs[leaf.path].kind == "cat" for v in self.encs[leaf.path].values]
        self._value_table = np.empty(len(table), dtype=object)
        self._value_table[:] = table
        self._deep_ids = np.array([self._leaf_id[p] for p in self._deep_paths], dtype=np.int64)
        self._cache: dict[tuple, Any] = {}
        self._static_deep: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # ---- public API ---------------------------------------------------------------------
    def sample_chunk(self, indices: Sequence[int], fixed: Sequence[Mapping[str, Any]], chunk: int) -> Sequence[dict[str, Any] | None]:
        """Attributes for ``indices`` (one chunk, ``fixed`` values per persona), built on access;
        ``None`` where the vectorised draw gave up after its restarts (the caller then uses the
        scalar sampler, which raises the usual error when the cell is impossible)."""
        return _Chunk(self, fixed, chunk)

    # ---- one block ------------------------------------------------------------------------
    def _block(self, fixed: Sequence[Mapping[str, Any]], rng: np.random.Generator) -> _Decoded:
        n = len(fixed)
        store = _Store(n, self.encs, self.slots)
        order_fixed: list[list[str]] = []
        for row, values in enumerate(fixed):
            order_fixed.append(list(values))
            for path, value in values.items():
                store.set_value(path, row, value)
        alive = np.ones(n, bool)
        core_done: list[str] = []
        for leaf in self.sampler._core:
            rows = np.flatnonzero(alive)
            rows = rows[~store.has(leaf.path, rows)]
            if not len(rows):
                continue
            failed = self._draw(leaf, store, rows, rng)
            alive[failed] = False
            core_done.append(leaf.path)
        steps = self._deep_pass(store, np.flatnonzero(alive), rng)
        rows = np.flatnonzero(alive)
        alive[rows[_broken(self.sampler.rules, store, rows)]] = False
        return self._decode(store, alive, order_fixed, core_done, steps)

    def _decode(self, store: _Store, alive: np.ndarray, order_fixed: list[list[str]], core: list[str], steps: np.ndarray) -> _Decoded:
        return _Decoded(self, store, alive, order_fixed, core, steps)

    # ---- deep attributes ----------------------------------------------------------------------
    def _static_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Deep leaves whose distribution never depends on the persona: (mask, codes, cumulative weights)."""
        if self._static_deep is None:
            deep = self.sampler._deep
            mask = np.array([leaf.type in ("categorical", "text") and not self.sampler._keys[leaf.path] and leaf.applies_if is None for leaf in deep], dtype=bool)
            tables = [self._distributions(leaf, self._entries(leaf, _Store(1, self.encs, self.slots), np.zeros(1, np.int64))[1], np.zeros(1, bool)) if m else (np.full((1, 1), -1, np.int16), np.full((1, 1), 2.0)) for leaf, m in zip(deep, mask.tolist())]
            width = max(t[0].shape[1] for t in tables)
            codes = np.full((len(deep), width), -1, dtype=np.int16)
            cum = np.full((len(deep), width), 2.0)
            for j, (c, w) in enumerate(tables):
                codes[j, : c.shape[1]] = c[0]
                cum[j, : w.shape[1]] = w[0]
            self._static_deep = (mask, codes, cum)
        return self._static_deep

    def _deep_pass(self, store: _Store, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Progressive deep picks for ``rows``; returns the picked deep leaves per row, in order."""
        s = self.sampler
        deep = s._deep
        n_all = store.n
        target = min(s.deep_attributes, len(deep))
        steps = np.full((n_all, max(target, 1)), -1, dtype=np.int16)
        if not deep or target <= 0 or not len(rows):
            return steps
        static, static_codes, static_cum = self._static_table()
        slot = self._deep_slots
        n, d = len(rows), len(deep)
        # A row's "near" list is the core neighbourhood, then the expansion of each deep leaf it
        # won, in order. It is kept implicit: ``near_ends[r, k]`` is where the k-th won leaf's expansion
        # ends (past the core part; unset: larger than any position) and ``won_leaf[r, k]`` that leaf.
        core_near = np.asarray(s._core_near, dtype=np.int64)
        n_core = len(core_near)
        near_ends = np.full((n, target + 1), np.iinfo(np.int64).max, dtype=np.int64)
        near_ends[:, 0] = 0
        won_leaf = np.zeros((n, target), dtype=np.int64)
        near_len = np.full(n, n_core, dtype=np.int64)
        tried = np.zeros((n, d), dtype=bool)
        tried_n = np.zeros(n, dtype=np.int64)
        got = np.zeros(n, dtype=np.int64)
        budget = np.full(n, 3 * target + 10, dtype=np.int64)
        expand_len = self._expand_table[1]
        while True:
            act = np.flatnonzero((got < target) & (budget > 0) & (tried_n < d))
            if not len(act):
                break
            budget[act] -= 1
            pick = np.full(len(act), -1, dtype=np.int64)
            pend = np.arange(len(act))
            for _ in range(12):
                if not len(pend):
                    break
                r = act[pend]
                u1, u2 = rng.random(len(pend)), rng.random(len(pend))
                nl = near_len[r]
                use_near = (nl > 0) & (u1 < s.near_share)
                pos = np.minimum((u2 * nl).astype(np.int64), np.maximum(nl - 1, 0))
                j = np.where(use_near, self._near_at(core_near, near_ends, won_leaf, r, pos), np.minimum((u2 * d).astype(np.int64), d - 1))
                fresh = ~tried[r, j]
                pick[pend[fresh]] = j[fresh]
                pend = pend[~fresh]
            if len(pend):  # every draw hit a tried leaf: any untried one, uniformly
                r = act[pend]
                noise = rng.random((len(pend), d))
                noise[tried[r]] = -1.0
                pick[pend] = noise.argmax(axis=1)
            tried[act, pick] = True
            tried_n[act] += 1
            # a leaf the persona already has (e.g. a fixed coverage value) is tried but not counted
            fresh = ~self._has_deep(store, rows[act], pick)
            act, pick = act[fresh], pick[fresh]
            won_rows: list[np.ndarray] = []
            won_leaves: list[np.ndarray] = []
            is_static = static[pick]
            if is_static.any():
                a, j = act[is_static], pick[is_static]
                u = rng.random(len(a))
                pos = (static_cum[j] <= u[:, None]).sum(axis=1)
                code = static_codes[j, np.minimum(pos, static_codes.shape[1] - 1)]
                ok = code >= 0
                store.cat[rows[a[ok]], slot[j[ok]]] = code[ok]
                won_rows.append(a[ok])
                won_leaves.append(j[ok])
            act, pick = act[~is_static], pick[~is_static]
            order = np.argsort(pick, kind="stable")
            leaves, starts = np.unique(pick[order], return_index=True)
            ends = np.append(starts[1:], len(order))
            for j, a, b in zip(leaves.tolist(), starts.tolist(), ends.tolist()):
                local = act[order[a:b]]
                ok = self._draw(deep[j], store, rows[local], rng, deep=True)
                won_rows.append(local[ok])
                won_leaves.append(np.full(int(ok.sum()), j, dtype=np.int64))
            if not won_rows:
                continue
            won = np.concatenate(won_rows)
            j = np.concatenate(won_leaves)
            if not len(won):
                continue
            steps[rows[won], got[won]] = j
            lens = expand_len[j]
            won_leaf[won, got[won]] = j
            near_ends[won, got[won] + 1] = near_ends[won, got[won]] + lens
            got[won] += 1
            near_len[won] += lens
        return steps

    def _near_at(self, core_near: np.ndarray, ends: np.ndarray, won_leaf: np.ndarray, r: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Entry ``pos`` of each row ``r``'s near list (-1 where ``pos`` is past its end)."""
        out = np.full(len(r), -1, dtype=np.int64)
        n_core = len(core_near)
        in_core = pos < n_core
        out[in_core] = core_near[pos[in_core]]
        rest = np.flatnonzero(~in_core)
        if len(rest):
            rr, p = r[rest], pos[rest] - n_core
            k = (ends[rr, 1:] <= p[:, None]).sum(axis=1)  # the won leaf whose expansion holds p
            ok = k < won_leaf.shape[1]
            k = np.minimum(k, won_leaf.shape[1] - 1)
            expand = self._expand_table[0]
            offset = np.minimum(p - ends[rr, k], expand.shape[1] - 1)
            out[rest] = np.where(ok, expand[won_leaf[rr, k], offset], -1)
        return out

    def _has_deep(self, store: _Store, rows: np.ndarray, pick: np.ndarray) -> np.ndarray:
        """Whether each row already has its picked deep leaf."""
        out = np.zeros(len(rows), bool)
        kinds = self._deep_kind[pick]
        cat = kinds == 0
        out[cat] = store.cat[rows[cat], self._deep_slots[pick[cat]]] >= 0
        num = kinds == 1
        out[num] = ~np.isnan(store.num[rows[num], self._deep_slots[pick[num]]])
        for i in np.flatnonzero(kinds == 2).tolist():
            path = self._deep_paths[int(pick[i])]
            store.col(path)
            out[i] = store.present[path][rows[i]]
        return out

    # ---- one attribute over rows ------------------------------------------------------------
    def _groups(self, leaf: Leaf, store: _Store, rows: np.ndarray) -> tuple[np.ndarray, list[tuple], np.ndarray]:
        """Group ``rows`` by the values ``leaf``'s distribution depends on.

        Returns the group of each row, a hashable key per group (stable across blocks)
        and one row of each group.
        """
        keys = self.sampler._keys[leaf.path]
        if not keys:
            return np.zeros(len(rows), dtype=np.int64), [()], rows[:1]
        cols = [store.stable(path, rows) for path in keys]
        if len(cols) == 1:
            uniq, first, inv = np.unique(cols[0], return_index=True, return_inverse=True)
            groups = [(x,) for x in uniq.tolist()]
        else:
            uniq, first, inv = np.unique(np.stack(cols, axis=1), axis=0, return_index=True, return_inverse=True)
            groups = [tuple(r) for r in uniq.tolist()]
        return inv.reshape(-1).astype(np.int64), groups, rows[first]

    def _rep(self, leaf: Leaf, store: _Store, row: int) -> dict[str, Any]:
        """The values ``leaf``'s distribution depends on, for one row."""
        attrs = {}
        for path in self.sampler._keys[leaf.path]:
            v = store.value(path, row)
            if v is not None:
                attrs[path] = int(v) if self._info[path][0] == "int" else (float(v) if self._info[path][0] == "num" else v)
        return attrs

    def _entries(self, leaf: Leaf, store: _Store, rows: np.ndarray) -> tuple[np.ndarray, list[Any]]:
        """Group of each row and, per group, ``None`` (attribute does not apply) or its distribution:
        numeric ``(lo, hi, mean, sd, normal, is_int)`` (``()`` when the rules leave no room), else
        ``(codes, normalised cumulative weights)``."""
        inv, groups, firsts = self._groups(leaf, store, rows)
        cache = self._cache
        out = []
        for key, row in zip(groups, firsts.tolist()):
            ck = (leaf.path, key)
            entry = cache.get(ck, _MISS)
            if entry is _MISS:
                entry = self._entry(leaf, self._rep(leaf, store, row))
                if len(cache) > _CACHE_LIMIT:
                    cache.clear()
                cache[ck] = entry
            out.append(entry)
        return inv, out

    def _entry(self, leaf: Leaf, attrs: dict[str, Any]) -> Any:
        if leaf.applies_if is not None and leaf.applies_if.evaluate(attrs) is not True:
            return None
        if leaf.is_numeric:
            try:
                return self.sampler.numeric_params(leaf, attrs)
            except _Infeasible:
                return ()
        values, cum = self.sampler._distribution(leaf, attrs)
        enc = self.encs[leaf.path]
        if not values:
            return (np.zeros(0, np.int16), np.zeros(0))
        c = np.asarray(cum, dtype=np.float64) / cum[-1]
        c[-1] = 1.0
        return (np.array([enc.index[v] for v in values], dtype=np.int16), c)

    def _draw(self, leaf: Leaf, store: _Store, rows: np.ndarray, rng: np.random.Generator, *, deep: bool = False) -> np.ndarray:
        """Draw ``leaf`` for ``rows``. Core: returns the rows that hit a dead end. Deep: a mask of rows that got a value."""
        inv, entries = self._entries(leaf, store, rows)
        skip = np.array([e is None for e in entries], dtype=bool)
        if leaf.is_numeric:
            ok = self._draw_numeric(leaf, store, rows, inv, entries, skip, rng)
        else:
            ok = self._draw_values(leaf, store, rows, inv, entries, skip, rng)
        if deep:
            return ok
        dead = ~ok & ~skip[inv]
        return rows[dead]

    def _distributions(self, leaf: Leaf, entries: list[Any], skip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per group: value codes (padded -1) and normalised cumulative weights (padded 2.0)."""
        width = max([1] + [len(e[0]) for e in entries if e is not None])
        codes = np.full((len(entries), width), -1, dtype=np.int16)
        cum = np.full((len(entries), width), 2.0)
        for k, e in enumerate(entries):
            if e is not None and len(e[0]):
                codes[k, : len(e[0])] = e[0]
                cum[k, : len(e[1])] = e[1]
        return codes, cum

    def _draw_values(self, leaf: Leaf, store: _Store, rows: np.ndarray, inv: np.ndarray, entries: list[Any], skip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        codes, cum = self._distributions(leaf, entries, skip)
        has = codes[:, 0] >= 0
        ok = has[inv] & ~skip[inv]
        if leaf.type == "multi":
            return self._draw_multi(leaf, store, rows, inv, codes, cum, ok, rng)
        take = np.flatnonzero(ok)
        if len(take):
            u = rng.random(len(take))
            g = inv[take]
            pos = (cum[g] <= u[:, None]).sum(axis=1)
            col = store.col(leaf.path)
            col[rows[take]] = codes[g, np.minimum(pos, codes.shape[1] - 1)]
        return ok

    def _draw_multi(self, leaf: Leaf, store: _Store, rows: np.ndarray, inv: np.ndarray, codes: np.ndarray, cum: np.ndarray, ok: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        enc = self.encs[leaf.path]
        col = store.col(leaf.path)
        rules = self.sampler._rules_for[leaf.path]
        weights = np.diff(np.concatenate([np.zeros((len(cum), 1)), np.where(codes >= 0, cum, 1.0)], axis=1), axis=1)
        weights[codes < 0] = 0.0
        excl_codes = [enc.index[v] for v in leaf.exclusive if v in enc.index]
        lo, hi = leaf.pick
        pend = np.flatnonzero(ok)
        for _ in range(8 if rules else 1):
            if not len(pend):
                break
            g = inv[pend]
            k = lo + np.minimum((rng.random(len(pend)) * (hi - lo + 1)).astype(np.int64), hi - lo)
            w = weights[g]
            with np.errstate(divide="ignore"):
                keys = np.log(w) - np.log(-np.log(rng.random(w.shape)))
            keys[w <= 0] = -np.inf
            order = np.argsort(-keys, axis=1, kind="stable")
            picked = np.take_along_axis(codes[g], order, axis=1)
            alive = np.isfinite(np.take_along_axis(keys, order, axis=1))
            excl = np.isin(picked, excl_codes) if excl_codes else np.zeros_like(alive)
            first_excl = excl[:, 0] & alive[:, 0] & (k > 0)
            usable = alive & ~excl
            rank = np.cumsum(usable, axis=1)
            out = np.full((len(pend), enc.width), -1, dtype=np.int16)
            for t in range(enc.width):
                sel = usable & (rank == t + 1) & (k[:, None] > t)
                has = sel.any(axis=1)
                out[has, t] = picked[has, sel[has].argmax(axis=1)]
            out[first_excl] = -1
            out[first_excl, 0] = picked[first_excl, 0]
            r = rows[pend]
            col[r] = out
            store.present[leaf.path][r] = True
            if not rules:
                pend = pend[:0]
                break
            bad = _broken(rules, store, r)
            col[r[bad]] = -1
            store.present[leaf.path][r[bad]] = False
            pend = pend[bad]
        ok = ok.copy()
        ok[pend] = False
        return ok

    def _draw_numeric(self, leaf: Leaf, store: _Store, rows: np.ndarray, inv: np.ndarray, entries: list[Any], skip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        params = np.zeros((len(entries), 6))
        feasible = np.zeros(len(entries), bool)
        for k, e in enumerate(entries):
            if e:
                params[k] = e
                feasible[k] = True
        ok = feasible[inv] & ~skip[inv]
        col = store.col(leaf.path)
        rules = self.sampler._rules_for[leaf.path]
        is_int = leaf.type == "int"
        pend = np.flatnonzero(ok)
        for attempt in range(24):
            if not len(pend):
                break
            p = params[inv[pend]]
            lo, hi, mean, sd, normal = p[:, 0], p[:, 1], p[:, 2], p[:, 3], p[:, 4] > 0
            width = hi - lo + (1 if is_int else 0)
            value = np.where(normal, mean + sd * rng.standard_normal(len(pend)), lo + rng.random(len(pend)) * width)
            if attempt % 3 == 2:
                outside = normal & ~((lo <= value) & (value <= hi))
                value = np.where(outside, lo + rng.random(len(pend)) * width, value)
            if is_int:
                value = np.minimum(np.floor(value + np.where(normal, 0.5, 0.0)), np.floor(hi))
            else:
                value = np.round(value, leaf.decimals)
            fits = (lo <= value) & (value <= hi)
            r = rows[pend]
            col[r] = np.where(fits, value, np.nan)
            if rules:
                bad = fits & _broken(rules, store, r)
                col[r[bad]] = np.nan
                fits &= ~bad
            pend = pend[~fits]
        if len(pend) and is_int:
            for i in pend.tolist():
                row = int(rows[i])
                lo_i, hi_i = params[inv[i], 0], params[inv[i], 1]
                attrs = {path: store.value(path, row) for path in {q for rule in rules for q in rule.paths} if store.value(path, row) is not None}
                attrs = {q: (int(v) if self.encs[q].kind == "num" and self.taxonomy.by_path[q].type == "int" else v) for q, v in attrs.items()}
                allowed = self.sampler.allowed_ints(leaf, attrs, lo_i, hi_i)
                if allowed:
                    col[row] = allowed[min(int(rng.random() * len(allowed)), len(allowed) - 1)]
            pend = pend[np.isnan(col[rows[pend]])]
        ok[pend] = False
        return ok
