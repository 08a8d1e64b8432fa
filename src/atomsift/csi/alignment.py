"""The measures beyond CSI for every (upstream, downstream) pair, and the warnings where a ranking is weak.

`score_measures` adds one column per requested measure to the rows of `pipeline.score` (docs/measures.md):
csi_element, uncovered, precision, recall, coverage, mmd, diversity. It also marks

- ties: candidates whose CSI intervals overlap (`tied_with`), which are not ranked against each other;
- out of distribution: a downstream set whose nearest upstream CSI exceeds `ood_ratio` times the median CSI
  between the upstream datasets themselves (`ood_ratio` in the rows; needs at least two upstream datasets);
- elements of a downstream set that no upstream dataset has, with their share of its atoms (their embeddings
  never train in pretraining).

and returns, per downstream set, the diagnostics behind them (kernel bandwidth, per-element breakdowns).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase.data import chemical_symbols

from atomsift.csi.config import CSIConfig
from atomsift.csi.extras import DatasetExtras
from atomsift.csi.frechet import FrechetReference
from atomsift.csi.measures import (
    element_coverage,
    kernel_mean,
    manifold_measures,
    median_bandwidth,
    mixture_mmd2,
    per_element_frechet,
    vendi_score,
)
from atomsift.csi.statistics import GroupedStats
from atomsift.errors import ConfigError
from atomsift.progress import progress_bar

__all__ = ["element_list", "interval_ties", "score_measures", "ties"]


def element_list(items: list[tuple[int, float]]) -> str:
    """'F 2.1 %, Cl 0.4 %' from [(Z, share of atoms)]."""
    return ", ".join(f"{chemical_symbols[z]} {100 * share:.3g} %" for z, share in items)


def interval_ties(
    names: Sequence[str], lows: Sequence[float | None], highs: Sequence[float | None]
) -> list[tuple[str, str]]:
    """Pairs of candidates whose CSI intervals [low, high] overlap (their CSI order is not resolved).

    Candidates without an interval (None ends or non-finite) are never flagged: nothing says they tie.
    Returns pairs (a, b) in the order of `names`.
    """
    known = [
        (name, lo, hi)
        for name, lo, hi in zip(names, lows, highs, strict=True)
        if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)
    ]
    return [
        (a, b) for i, (a, alo, ahi) in enumerate(known) for b, blo, bhi in known[i + 1 :] if alo <= bhi and blo <= ahi
    ]


def ties(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """{upstream: the other upstream sets whose CSI interval overlaps its own} for one downstream set's rows."""
    out: dict[str, list[str]] = {r["upstream"]: [] for r in rows}
    for a, b in interval_ties([r["upstream"] for r in rows], [r["ci_low"] for r in rows], [r["ci_high"] for r in rows]):
        out[a].append(b)
        out[b].append(a)
    return out


def _whole(counts: dict[int, float]) -> dict[int, int]:
    """Atom counts as integers (a mixture's are scaled floats; a present element keeps at least 1)."""
    return {z: max(1, int(round(c))) for z, c in counts.items() if c > 0}


def _upstream_spread(up: list[Any], cfg: CSIConfig) -> float | None:
    """Median CSI between pairs of upstream datasets (mixtures left out; covariances shrunk as the run's CSI
    is, so the ratio compares like with like); None with fewer than two."""
    from atomsift.csi.pipeline import moments

    singles = [u for u in up if isinstance(u.grouped, GroupedStats)]
    if len(singles) < 2:
        return None
    fitted = [moments(u.grouped.total(), cfg) for u in singles]
    values = []
    for i, j in itertools.combinations(range(len(singles)), 2):
        values.append(FrechetReference(*fitted[i]).distance(*fitted[j]))
    return float(np.median(values))


def _mmd(down_rows: np.ndarray, kdd: float, up: DatasetExtras, h: float) -> float:
    """MMD^2 between the upstream (a dataset or a weighted mixture of reservoirs) and the downstream rows."""
    parts = [(r, w) for r, w in up.parts if w > 0]
    g = np.array([kernel_mean(r, down_rows, h) for r, _ in parts])
    k = len(parts)
    gmat = np.empty((k, k))
    for i in range(k):
        for j in range(i, k):
            gmat[i, j] = gmat[j, i] = kernel_mean(parts[i][0], parts[j][0], h)
    return mixture_mmd2(gmat, g, kdd, np.array([w for _, w in parts]))


