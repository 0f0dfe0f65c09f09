"""Exact TreeSHAP for LightGBM boosters, precomputed per leaf (the "Fast TreeSHAP v2" idea).

Path-dependent TreeSHAP (Lundberg et al. 2020; what LightGBM's ``pred_contrib`` and
``shap.TreeExplainer`` compute) gives each leaf a share of every feature on its path.
That share depends on a row only through which of the path's conditions the row
satisfies: for the ``d`` distinct features on a leaf's path, a ``d``-bit pattern. So the
shares for all ``2**d`` patterns can be computed once per model (with TreeSHAP's own
extend/unwind recurrences, Yang 2021 "Fast TreeSHAP"), and explaining a row costs one
decision per split and one table look-up per leaf: ``O(leaves x depth)`` per tree instead
of ``O(leaves x depth**2)``. Rows are processed in parallel with numba.

The values equal LightGBM's ``pred_contrib`` up to floating-point rounding (the same
formula summed in another order); the bias column is taken from LightGBM itself. A
model with a leaf whose path has more than :data:`MAX_PATH_FEATURES` distinct features
(tables would be too large), linear trees or several classes falls back to
``pred_contrib``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np

log = logging.getLogger(__name__)

#: Leaves with more distinct features on their path than this fall back to pred_contrib.
MAX_PATH_FEATURES = 16
_ZERO = float(np.float32(1e-35))  # LightGBM's kZeroThreshold (a float)
_MISSING = {"None": 0, "Zero": 1, "NaN": 2}

try:  # numba is a dependency of shap; without it everything falls back to pred_contrib
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    HAVE_NUMBA = False


class Unsupported(ValueError):
    """The booster has a structure this implementation does not handle."""


@dataclass(frozen=True)
class Tables:
    """A booster flattened into arrays: split nodes, leaf paths and share tables."""

    node_feat: np.ndarray
    node_thr: np.ndarray
    node_kind: np.ndarray  # 0 numerical, 1 categorical
    node_missing: np.ndarray  # 0 None, 1 Zero, 2 NaN
    node_default_left: np.ndarray
    cat_start: np.ndarray
    cat_end: np.ndarray
    cat_values: np.ndarray
    tree_node_start: np.ndarray  # len trees + 1
    tree_leaf_start: np.ndarray  # len trees + 1
    leaf_path_start: np.ndarray  # len leaves + 1
    path_node: np.ndarray  # node index within its tree
    path_dir: np.ndarray  # 1: the path goes left at that node
    path_slot: np.ndarray  # which of the leaf's distinct features
    leaf_slot_start: np.ndarray  # len leaves + 1
    slot_feat: np.ndarray
    leaf_table_start: np.ndarray
    table: np.ndarray
    n_features: int
    max_nodes: int


def _flatten(booster: lgb.Booster, num_iteration: int | None) -> Tables:
    dump = booster.dump_model(num_iteration=num_iteration)
    if dump.get("num_tree_per_iteration", 1) != 1:
        raise Unsupported("several trees per iteration (multiclass)")
    n_features = int(dump["max_feature_idx"]) + 1
    node_feat, node_thr, node_kind, node_missing, node_dl = [], [], [], [], []
    cat_start, cat_end, cat_values = [], [], []
    tree_node_start, tree_leaf_start = [0], [0]
    leaf_path_start, path_node, path_dir, path_slot = [0], [], [], []
    leaf_slot_start, slot_feat, slot_z, leaf_value = [0], [], [], []
    max_nodes = 1
    for tree in dump["tree_info"]:
        root = tree["tree_structure"]
        if "split_feature" not in root:  # a single leaf: it only moves the bias
            tree_node_start.append(len(node_feat))
            tree_leaf_start.append(len(leaf_value))
            continue
        base = len(node_feat)
        # iterative walk: (node, path of (local node id, went_left, feature, zero fraction))
        stack = [(root, ())]
        while stack:
            node, path = stack.pop()
            if "split_feature" not in node:
                if "leaf_coeff" in node:
                    raise Unsupported("linear trees")
                slots: dict[int, int] = {}
                zs: list[float] = []
                for _, _, feat, z in path:
                    if feat not in slots:
                        slots[feat] = len(zs)
                        zs.append(1.0)
                    zs[slots[feat]] *= z
                if len(zs) > MAX_PATH_FEATURES:
                    raise Unsupported(f"a leaf path with {len(zs)} distinct features")
                for local, left, feat, _ in path:
                    path_node.append(local)
                    path_dir.append(1 if left else 0)
                    path_slot.append(slots[feat])
                leaf_path_start.append(len(path_node))
                slot_feat.extend(slots.keys())
                slot_z.extend(zs)
                leaf_slot_start.append(len(slot_feat))
                leaf_value.append(float(node["leaf_value"]))
                continue
            local = len(node_feat) - base
            node_feat.append(int(node["split_feature"]))
            node_missing.append(_MISSING[node["missing_type"]])
            node_dl.append(1 if node["default_left"] else 0)
            if node["decision_type"] == "==":
                node_kind.append(1)
                node_thr.append(0.0)
                cats = [int(c) for c in str(node["threshold"]).split("||")]
                cat_start.append(len(cat_values))
                cat_values.extend(cats)
                cat_end.append(len(cat_values))
            elif node["decision_type"] == "<=":
                node_kind.append(0)
                node_thr.append(float(node["threshold"]))
                cat_start.append(0)
                cat_end.append(0)
            else:
                raise Unsupported(f"decision type {node['decision_type']!r}")
            count = float(node["internal_count"])
            feat = int(node["split_feature"])
            for child, left in ((node["right_child"], False), (node["left_child"], True)):
                c_count = float(child.get("internal_count", child.get("leaf_count", 0)))
                stack.append((child, (*path, (local, left, feat, c_count / count))))
        tree_node_start.append(len(node_feat))
        tree_leaf_start.append(len(leaf_value))
        max_nodes = max(max_nodes, len(node_feat) - base)
    i64 = np.int64
    leaf_d = np.diff(np.asarray(leaf_slot_start, dtype=i64))
    table_start = np.concatenate([[0], np.cumsum((2**leaf_d) * leaf_d)]).astype(i64)
    table = np.zeros(int(table_start[-1]), dtype=np.float64)
    if len(leaf_value):
        _fill_tables(
            np.asarray(leaf_slot_start, dtype=i64),
            np.asarray(slot_z, dtype=np.float64),
            np.asarray(leaf_value, dtype=np.float64),
            table_start,
            table,
        )
    return Tables(
        node_feat=np.asarray(node_feat, dtype=i64),
        node_thr=np.asarray(node_thr, dtype=np.float64),
        node_kind=np.asarray(node_kind, dtype=np.int8),
        node_missing=np.asarray(node_missing, dtype=np.int8),
        node_default_left=np.asarray(node_dl, dtype=np.int8),
        cat_start=np.asarray(cat_start, dtype=i64),
        cat_end=np.asarray(cat_end, dtype=i64),
        cat_values=np.asarray(cat_values, dtype=i64),
        tree_node_start=np.asarray(tree_node_start, dtype=i64),
        tree_leaf_start=np.asarray(tree_leaf_start, dtype=i64),
        leaf_path_start=np.asarray(leaf_path_start, dtype=i64),
        path_node=np.asarray(path_node, dtype=i64),
        path_dir=np.asarray(path_dir, dtype=np.int8),
        path_slot=np.asarray(path_slot, dtype=i64),
        leaf_slot_start=np.asarray(leaf_slot_start, dtype=i64),
        slot_feat=np.asarray(slot_feat, dtype=i64),
        leaf_table_start=table_start,
        table=table,
        n_features=n_features,
        max_nodes=max_nodes,
    )


if HAVE_NUMBA:

    @njit(cache=True)
    def _extend(zero, one, pweight, depth, z, o):  # noqa: ANN001, ANN202 - TreeSHAP's ExtendPath
        zero[depth] = z
        one[depth] = o
        pweight[depth] = 1.0 if depth == 0 else 0.0
        for i in range(depth - 1, -1, -1):
            pweight[i + 1] += o * pweight[i] * (i + 1) / (depth + 1)
            pweight[i] = z * pweight[i] * (depth - i) / (depth + 1)

    @njit(cache=True)
    def _unwound_sum(zero, one, pweight, depth, index):  # noqa: ANN001, ANN202 - UnwoundPathSum
        o = one[index]
        z = zero[index]
        next_one = pweight[depth]
        total = 0.0
        for i in range(depth - 1, -1, -1):
            if o != 0:
                tmp = next_one * (depth + 1) / ((i + 1) * o)
                total += tmp
                next_one = pweight[i] - tmp * z * ((depth - i) / (depth + 1))
            else:
                total += (pweight[i] / z) / ((depth - i) / (depth + 1))
        return total

    @njit(cache=True)
    def _fill_tables(leaf_slot_start, slot_z, leaf_value, table_start, table):  # noqa: ANN001, ANN202
        n_leaves = len(leaf_value)
        zero = np.empty(MAX_PATH_FEATURES + 1)
        one = np.empty(MAX_PATH_FEATURES + 1)
        pw = np.empty(MAX_PATH_FEATURES + 1)
        for leaf in range(n_leaves):
            s0 = leaf_slot_start[leaf]
            d = leaf_slot_start[leaf + 1] - s0
            v = leaf_value[leaf]
            t0 = table_start[leaf]
            for p in range(1 << d):
                _extend(zero, one, pw, 0, 1.0, 1.0)
                for j in range(d):
                    _extend(zero, one, pw, j + 1, slot_z[s0 + j], float((p >> j) & 1))
                for j in range(d):
                    w = _unwound_sum(zero, one, pw, d, j + 1)
                    table[t0 + p * d + j] = w * (one[j + 1] - zero[j + 1]) * v

    @njit(parallel=True, cache=True)
    def _contrib(  # noqa: ANN202, PLR0913
        X,  # noqa: ANN001, N803
        node_feat,  # noqa: ANN001
        node_thr,  # noqa: ANN001
        node_kind,  # noqa: ANN001
        node_missing,  # noqa: ANN001
        node_dl,  # noqa: ANN001
        cat_start,  # noqa: ANN001
        cat_end,  # noqa: ANN001
        cat_values,  # noqa: ANN001
        tree_node_start,  # noqa: ANN001
        tree_leaf_start,  # noqa: ANN001
        leaf_path_start,  # noqa: ANN001
        path_node,  # noqa: ANN001
        path_dir,  # noqa: ANN001
        path_slot,  # noqa: ANN001
        leaf_slot_start,  # noqa: ANN001
        slot_feat,  # noqa: ANN001
        table_start,  # noqa: ANN001
        table,  # noqa: ANN001
        out,  # noqa: ANN001
        max_nodes,  # noqa: ANN001
        zero_threshold,  # noqa: ANN001
    ):
        n = X.shape[0]
        n_trees = len(tree_node_start) - 1
        n_chunks = (n + 255) // 256
        for c in prange(n_chunks):
            dec = np.empty(max_nodes, dtype=np.int8)
            for r in range(c * 256, min(n, (c + 1) * 256)):
                for t in range(n_trees):
                    ns = tree_node_start[t]
                    ne = tree_node_start[t + 1]
                    if ne == ns:
                        continue
                    for k in range(ns, ne):
                        f = X[r, node_feat[k]]
                        if node_kind[k] == 0:
                            miss = node_missing[k]
                            if np.isnan(f) and miss != 2:
                                f = 0.0
                            if (miss == 1 and -zero_threshold <= f <= zero_threshold) or (
                                miss == 2 and np.isnan(f)
                            ):
                                dec[k - ns] = node_dl[k]
                            else:
                                dec[k - ns] = 1 if f <= node_thr[k] else 0
                        else:
                            left = 0
                            if not np.isnan(f):
                                iv = int(f)
                                if iv >= 0:
                                    for q in range(cat_start[k], cat_end[k]):
                                        if cat_values[q] == iv:
                                            left = 1
                                            break
                            dec[k - ns] = left
                    for leaf in range(tree_leaf_start[t], tree_leaf_start[t + 1]):
                        s0 = leaf_slot_start[leaf]
                        d = leaf_slot_start[leaf + 1] - s0
                        p = (1 << d) - 1
                        for q in range(leaf_path_start[leaf], leaf_path_start[leaf + 1]):
                            if dec[path_node[q]] != path_dir[q]:
                                p &= ~(1 << path_slot[q])
                        base = table_start[leaf] + p * d
                        for j in range(d):
                            out[r, slot_feat[s0 + j]] += table[base + j]


class TreeShap:
    """Exact SHAP values of one LightGBM booster (see the module docstring).

    Build once per model (the tables), then call :meth:`contributions` on design matrices.
    """

    def __init__(self, booster: lgb.Booster, *, num_iteration: int | None = None) -> None:
        self.booster = booster
        self.num_iteration = num_iteration
        self.tables: Tables | None = None
        self.reason = ""
        if not HAVE_NUMBA:
            self.reason = "numba is not installed"
            return
        try:
            self.tables = _flatten(booster, num_iteration)
        except Unsupported as exc:
            self.reason = str(exc)
            log.info("fast TreeSHAP unavailable (%s); using LightGBM pred_contrib", exc)

    @property
    def fast(self) -> bool:
        """Whether the table-based path is used (else LightGBM's ``pred_contrib``)."""
        return self.tables is not None

    def contributions(self, X) -> np.ndarray:  # noqa: ANN001 - pandas design matrix
        """SHAP values, shape ``(rows, features + 1)``, the last column the bias (LightGBM's
        expected value), exactly as ``booster.predict(X, pred_contrib=True)``.

        Args:
            X: The design matrix the booster was trained on (a pandas frame with
                categoricals as pandas categories, as LightGBM takes it).
        """
        if self.tables is None or len(X) == 0:
            return self.booster.predict(X, num_iteration=self.num_iteration, pred_contrib=True)
        tb = self.tables
        dense = _dense(X)
        if dense.shape[1] != tb.n_features:
            raise ValueError(
                f"X has {dense.shape[1]} columns; the booster has {tb.n_features} features"
            )
        out = np.zeros((dense.shape[0], tb.n_features + 1), dtype=np.float64)
        _contrib(
            dense,
            tb.node_feat,
            tb.node_thr,
            tb.node_kind,
            tb.node_missing,
            tb.node_default_left,
            tb.cat_start,
            tb.cat_end,
            tb.cat_values,
            tb.tree_node_start,
            tb.tree_leaf_start,
            tb.leaf_path_start,
            tb.path_node,
            tb.path_dir,
            tb.path_slot,
            tb.leaf_slot_start,
            tb.slot_feat,
            tb.leaf_table_start,
            tb.table,
            out,
            tb.max_nodes,
            _ZERO,
        )
        bias = self.booster.predict(
            X.iloc[:1], num_iteration=self.num_iteration, pred_contrib=True
        )[0, -1]
        out[:, -1] = bias
        return out


def _dense(X) -> np.ndarray:  # noqa: ANN001
    """The float64 matrix LightGBM predicts on: numbers as they are, categories as their
    codes (missing as NaN)."""
    import pandas as pd

    if not isinstance(X, pd.DataFrame):
        return np.ascontiguousarray(np.asarray(X, dtype=np.float64))
    cols = []
    for c in X.columns:
        s = X[c]
        if isinstance(s.dtype, pd.CategoricalDtype):
            codes = s.cat.codes.to_numpy().astype(np.float64)
            codes[codes < 0] = np.nan
            cols.append(codes)
        else:
            cols.append(s.to_numpy(dtype=np.float64, na_value=np.nan))
    return np.ascontiguousarray(np.column_stack(cols)) if cols else np.zeros((len(X), 0))
