"""Experiment outputs: results.csv / results.json, report.md with its figures, and the terminal summary.

results.csv has the columns of `COLUMNS` first, then every test-metric key of finetuning sorted by name; an
empty cell is None. report.md has, per downstream task, the CSI table, per budget the metric table (seed
mean ± std with the from-scratch baseline), the rank correlations and the verdict paragraph of
atomsift.experiment.summary, with the figures of DIR/figures/ embedded. Every number is printed by
`summary.fmt`, so report.md, the terminal and the verdict show the same digits.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from atomsift.csi.report import MEASURE_COLUMNS, use_log_axis
from atomsift.experiment.summary import ALPHA, fmt, pm
from atomsift.settings import write_text_atomic

COLUMNS = (
    "upstream",
    "kind",
    "members",
    "downstream",
    "n_samples",
    "epochs",
    "budget",
    "seed",
    "csi",
    "ci_low",
    "ci_high",
    "csi_units",
    *MEASURE_COLUMNS,
    "out_of_distribution",
    "uncovered_by_all",
    "metric",
    "value",
    "status",
    "error",
    "pretrain_dir",
    "finetune_dir",
    "pretrain_wall_s",
    "finetune_wall_s",
)
LOG_SPAN = 20.0  # a CSI axis is logarithmic when the largest positive value exceeds the smallest 20x


def write_results(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """results.csv (columns `COLUMNS`, then the other keys sorted; None -> empty) and results.json, atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = sorted({k for r in rows for k in r} - set(COLUMNS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*COLUMNS, *extra], lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    paths = {"csv": out_dir / "results.csv", "json": out_dir / "results.json"}
    write_text_atomic(paths["csv"], buf.getvalue())
    write_text_atomic(paths["json"], json.dumps(rows, indent=2) + "\n")
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _log_axis(values: list[float | None]) -> bool:
    return use_log_axis(values, LOG_SPAN)


def _gain(c: dict[str, Any]) -> str:
    return "-" if c.get("gain") is None else f"{100 * c['gain']:.1f} %"


def _csi_candidates(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Each candidate once (CSI does not depend on the budget), lowest CSI first."""
    seen: dict[str, dict[str, Any]] = {}
    for b in task["budgets"].values():
        for c in b["candidates"]:
            if c["name"] not in seen or seen[c["name"]]["csi"] is None:
                seen[c["name"]] = c
    return sorted(seen.values(), key=lambda c: (c["csi"] is None, c["csi"] or 0.0, c["name"]))


# ----- figures -----------------------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


def _csi_figure(down: str, task: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    cands = [c for c in _csi_candidates(task) if c["csi"] is not None]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(cands) + 2), 3.8))
    vals = [c["csi"] for c in cands]
    lo = [max(c["csi"] - c["ci_low"], 0.0) if c["ci_low"] is not None else 0.0 for c in cands]
    hi = [max(c["ci_high"] - c["csi"], 0.0) if c["ci_high"] is not None else 0.0 for c in cands]
    colors = ["tab:orange" if c["kind"] == "mixture" else "tab:blue" for c in cands]
    log = _log_axis(vals)
    if log:  # a log axis cannot draw down to 0: bars and bars' lower errors stop at a floor below every value
        floor = min(v for v in vals + [c["ci_low"] or math.inf for c in cands] if v and v > 0) / 3
        lo = [min(e, v - floor) if v > 0 else 0.0 for v, e in zip(vals, lo, strict=True)]
        vals = [max(v, floor) for v in vals]
    ax.bar(range(len(cands)), vals, color=colors)
    for i, c in enumerate(cands):  # error bars only where an interval exists; the value above each bar
        if c["ci_low"] is not None and c["ci_high"] is not None:
            ax.errorbar(i, vals[i], yerr=[[lo[i]], [hi[i]]], color="black", capsize=3)
        top = vals[i] + hi[i]
        ax.annotate(fmt(c["csi"]), (i, top), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)
    ax.set_xticks(range(len(cands)), [c["name"] for c in cands], rotation=20, ha="right")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
    ax.set_ylabel(f"CSI [{task['csi_units'] or 'feature units'}]" + (", log scale" if log else ""), fontsize=8)
    legend = "; orange = mixture" if any(c["kind"] == "mixture" for c in cands) else ""
    ax.set_title(f"CSI to {down} (lower = closer{legend})", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def _metric_figure(down: str, key: str, b: dict[str, Any], scratch: dict[str, Any], unit: str, path: Path) -> Path:
    plt = _plt()
    cands = [c for c in b["candidates"] if c["mean"] is not None]
    bars = [*cands, {"name": "scratch", "kind": "scratch", **scratch}] if scratch["mean"] is not None else cands
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(bars) + 2), 3.8))
    colors = {"dataset": "tab:blue", "mixture": "tab:orange", "scratch": "tab:gray"}
    for i, c in enumerate(bars):
        ax.bar(i, c["mean"], color=colors.get(c["kind"], "tab:blue"), alpha=0.6)
        if c["std"] is not None:
            ax.errorbar(i, c["mean"], yerr=c["std"], color="black", capsize=4)
        ax.plot([i] * len(c["values"]), c["values"], "o", color="black", markersize=3)
    ax.set_xticks(range(len(bars)), [c["name"] for c in bars], rotation=20, ha="right")
    ax.set_ylabel(f"{b['metric']}" + (f" [{unit}]" if unit else ""), fontsize=8)
    ax.set_title(f"{down}, {key}: seed mean ± std, dots = seeds (lower = better)", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def _corr_label(corr: dict[str, Any]) -> str:
    rho, tau = corr["spearman"], corr["kendall"]
    if rho["statistic"] is None:
        return f"no correlation: {rho['reason']}"
    test = "exact" if rho["exact"] else f"MC {rho['n_permutations']}"
    return (
        f"Spearman {rho['statistic']:.2f} (p={rho['p_value']:.2g}), Kendall {tau['statistic']:.2f} "
        f"(p={tau['p_value']:.2g}), n={corr['n']}, {test}"
    )


def _scatter_figure(
    down: str, key: str, b: dict[str, Any], unit: str, path: Path, scratch: dict[str, Any] | None = None
) -> Path:
    plt = _plt()
    cands = [c for c in b["candidates"] if c["mean"] is not None and c["csi"] is not None]
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for c in cands:
        color = "tab:orange" if c["kind"] == "mixture" else "tab:blue"
        ax.errorbar(c["csi"], c["mean"], yerr=c["std"] or 0.0, fmt="o", color=color, capsize=3)
    if _log_axis([c["csi"] for c in cands]):
        ax.set_xscale("log")
    if scratch and scratch.get("mean") is not None:  # in a legend: a label on the line met the points
        ax.axhline(scratch["mean"], color="tab:gray", linestyle="--", linewidth=1, label="scratch (no pretraining)")
        ax.legend(fontsize=8, frameon=False, loc="best")
    ax.set_xlabel("CSI (lower = closer)", fontsize=9)
    ax.set_ylabel(f"{b['metric']}" + (f" [{unit}]" if unit else ""), fontsize=8)
    ax.set_title(f"{down}, {key}\n{_corr_label(b['correlation']['all'])}", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    label_points(ax, [(c["csi"], c["mean"]) for c in cands], [c["name"] for c in cands])
    return _save(fig, path)


def label_points(ax: Any, xy: list[tuple[float, float]], names: list[str], fontsize: float = 8.0) -> list[float]:
    """Name each point (data coordinates) just right of it; a label that would overlap one already placed
    (their extents estimated from the text length) moves up until it is clear. Call after the axes' scales
    and contents are final. Returns the labels' vertical offsets from their points (points, 1/72 inch)."""
    fig = ax.figure
    fig.tight_layout()  # _save lays out again; the points hardly move after this first layout
    ax.autoscale_view()
    per_pt = fig.dpi / 72.0
    at = [(float(x) / per_pt, float(y) / per_pt) for x, y in ax.transData.transform(xy)] if xy else []
    height, width = 1.25 * fontsize, 0.62 * fontsize  # a line, a character (points)
    placed: list[tuple[float, float, float]] = []  # (left, right, centre height) of each label, in points
    offsets = [0.0] * len(names)
    for i in sorted(range(len(names)), key=lambda i: at[i][1]):
        left = at[i][0] + 5.0
        right, y = left + width * len(names[i]), at[i][1]
        for a, b, h in sorted(placed, key=lambda p: p[2]):
            if left < b and a < right and abs(y - h) < height:
                y = h + height
        placed.append((left, right, y))
        offsets[i] = y - at[i][1]
        ax.annotate(names[i], xy[i], xytext=(5.0, offsets[i]), textcoords="offset points", va="center",
                    fontsize=fontsize, bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})  # fmt: skip
    return offsets


def _budget_figure(down: str, task: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    vs = task["vs_budget"]
    keys = vs["budgets"]
    fig, ax = plt.subplots(figsize=(max(5.5, 1.3 * len(keys) + 3), 4.0))
    for name, means in vs["means"].items():
        ys = [math.nan if means[k] is None else means[k] for k in keys]
        ax.plot(range(len(keys)), ys, "o-", label=name)
    if task["scratch"]["mean"] is not None:
        ax.axhline(task["scratch"]["mean"], color="tab:gray", linestyle="--", label="scratch")
    ax.set_xticks(range(len(keys)), keys, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel(task["metric"] + (f" [{task['unit']}]" if task["unit"] else ""), fontsize=8)
    ax.set_title(f"{down}: seed-mean metric per pretraining budget", fontsize=10)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def _fig4_figure(down: str, key: str, b: dict[str, Any], unit: str, path: Path) -> Path:
    plt = _plt()
    by_name = {c["name"]: c for c in b["candidates"]}
    names = [b["fig4"][0]["single"], *(f["mixture"] for f in b["fig4"])]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(names) + 2), 3.8))
    for i, name in enumerate(names):
        c = by_name[name]
        ax.bar(i, c["mean"], color="tab:blue" if i == 0 else "tab:orange", alpha=0.6)
        if c["std"] is not None:
            ax.errorbar(i, c["mean"], yerr=c["std"], color="black", capsize=4)
        ax.plot([i] * len(c["values"]), c["values"], "o", color="black", markersize=3)
    ax.set_xticks(range(len(names)), names, rotation=15, ha="right")
    ax.set_ylabel(b["metric"] + (f" [{unit}]" if unit else ""), fontsize=8)
    ax.set_title(f"{down}, {key}: best single dataset vs mixtures with it (Fig. 4)", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


# ----- report.md ---------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _test_text(corr: dict[str, Any]) -> str:
    if corr["exact"]:
        return f"exact ({corr['n_permutations']} pairings)"
    return f"Monte-Carlo ({corr['n_permutations']} pairings)"


def _corr_rows(b: dict[str, Any]) -> list[list[str]]:
    out = []
    for label, corr in (("all candidates", b["correlation"]["all"]), ("single datasets", b["correlation"]["singles"])):
        rho, tau = corr["spearman"], corr["kendall"]
        if rho["statistic"] is None:
            out.append([label, str(corr["n"]), "-", "-", "-", "-", rho["reason"]])
            continue
        out.append(
            [label, str(corr["n"]), f"{rho['statistic']:.3f}", f"{rho['p_value']:.3g}", f"{tau['statistic']:.3f}",
             f"{tau['p_value']:.3g}", _test_text(rho)]
        )  # fmt: skip
    return out


def task_warnings(down: str, task: dict[str, Any]) -> list[str]:
    """Out of distribution and elements no upstream set has, for one task."""
    out = []
    if task.get("out_of_distribution"):
        out.append(
            f"'{down}' is out of distribution (its nearest upstream set is farther than the median distance between "
            "the upstream sets): the ranking is unreliable."
        )
    if task.get("uncovered_by_all"):
        out.append(
            f"no upstream set has these elements of '{down}' (share of its atoms): {task['uncovered_by_all']}; their "
            "embeddings never train in pretraining."
        )
    return out


def _measure_section(ranking: list[dict[str, Any]]) -> list[str]:
    """Which measure predicted finetuning: Spearman per task and budget, the mean, and counts."""
    if len(ranking) < 2:
        return []
    cases = list(dict.fromkeys(k for e in ranking for k in e["cases"]))
    md = [
        "## Which measure predicted finetuning",
        "",
        "Spearman between each measure (oriented: positive = the measure ranked the candidates in the order "
        "finetuning did) and the seed-mean metric, all candidates, per task and budget; p-values in brackets "
        f"(permutation tests). 'rho > 0' counts the cases where it leaned the right way, however weakly; "
        f"'significant' those with p < {ALPHA} too.",
        "",
    ]
    rows = []
    for e in ranking:
        cells = []
        for k in cases:
            c = e["cases"].get(k)
            cells.append("-" if c is None or c["rho"] is None else f"{c['rho']:.2f} ({c['p']:.2g})")
        rows.append([e["measure"], *cells, fmt(e["mean_rho"]), f"{e['positive']}/{e['n_cases']}",
                     f"{e['significant']}/{e['n_cases']}"])  # fmt: skip
    return md + _table(["measure", *cases, "mean rho", "rho > 0", "significant"], rows)


def write_report(rows: list[dict[str, Any]], summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """DIR/report.md and its PNG figures under DIR/figures/; returns {"report": path, "<figure id>": path}."""
    out_dir = Path(out_dir)
    figs = out_dir / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    counts = ", ".join(f"{v} {k}" for k, v in summary["status_counts"].items())
    md = [
        "# Experiment report",
        "",
        f"{len(rows)} result rows ({counts}). Lower metric is better. CSI ranks candidates from the lowest "
        "(closest to the downstream data) up; seed statistics use ddof=1. Failed, pending and value-less runs "
        "are excluded from every number and listed at the end.",
        "",
    ]
    md += _measure_section(summary.get("measures") or [])
    for down, task in summary["tasks"].items():
        unit, d = task["unit"], _slug(down)
        md += [f"## Downstream `{down}`", "", f"Metric: `{task['metric']}` ({unit or 'no unit'}), lower is better.", ""]
        md += [f"**Warning:** {w}" for w in task_warnings(down, task)] + ([""] if task_warnings(down, task) else [])
        md += ["### CSI", ""]
        md += _table(
            ["CSI rank", "upstream", "kind", "members", f"CSI [{task['csi_units']}]", "interval"],
            [[str(c.get("rank_csi") or "-"), c["name"], str(c["kind"]), c["members"], fmt(c["csi"]),
              "-" if c["ci_low"] is None else f"[{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]"]
             for c in _csi_candidates(task)],
        )  # fmt: skip
        paths[f"csi:{down}"] = _csi_figure(down, task, figs / f"csi_{d}.png")
        md += [f"![CSI to {down}](figures/csi_{d}.png)", ""]
        s = task["scratch"]
        for key, b in task["budgets"].items():
            k = _slug(key)
            md += [f"### {key} (C = {b['budget']} structure passes)", ""]
            table = [
                [str(c["rank_csi"] or "-"), c["name"], fmt(c["csi"]), pm(c["mean"], c["std"]), str(c["n"]),
                 str(c["rank_metric"] or "-"), _gain(c), fmt(c["gain_abs"]), str(c["failed"]), str(c["excluded"])]
                for c in b["candidates"]
            ]  # fmt: skip
            table.append(["-", "scratch", "-", pm(s["mean"], s["std"]), str(s["n"]), "-", "-", "-", str(s["failed"]),
                          str(s["excluded"])])  # fmt: skip
            md += _table(
                ["CSI rank", "upstream", "CSI", f"mean ± std [{unit}]", "seeds", "metric rank", "gain", "gain abs",
                 "failed", "excluded"],
                table,
            )  # fmt: skip
            paths[f"metric:{down}:{key}"] = _metric_figure(down, key, b, s, unit, figs / f"metric_{d}_{k}.png")
            md += [f"![metric, {down}, {key}](figures/metric_{d}_{k}.png)", ""]
            md += _table(["set", "n", "Spearman", "p", "Kendall tau-b", "p", "test"], _corr_rows(b))
            if len(b.get("measures") or []) > 1:
                md += ["Every measure against the metric (all candidates; oriented so that a positive correlation "
                       "means the measure ranked them in the order finetuning did):", ""]  # fmt: skip
                md += _table(
                    ["measure", "better", "n", "Spearman", "p", "Kendall tau-b", "p"],
                    [[m["measure"], m["better"], str(m["n"]), fmt(m["spearman"]["statistic"]),
                      fmt(m["spearman"]["p_value"]), fmt(m["kendall"]["statistic"]), fmt(m["kendall"]["p_value"])]
                     for m in b["measures"]],
                )  # fmt: skip
                held = [m for m in MEASURE_COLUMNS if any(m in c.get("measures", {}) for c in b["candidates"])]
                md += _table(
                    ["upstream", *held],
                    [[c["name"], *(fmt(c.get("measures", {}).get(m)) for m in held)] for c in b["candidates"]],
                )
            paths[f"scatter:{down}:{key}"] = _scatter_figure(down, key, b, unit, figs / f"scatter_{d}_{k}.png", s)
            md += [f"![CSI vs metric, {down}, {key}](figures/scatter_{d}_{k}.png)", ""]
            if b["csi_ties"]:
                md += ["CSI intervals overlap: " + ", ".join(f"{a}/{c}" for a, c in b["csi_ties"]), ""]
            if b["fig4"]:
                md += ["Fig. 4 comparison (best single dataset alone vs each mixture containing it):", ""]
                md += _table(
                    ["single", "mean ± std", "mixture", "mean ± std", "difference", "seed ranges overlap"],
                    [[f["single"], pm(f["single_mean"], f["single_std"]), f["mixture"],
                      pm(f["mixture_mean"], f["mixture_std"]), fmt(f["difference"]),
                      "yes" if f["seed_spreads_overlap"] else "no"] for f in b["fig4"]],
                )  # fmt: skip
                paths[f"fig4:{down}:{key}"] = _fig4_figure(down, key, b, unit, figs / f"fig4_{d}_{k}.png")
                md += [f"![Fig. 4 comparison, {down}, {key}](figures/fig4_{d}_{k}.png)", ""]
        vs = task["vs_budget"]
        if vs:
            md += ["### Metric vs budget", ""]
            md += _table(
                ["upstream", *vs["budgets"]], [[n, *(fmt(m[k]) for k in vs["budgets"])] for n, m in vs["means"].items()]
            )
            paths[f"budget:{down}"] = _budget_figure(down, task, figs / f"budget_{d}.png")
            md += [f"![metric vs budget, {down}](figures/budget_{d}.png)", ""]
        md += ["### Verdict", "", task["verdict"], ""]
    if summary["excluded"]:
        md += ["## Excluded runs", ""]
        md += _table(
            ["upstream", "downstream", "budget", "seed", "status", "reason", "error"],
            [[e["upstream"], e["downstream"], e["budget"] or "-", str(e["seed"]), str(e["status"]), e["reason"],
              (e["error"] or "-").replace("|", "/").replace("\n", " ")] for e in summary["excluded"]],
        )  # fmt: skip
    paths["report"] = out_dir / "report.md"
    write_text_atomic(paths["report"], "\n".join(md))
    return paths


# ----- terminal ----------------------------------------------------------------------------------------------


def print_summary(
    summary: dict[str, Any], console: Console | None = None, paths: dict[str, Path] | None = None
) -> None:
    """Rich tables per downstream task (CSI, metric per budget, correlations), the verdicts and where files are."""
    console = console or Console()
    for down, task in summary["tasks"].items():
        unit = task["unit"]
        t = Table(title=f"CSI to '{down}' (lower = closer)", title_justify="left")
        for col in ("rank", "upstream", "kind", "CSI", "interval"):
            t.add_column(col, justify="left" if col in ("upstream", "kind") else "right")
        for c in _csi_candidates(task):
            interval = "-" if c["ci_low"] is None else f"[{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]"
            t.add_row(str(c.get("rank_csi") or "-"), c["name"], str(c["kind"]), fmt(c["csi"]), interval)
        console.print(t)
        s = task["scratch"]
        for key, b in task["budgets"].items():
            t = Table(title=f"'{down}', {key}: {task['metric']} (lower = better)", title_justify="left")
            for col in ("CSI rank", "upstream", f"mean ± std [{unit}]", "seeds", "rank", "gain", "failed"):
                t.add_column(col, justify="left" if col == "upstream" else "right")
            for c in b["candidates"]:
                t.add_row(str(c["rank_csi"] or "-"), c["name"], pm(c["mean"], c["std"]), str(c["n"]),
                          str(c["rank_metric"] or "-"), _gain(c), str(c["failed"]))  # fmt: skip
            t.add_row("-", "scratch", pm(s["mean"], s["std"]), str(s["n"]), "-", "-", str(s["failed"]))
            console.print(t)
            c = Table(
                title=f"rank correlation of CSI with the seed-mean metric ('{down}', {key})", title_justify="left"
            )
            for col in ("set", "n", "Spearman", "p", "Kendall", "p", "test"):
                c.add_column(col, justify="left" if col in ("set", "test") else "right")
            for r in _corr_rows(b):
                c.add_row(*r)
            console.print(c)
        console.print(task["verdict"], markup=False, highlight=False)
        console.print()
    if summary["excluded"]:
        console.print(f"{len(summary['excluded'])} run(s) excluded (failed, pending or without a value).")
    if paths:
        if "report" in paths:
            folder = paths["report"].parent
            console.print(
                f"report: {paths['report']} (which measure predicted the finetuned errors, with figures); every "
                f"row: {folder / 'results.csv'}; the numbers: {folder / 'summary.json'}",
                markup=False,
                highlight=False,
            )
        figs = sorted({str(p.parent) for k, p in paths.items() if ":" in k})
        if figs:
            console.print(f"figures: {', '.join(figs)}", markup=False, highlight=False)
