"""summary.json of an experiment: per downstream task and budget, did the CSI ranking predict finetuning?

`summarize(rows)` turns the result rows (one per upstream x downstream x budget x seed, see
atomsift.experiment.report.COLUMNS) into plain numbers: per candidate its CSI and interval, the seed mean /
std / n of the task's test metric (lower is better), both ranks and the gain over training from scratch;
Spearman and Kendall between CSI and the seed means with permutation p-values (all candidates, and single
datasets only); whether the lowest-CSI candidate was the best; the paper's Fig. 4 comparison (best single
dataset alone vs each mixture that contains it) and metric vs budget (Table 5: equal N x E, different N).
Rows that failed, are pending or carry no value are counted and listed under `excluded`, never dropped
silently. `verdict(task)` says it in one paragraph of numbers.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
from scipy import stats as sps

from atomsift.csi.measures import MEASURE_INFO
from atomsift.csi.report import MEASURE_COLUMNS
from atomsift.experiment.stats import correlations, interval_ties

SCRATCH = "scratch"
ALPHA = 0.05  # the level the verdict names when it says a p-value is (not) small


def fmt(x: float | None) -> str:
    """A number as every output prints it (4 significant digits; '-' for None)."""
    return "-" if x is None else f"{x:.4g}"


def pm(mean: float | None, std: float | None) -> str:
    """``mean ± std`` as outputs print it: the spread to 2 significant digits and the mean to the same decimal
    place ('151.90 ± 0.53', '200 ± 11'); `fmt` for both where the spread is None, zero, not finite or outside
    1e-3..1e6 (there a fixed decimal place would print too many or too few digits)."""
    if mean is None or std is None or not (1e-3 <= abs(std) < 1e6) or not math.isfinite(mean):
        return fmt(mean) + ("" if std is None else f" ± {fmt(std)}")
    places = 1 - math.floor(math.log10(abs(std)))
    std = round(std, places)
    places = 1 - math.floor(math.log10(abs(std)))  # 9.96 rounds to 10.0: one place fewer
    return f"{round(mean, places):.{max(places, 0)}f} ± {round(std, places):.{max(places, 0)}f}"


def budget_key(n_samples: int | None, epochs: int | None) -> str:
    """'N=500,E=20', the key of one pretraining budget in the summary."""
    return f"N={n_samples},E={epochs}"


def metric_unit(metric: str) -> str:
    """The unit in a metric key: 'forces_mae_meV_per_A' -> 'meV/A', 'U0_mae_meV' -> 'meV', else ''."""
    for tag in ("_mae_", "_rmse_"):
        if tag in metric:
            return metric.rsplit(tag, 1)[1].replace("_per_", "/")
    return ""


def ordinal(k: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th'."""
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def spread(values: list[float]) -> dict[str, Any]:
    """mean, std (ddof=1; None for one value), n, min and max of seed values (all None/0 when empty)."""
    n = len(values)
    arr = np.asarray(values, dtype=float)
    return {
        "mean": float(arr.mean()) if n else None,
        "std": float(arr.std(ddof=1)) if n > 1 else None,
        "n": n,
        "min": float(arr.min()) if n else None,
        "max": float(arr.max()) if n else None,
    }


def _usable(row: dict[str, Any]) -> bool:
    v = row.get("value")
    return row.get("status") == "ok" and isinstance(v, int | float) and math.isfinite(v)


def _why_excluded(row: dict[str, Any], metric: str) -> str | None:
    if row.get("metric") not in (None, metric):
        return f"metric {row.get('metric')} differs from the task's {metric}"
    if row.get("status") != "ok":
        return str(row.get("status"))
    return None if _usable(row) else f"status ok but no finite value for {metric}"


def _ranks(values: list[float | None]) -> list[int | None]:
    """Rank 1 = lowest among the non-None values (ties share the lowest rank); None stays None."""
    known = [v for v in values if v is not None]
    ranks = iter(sps.rankdata(known, method="min").astype(int).tolist()) if known else iter(())
    return [None if v is None else next(ranks) for v in values]


def _correlation(cands: list[dict[str, Any]]) -> dict[str, Any]:
    use = [c for c in cands if c["csi"] is not None and c["mean"] is not None]
    out: dict[str, Any] = {"candidates": [c["name"] for c in use], "n": len(use)}
    out.update(correlations([c["csi"] for c in use], [c["mean"] for c in use], seed=0))
    return out