def score_measures(
    rows: list[dict[str, Any]], up: list[Any], down: list[Any], cfg: CSIConfig
) -> dict[str, dict[str, Any]]:
    """Add the requested measures, ties and out-of-distribution flags to `rows` (in place).

    Args:
        rows: `pipeline.score` rows (one per pair).
        up, down: the `DatasetStats` of the run (with `extras` when measures beyond CSI were asked for).
        cfg: the run's settings (`measures`, `knn_k`, `reservoir`, `ood_ratio`, `seed`).

    Returns:
        {downstream: diagnostics}: bandwidth, ood ratio and flag, elements no upstream set has, per-element
        CSI breakdown per upstream set.
    """
    wanted = set(cfg.measures)
    spread = _upstream_spread(up, cfg)
    singles = [u for u in up if isinstance(u.grouped, GroupedStats)]
    diagnostics: dict[str, dict[str, Any]] = {}
    for dn in down:
        sub = [r for r in rows if r["downstream"] == dn.name]
        nearest = min(r["csi"] for r in sub)
        ratio = None if spread is None or spread <= 0 else nearest / spread
        ood = ratio is not None and ratio > cfg.ood_ratio
        tied = ties(sub)
        diag: dict[str, Any] = {
            "upstream_median_csi": spread,
            "ood_ratio": ratio,
            "ood_threshold": cfg.ood_ratio,
            "out_of_distribution": ood,
        }
        ex = dn.extras
        if ex is not None:
            never = set(ex.counts) - {z for u in singles if u.extras is not None for z in u.extras.counts}
            total = sum(ex.counts.values())
            diag["uncovered_by_all"] = [
                {"element": z, "symbol": chemical_symbols[z], "share": ex.counts[z] / total} for z in sorted(never)
            ]
            diag["per_element"] = {}
            down_rows = ex.rows(cfg.reservoir, cfg.seed)
            kernel = wanted & {"mmd", "diversity"}
            h = _bandwidth(down_rows, dn.name) if kernel else None
            kdd = kernel_mean(down_rows, down_rows, h) if "mmd" in wanted and h else 0.0
            diag["bandwidth"] = h
            diag["reservoir_rows_downstream"] = int(down_rows.shape[0])
            down_elements = ex.element_moments() if "csi_element" in wanted and ex.element_stats else None
        for r in progress_bar(sub, desc=f"measures {dn.name}", unit="set", leave=False):
            u = next(x for x in up if x.name == r["upstream"])
            r["tied_with"] = tied[u.name]
            r["ood_ratio"] = ratio
            r["out_of_distribution"] = ood
            if ex is None or u.extras is None:
                continue
            ux = u.extras
            if "uncovered" in wanted:
                share, missing = element_coverage(_whole(ex.counts), _whole(ux.counts))
                r["uncovered"] = share
                r["uncovered_elements"] = element_list(missing)
            if "csi_element" in wanted:
                if down_elements is None or ux.element_stats is None:
                    r["csi_element"] = None
                    r["csi_element_note"] = ex.note or ux.note or "no element with enough atoms on both sides"
                else:
                    value, breakdown = per_element_frechet(down_elements, ux.element_moments())
                    r["csi_element"] = value
                    r["per_element"] = diag["per_element"][u.name] = breakdown
            up_rows = ux.rows(cfg.reservoir, cfg.seed)
            knn_ok = min(up_rows.shape[0], down_rows.shape[0]) > cfg.knn_k
            knn = wanted & {"precision", "recall", "coverage"}
            if knn:
                values = manifold_measures(down_rows, up_rows, cfg.knn_k) if knn_ok else {}
                r.update({name: values.get(name) for name in knn})
            if "mmd" in wanted:
                r["mmd"] = _mmd(down_rows, kdd, ux, h) if h else None
            if "diversity" in wanted:
                r["diversity"] = vendi_score(up_rows, h) if h else None
            r["reservoir_rows_upstream"] = int(up_rows.shape[0])
        diagnostics[dn.name] = diag
        for r in sub:
            r["upstream_median_csi"] = spread
            r["bandwidth"] = diag.get("bandwidth")
            r["uncovered_by_all"] = element_list([(e["element"], e["share"]) for e in diag.get("uncovered_by_all", [])])
    return diagnostics


def _bandwidth(rows: np.ndarray, name: str) -> float | None:
    """The kernel measures' bandwidth from a downstream set's rows (median heuristic), or None with a warning
    when it has none (fewer than two rows, or most rows equal: e.g. isolated-atom reference frames), so the
    other measures still come out."""
    try:
        return median_bandwidth(rows)
    except ConfigError as exc:
        warnings.warn(
            f"downstream '{name}': no kernel bandwidth from its {rows.shape[0]} feature rows ({exc.problem}); "
            "mmd and diversity are left out for it, the other measures are computed",
            stacklevel=2,
        )
        return None