def oriented(measure: str, value: float) -> float:
    """A measure turned so that lower is better aligned (higher-is-better measures change sign)."""
    return value if MEASURE_INFO[measure].better == "lower" else -value


def measure_correlations(cands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per measure (CSI included), Spearman and Kendall between the measure, oriented so that lower is better
    aligned, and the seed-mean metric: positive = the measure predicted the finetuning order. Sorted by Spearman,
    best first; candidates without the measure or a metric are left out (their number is `n`)."""
    out = []
    for m in MEASURE_INFO:
        use = [c for c in cands if c["mean"] is not None and _measure(c, m) is not None]
        if len(use) < 3:
            continue
        corr = correlations([oriented(m, _measure(c, m)) for c in use], [c["mean"] for c in use], seed=0)  # type: ignore[arg-type]
        out.append({"measure": m, "better": MEASURE_INFO[m].better, "n": len(use), **corr})
    return sorted(out, key=lambda r: -(r["spearman"]["statistic"] if r["spearman"]["statistic"] is not None else -2))


def _measure(c: dict[str, Any], m: str) -> float | None:
    return c["csi"] if m == "csi" else c.get("measures", {}).get(m)


def _candidate(
    name: str, rows: list[dict[str, Any]], metric: str, scratch_mean: float | None, csi_rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """One candidate at one budget; its CSI comes from `rows`, else from its rows at other budgets (`csi_rows`)."""
    first = rows[0]
    with_csi = [r for r in rows + csi_rows if r["upstream"] == name and r.get("csi") is not None]
    src = with_csi[0] if with_csi else first
    ok = sorted((r for r in rows if _why_excluded(r, metric) is None), key=lambda r: r["seed"])
    s = spread([float(r["value"]) for r in ok])
    gain = gain_abs = None
    if s["mean"] is not None and scratch_mean is not None:
        gain_abs = scratch_mean - s["mean"]
        gain = gain_abs / scratch_mean if scratch_mean != 0 else None
    status = Counter(r.get("status") for r in rows)
    return {
        "name": name,
        "kind": first.get("kind"),
        "members": first.get("members") or "",
        "csi": src.get("csi"),
        "ci_low": src.get("ci_low"),
        "ci_high": src.get("ci_high"),
        "measures": {m: src.get(m) for m in MEASURE_COLUMNS if src.get(m) is not None},
        "out_of_distribution": src.get("out_of_distribution"),
        **s,
        "values": [float(r["value"]) for r in ok],
        "seeds": [r["seed"] for r in ok],
        "failed": status.get("failed", 0),
        "pending": status.get("pending", 0),
        "excluded": len(rows) - len(ok),
        "gain": gain,
        "gain_abs": gain_abs,
    }


def _fig4(cands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best single dataset (by seed mean) alone vs every mixture whose members include it."""
    singles = [c for c in cands if c["kind"] == "dataset" and c["mean"] is not None]
    if not singles:
        return []
    best = min(singles, key=lambda c: c["mean"])
    out = []
    for m in cands:
        if m["kind"] == "mixture" and m["mean"] is not None and best["name"] in m["members"].split("+"):
            out.append(
                {
                    "single": best["name"],
                    "mixture": m["name"],
                    "members": m["members"],
                    "single_mean": best["mean"],
                    "single_std": best["std"],
                    "single_n": best["n"],
                    "mixture_mean": m["mean"],
                    "mixture_std": m["std"],
                    "mixture_n": m["n"],
                    "difference": m["mean"] - best["mean"],  # > 0: the mixture is worse (lower is better)
                    "seed_spreads_overlap": m["min"] <= best["max"] and best["min"] <= m["max"],
                }
            )
    return out


def _budget_summary(
    rows: list[dict[str, Any]], metric: str, scratch_mean: float | None, csi_rows: list[dict[str, Any]]
) -> dict[str, Any]:
    first = rows[0]
    names = list(dict.fromkeys(r["upstream"] for r in rows))
    cands = [
        _candidate(name, [r for r in rows if r["upstream"] == name], metric, scratch_mean, csi_rows) for name in names
    ]
    for c, rc, rm in zip(cands, _ranks([c["csi"] for c in cands]), _ranks([c["mean"] for c in cands]), strict=True):
        c["rank_csi"], c["rank_metric"] = rc, rm
    cands.sort(key=lambda c: (c["csi"] is None, c["csi"] if c["csi"] is not None else 0.0, c["name"]))
    with_csi = [c for c in cands if c["csi"] is not None]
    ranked = [c for c in cands if c["mean"] is not None]
    lowest = with_csi[0] if with_csi else None
    best = min(ranked, key=lambda c: c["mean"]) if ranked else None
    was_best = None if lowest is None or lowest["mean"] is None else lowest["rank_metric"] == 1
    return {
        "n_samples": first.get("n_samples"),
        "epochs": first.get("epochs"),
        "budget": first.get("budget"),
        "metric": metric,
        "candidates": cands,
        "n_ranked": len(ranked),
        "correlation": {
            "all": _correlation(cands),
            "singles": _correlation([c for c in cands if c["kind"] == "dataset"]),
        },
        "measures": measure_correlations(cands),
        "csi_ties": [list(p) for p in interval_ties(*zip(*[(c["name"], c["ci_low"], c["ci_high"]) for c in with_csi]))]
        if with_csi
        else [],
        "lowest_csi": None if lowest is None else lowest["name"],
        "lowest_csi_rank": None if lowest is None else lowest["rank_metric"],
        "best": None if best is None else best["name"],
        "lowest_csi_was_best": was_best,
        "fig4": _fig4(cands),
    }


def _vs_budget(budgets: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Seed means per candidate and budget; for budgets with equal N x E, the N-vs-E groups (Table 5)."""
    if len(budgets) < 2:
        return None
    names = list(dict.fromkeys(c["name"] for b in budgets.values() for c in b["candidates"]))
    means = {n: {k: next((c["mean"] for c in b["candidates"] if c["name"] == n), None) for k, b in budgets.items()}
             for n in names}  # fmt: skip
    by_c: dict[int, list[str]] = {}
    for k, b in budgets.items():
        if b["budget"] is not None:
            by_c.setdefault(int(b["budget"]), []).append(k)
    n_vs_e = []
    for c, keys in by_c.items():
        if len(keys) < 2:
            continue
        orders = {}
        for k in keys:
            known = sorted((m[k], n) for n, m in means.items() if m[k] is not None)
            orders[k] = [n for _, n in known]
        n_vs_e.append(
            {"budget": c, "settings": keys, "means": {n: {k: means[n][k] for k in keys} for n in names},
             "orders": orders}
        )  # fmt: skip
    return {"budgets": list(budgets), "means": means, "n_vs_e": n_vs_e}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The content of summary.json: per downstream task and budget key, the numbers described above.

    Returns:
        {"n_rows", "status_counts", "excluded": [{upstream, downstream, budget, seed, status, reason, error}],
         "tasks": {downstream: {"metric", "unit", "csi_units", "scratch", "budgets": {key: {...}},
         "vs_budget", "verdict"}}}
    """
    out: dict[str, Any] = {
        "n_rows": len(rows),
        "status_counts": dict(Counter(str(r.get("status")) for r in rows)),
        "excluded": [],
        "tasks": {},
    }
    for down in dict.fromkeys(r["downstream"] for r in rows):
        sub = [r for r in rows if r["downstream"] == down]
        metric = Counter(r.get("metric") for r in sub if r.get("metric")).most_common(1)
        metric_name = metric[0][0] if metric else ""
        for r in sub:
            why = _why_excluded(r, metric_name)
            if why is not None:
                scratch_row = r.get("kind") == SCRATCH or r["upstream"] == SCRATCH
                out["excluded"].append(
                    {
                        "upstream": r["upstream"],
                        "downstream": down,
                        "budget": None if scratch_row else budget_key(r.get("n_samples"), r.get("epochs")),
                        "seed": r.get("seed"),
                        "status": r.get("status"),
                        "reason": why,
                        "error": r.get("error"),
                    }
                )
        scratch_rows = [r for r in sub if r.get("kind") == SCRATCH or r["upstream"] == SCRATCH]
        ok = sorted((r for r in scratch_rows if _why_excluded(r, metric_name) is None), key=lambda r: r["seed"])
        status = Counter(r.get("status") for r in scratch_rows)
        scratch = {
            **spread([float(r["value"]) for r in ok]),
            "values": [float(r["value"]) for r in ok],
            "seeds": [r["seed"] for r in ok],
            "failed": status.get("failed", 0),
            "pending": status.get("pending", 0),
            "excluded": len(scratch_rows) - len(ok),
        }
        pre = [r for r in sub if r not in scratch_rows]
        keys = sorted(
            {(r.get("budget") or 0, r.get("n_samples") or 0, r.get("epochs") or 0) for r in pre},
        )
        budgets = {}
        for _, n, e in keys:
            brows = [r for r in pre if (r.get("n_samples") or 0, r.get("epochs") or 0) == (n, e)]
            budgets[budget_key(brows[0].get("n_samples"), brows[0].get("epochs"))] = _budget_summary(
                brows, metric_name, scratch["mean"], pre
            )
        task = {
            "metric": metric_name,
            "unit": metric_unit(metric_name),
            "csi_units": next((r["csi_units"] for r in sub if r.get("csi_units")), ""),
            "scratch": scratch,
            "budgets": budgets,
            "vs_budget": _vs_budget(budgets),
            "out_of_distribution": any(r.get("out_of_distribution") for r in sub),
            "uncovered_by_all": next((r["uncovered_by_all"] for r in sub if r.get("uncovered_by_all")), ""),
        }
        task["verdict"] = verdict({"downstream": down, **task})
        out["tasks"][down] = task
    out["measures"] = measure_ranking(out["tasks"])
    return out


def measure_ranking(tasks: dict[str, Any]) -> list[dict[str, Any]]:
    """Every measure's Spearman (all candidates) per task and budget, their mean, and in how many of them the
    measure predicted the order (rho > 0) and significantly so (p < ALPHA); best mean first."""
    per: dict[str, dict[str, Any]] = {}
    for down, task in tasks.items():
        for key, b in task["budgets"].items():
            for m in b["measures"]:
                rho = m["spearman"]
                entry = per.setdefault(m["measure"], {"measure": m["measure"], "cases": {}})
                entry["cases"][f"{down} {key}"] = {"rho": rho["statistic"], "p": rho["p_value"], "n": m["n"]}
    out = []
    for entry in per.values():
        rhos = [c["rho"] for c in entry["cases"].values() if c["rho"] is not None]
        entry["mean_rho"] = float(np.mean(rhos)) if rhos else None
        entry["positive"] = sum(r > 0 for r in rhos)
        entry["significant"] = sum(
            1 for c in entry["cases"].values() if c["rho"] is not None and c["rho"] > 0 and c["p"] < ALPHA
        )
        entry["n_cases"] = len(rhos)
        out.append(entry)
    return sorted(out, key=lambda e: -(e["mean_rho"] if e["mean_rho"] is not None else -2.0))


# ----- the verdict paragraph ---------------------------------------------------------------------------------


def _pm(c: dict[str, Any], unit: str) -> str:
    return f"{pm(c['mean'], c['std'])} {unit}".rstrip() + f" (n={c['n']})"


def _corr_text(corr: dict[str, Any], label: str, note: str = "") -> str:
    rho, tau = corr["spearman"], corr["kendall"]
    if rho["statistic"] is None:
        return f"{label}{'n' if label else 'N'}o rank correlation ({rho['reason']})."
    how = (
        "exact permutation test" if rho["exact"] else f"Monte-Carlo permutation test, {rho['n_permutations']} pairings"
    )
    text = (
        f"{label}Spearman {rho['statistic']:.2f} (p = {rho['p_value']:.2g}), Kendall {tau['statistic']:.2f} "
        f"(p = {tau['p_value']:.2g}), {corr['n']} candidates, {how}" + (note if note else ".")
    )
    p = min(rho["p_value"], tau["p_value"])
    if rho["exact"] and rho["min_p"] is not None and rho["min_p"] >= ALPHA:
        text += (
            f" With {corr['n']} candidates even a perfect ranking gives p = {rho['min_p']:.2g}, so these p-values"
            f" cannot show an association at {ALPHA}."
        )
    elif p >= ALPHA:
        text += f" p >= {ALPHA}: the agreement could be chance with {corr['n']} candidates."
    else:
        text += f" p < {ALPHA} on {corr['n']} candidates (one grid, not independent replications)."
    return text


def _csi_rank(c: dict[str, Any]) -> str:
    return "no CSI" if c["csi"] is None else f"CSI {fmt(c['csi'])}, {ordinal(c['rank_csi'])} by CSI"


def _budget_verdict(b: dict[str, Any], scratch: dict[str, Any], unit: str) -> list[str]:
    cands = {c["name"]: c for c in b["candidates"]}
    out: list[str] = []
    if b["lowest_csi"] is None:
        out.append("No candidate has a CSI: nothing to judge.")
    low = cands.get(b["lowest_csi"] or "")
    best = cands.get(b["best"] or "")
    if low is not None and best is None:
        out.append(f"CSI ranked {low['name']} ({fmt(low['csi'])}) first, but no candidate has a finished run.")
    elif low is not None and low["mean"] is None:
        out.append(
            f"CSI ranked {low['name']} ({fmt(low['csi'])}) first, but none of its runs finished "
            f"({low['failed']} failed, {low['pending']} pending); best was {best['name']}: {_pm(best, unit)}."
        )
    elif low is not None and best is not None:
        if b["lowest_csi_was_best"]:
            out.append(f"CSI ranked {low['name']} ({fmt(low['csi'])}) first and it was best: {_pm(low, unit)}.")
        else:
            out.append(
                f"CSI ranked {low['name']} ({fmt(low['csi'])}) first, but it came {ordinal(low['rank_metric'])} of "
                f"{b['n_ranked']}: {_pm(low, unit)}; best was {best['name']} ({_csi_rank(best)}): {_pm(best, unit)}."
            )
    if best is not None and (best.get("n") or 0) >= 2:
        tied = [
            c["name"]
            for c in b["candidates"]
            if c is not best and (c.get("n") or 0) >= 2 and c["min"] <= best["max"] and best["min"] <= c["max"]
        ]
        if tied:
            others = f"that of {tied[0]}" if len(tied) == 1 else f"those of {', '.join(tied[:-1])} and {tied[-1]}"
            out.append(
                f"The seed range of {best['name']} overlaps {others}: these seeds do not tell them apart, so which "
                "of them is best is not resolved."
            )
    if best is not None and scratch["mean"] is not None:
        gain = "" if best["gain"] is None else f", gain {100 * best['gain']:.1f} %"
        verb = "beat" if best["mean"] < scratch["mean"] else "did not beat"
        out.append(f"{best['name']} {verb} scratch {_pm(scratch, unit)}{gain}.")
    elif best is not None:
        out.append("No scratch baseline finished: no gain to report.")
    out.append(_corr_text(b["correlation"]["all"], "", "; positive = lower CSI went with lower error."))
    singles = b["correlation"]["singles"]
    if singles["candidates"] != b["correlation"]["all"]["candidates"] and singles["n"] >= 3:
        out.append(_corr_text(singles, "Single datasets only: "))
    if b["csi_ties"]:
        pairs = ", ".join(f"{a}/{c}" for a, c in b["csi_ties"])
        out.append(f"CSI intervals overlap for {pairs}: their CSI order is not resolved.")
    for f in b["fig4"]:
        better = "worse" if f["difference"] > 0 else "better"
        overlap = "overlap" if f["seed_spreads_overlap"] else "do not overlap"
        out.append(
            f"Fig. 4 check: mixture {f['mixture']} {fmt(f['mixture_mean'])} vs {f['single']} alone "
            f"{fmt(f['single_mean'])} {unit}: the mixture is {better} by {fmt(abs(f['difference']))} {unit}; "
            f"seed ranges {overlap}."
        )
    n_failed = sum(c["failed"] for c in b["candidates"])
    n_other = sum(c["excluded"] - c["failed"] for c in b["candidates"])
    if n_failed or n_other:
        out.append(f"Excluded: {n_failed} failed and {n_other} pending or value-less runs.")
    return out


def verdict(task: dict[str, Any]) -> str:
    """One paragraph in numbers: where the CSI ranking predicted the finetuning ranking and where not."""
    unit = task.get("unit", "")
    parts: list[str] = []
    if task.get("downstream"):
        parts.append(f"Downstream {task['downstream']} ({task['metric']}, lower is better).")
    several = len(task["budgets"]) > 1
    for key, b in task["budgets"].items():
        lines = _budget_verdict(b, task["scratch"], unit)
        parts.append((f"At {key}: " if several else "") + " ".join(lines))
    if not task["budgets"]:
        parts.append("No pretrained candidate in the grid.")
    vs = task.get("vs_budget")
    for g in (vs or {}).get("n_vs_e", []):
        orders = {k: " < ".join(v) for k, v in g["orders"].items()}
        same = len(set(orders.values())) == 1
        text = "; ".join(f"{k}: {v}" for k, v in orders.items())
        parts.append(f"Equal budget C={g['budget']}: {text} ({'same' if same else 'different'} order).")
    if task["scratch"]["excluded"]:
        sc = task["scratch"]
        parts.append(f"Scratch: {sc['excluded']} run(s) excluded ({sc['failed']} failed, {sc['pending']} pending).")
    return " ".join(parts)
