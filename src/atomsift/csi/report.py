"""CSI outputs: ranked tables on the terminal, csi.json, csi.csv and the grouped bar chart.

csi.json is a list of rows, one per (upstream, downstream) pair (the keys of `COLUMNS`, plus
`extractor_load_report` for checkpoint extractors). csi.csv has the same rows with the columns of `COLUMNS`;
dict-valued fields are written as their `summary` text. Every row names its extractor and `csi_units`, and
`comparable_within` says under which settings its CSI compares with other values: only within one extractor.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

COLUMNS = (
    "downstream",
    "upstream",
    "rank",
    "csi",
    "ci_low",
    "ci_high",
    "bootstrap_bias",
    "n_obs_upstream",
    "n_obs_downstream",
    "n_structures_upstream",
    "n_structures_downstream",
    "n_unique_upstream",
    "n_unique_downstream",
    "sampling_upstream",
    "sampling_downstream",
    "extractor",
    "aggregation",
    "n_total_upstream",
    "n_total_downstream",
    "same_dataset",
    "same_sample",
    "csi_units",
    "comparable_within",
    "confidence",
    "bootstrap",
    "extractor_load_report",
    "csi_element",
    "uncovered",
    "uncovered_elements",
    "precision",
    "recall",
    "coverage",
    "mmd",
    "diversity",
    "tied_with",
    "out_of_distribution",
    "ood_ratio",
    "upstream_median_csi",
    "uncovered_by_all",
    "bandwidth",
    "reservoir_rows_upstream",
)
MEASURE_COLUMNS = ("csi_element", "uncovered", "precision", "recall", "coverage", "mmd", "diversity")

REPEATS_REASON = "class balancing: classes smaller than their equal share of the sample repeat their structures"
LOG_SPAN = 100.0  # the chart's value axis is logarithmic when the largest positive CSI exceeds the smallest 100x


def sample_text(n_unique: int, n_total: int, n_draws: int) -> str:
    """'295 of 295' or '295 of 295 (10000 draws)' for a sample of `n_draws` draws of `n_unique` structures."""
    text = f"{n_unique} of {n_total}" if n_total else str(n_unique)
    return text + (f" ({n_draws} draws)" if n_draws > n_unique else "")


def interval_text(row: dict[str, Any]) -> str:
    """What the interval is, e.g. '95% bootstrap percentile interval (100 resamples of whole structures)'."""
    conf = row.get("confidence")
    pct = "" if conf is None else f"{100 * conf:g}% "
    n = row.get("bootstrap")
    reps = "" if n is None else f"{n} resamples of "
    return f"{pct}bootstrap percentile interval ({reps}whole structures, bias-shifted)"


def table_notes(rows: list[dict[str, Any]]) -> list[str]:
    """The caption lines of one downstream set's table: its sample, repeats, same-dataset pairs, units."""
    first = rows[0]
    down = first["downstream"]
    notes = [
        f"downstream '{down}': {first['sampling_downstream']} sample, "
        + sample_text(
            first["n_unique_downstream"], first.get("n_total_downstream", 0), first["n_structures_downstream"]
        )
        + f" structures, {first['n_obs_downstream']} observations"
    ]
    repeated = [r["upstream"] for r in rows if r["n_structures_upstream"] > r["n_unique_upstream"]]
    if first["n_structures_downstream"] > first["n_unique_downstream"]:
        repeated.append(f"downstream '{down}'")
    if repeated:
        notes.append(f"* {', '.join(repeated)}: drawn with repeats ({REPEATS_REASON})")
    for r in rows:
        if r.get("same_dataset"):
            if r.get("same_sample"):
                why = "identical samples, so CSI is 0 by construction"
            elif r["sampling_upstream"] != r["sampling_downstream"]:
                why = (
                    f"CSI measures only sampling differences ({r['sampling_upstream']} vs "
                    f"{r['sampling_downstream']} draws)"
                )
            else:
                why = "CSI measures only sampling noise (different random draws)"
            notes.append(f"note: upstream '{r['upstream']}' and downstream '{down}' are the same dataset; {why}")
    notes.append(
        f"CSI in {first.get('csi_units', 'squared feature units')} of {first['extractor']} "
        f"({first['aggregation']}); values compare only within one extractor"
    )
    if any(r["ci_low"] is not None for r in rows):
        notes.append("interval: " + interval_text(first))
    notes.extend(warning_lines(rows))
    load_report = first.get("extractor_load_report")
    if isinstance(load_report, dict) and load_report.get("summary"):
        notes.append(f"extractor weights: {load_report['summary']}")
    return notes


def print_tables(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """One table per downstream set, lowest CSI (best aligned) first, followed by its notes."""
    console = console or Console()
    for down in dict.fromkeys(r["downstream"] for r in rows):
        sub = sorted((r for r in rows if r["downstream"] == down), key=lambda r: r["rank"])
        table = Table(
            title=f"CSI to downstream '{down}' (lower = closer; extractor {sub[0]['extractor']}, "
            f"{sub[0]['aggregation']})",
            title_justify="left",
        )
        conf = sub[0].get("confidence")
        interval_col = "interval" if conf is None else f"{100 * conf:g}% interval"
        from atomsift.csi.measures import MEASURE_INFO

        extra = measure_columns(sub)
        labels = [f"{MEASURE_INFO[m].label} {'v' if MEASURE_INFO[m].better == 'lower' else '^'}" for m in extra]
        counts = () if extra else ("observations (up)",)  # with measures: in csi.json / csi.csv only (width)
        for col in ("rank", "upstream", "CSI", interval_col, *labels, *counts, "structures (up)"):
            table.add_column(col, justify="left" if col == "upstream" else "right")
        for r in sub:
            interval = "-" if r["ci_low"] is None else f"[{r['ci_low']:.4g}, {r['ci_high']:.4g}]"
            structures = f"{r['n_unique_upstream']} of {r['n_total_upstream']}" if r.get("n_total_upstream") else ""
            structures = structures or str(r["n_unique_upstream"])
            if r["n_structures_upstream"] > r["n_unique_upstream"]:
                structures += f" ({r['n_structures_upstream']} draws)*"
            table.add_row(
                str(r["rank"]) + ("=" if r.get("tied_with") else ""),
                r["upstream"] + (" (same dataset)" if r.get("same_dataset") else ""),
                f"{r['csi']:.4g}",
                interval,
                *[measure_text(r.get(m)) for m in extra],
                *([] if extra else [str(r["n_obs_upstream"])]),
                structures,
            )
        console.print(table)
        if extra:
            console.print("v: lower is better aligned, ^: higher is better (docs/measures.md)", highlight=False)
        for line in table_notes(sub):  # one line each (the console wraps only what is wider than itself)
            console.print(line, markup=False, highlight=False)


def warning_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One downstream set's warnings: out of distribution, tied candidates, elements no upstream set has."""
    first, lines = rows[0], []
    down = first["downstream"]
    if first.get("out_of_distribution"):
        lines.append(
            f"warning: '{down}' is out of distribution: the ranking is unreliable (its nearest upstream CSI is "
            f"{first['ood_ratio']:.3g}x the median CSI between the upstream sets)"
        )
    pairs: list[str] = []
    for i, r in enumerate(rows):  # each overlapping pair once, in table order
        later = [x["upstream"] for x in rows[i + 1 :] if x["upstream"] in (r.get("tied_with") or [])]
        pairs += [f"{r['upstream']}/{other}" for other in later]
    if pairs:
        lines.append("tied (CSI intervals overlap: not ranked against each other): " + ", ".join(pairs))
    notes = sorted({r["csi_element_note"] for r in rows if r.get("csi_element_note")})
    if notes:
        lines.append("per-element CSI not computed: " + "; ".join(notes))
    if first.get("uncovered_by_all"):
        lines.append(
            f"warning: no upstream set has these elements of '{down}' (share of its atoms; their embeddings never "
            f"train in pretraining): {first['uncovered_by_all']}"
        )
    return lines


def measure_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The measures beyond CSI that these rows hold."""
    return [m for m in MEASURE_COLUMNS if any(r.get(m) is not None for r in rows)]


def measure_text(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _csv_value(value: Any) -> Any:
    if isinstance(value, list):
        return "; ".join(map(str, value))
    if isinstance(value, dict):
        return value.get("summary", json.dumps(value, sort_keys=True))
    return value


def write_outputs(rows: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """csi.json (list of rows), csi.csv (columns `COLUMNS`) and csi_bars.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "csi.json", "csv": out / "csi.csv", "png": out / "csi_bars.png"}
    paths["json"].write_text(json.dumps(rows, indent=2))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in r.items()} for r in rows)
    bar_chart(rows, paths["png"])
    return paths


def use_log_axis(values: list[float | None], span: float = LOG_SPAN) -> bool:
    """True when the positive values span more than `span` (default two decades: a small bar would vanish on a
    linear axis)."""
    positive = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    return len(positive) >= 2 and max(positive) > span * min(positive)


def bar_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Save `bar_figure(rows)` as a PNG (150 dpi) at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = bar_figure(rows)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def bar_figure(rows: list[dict[str, Any]]) -> Any:
    """Grouped bars: downstream tasks on the x axis, one bar per upstream dataset, bootstrap error bars.

    The value axis is CSI in the extractor's units (log scale when values span more than two decades); a
    caption says what the error bars are and that values compare only within one extractor.

    Returns:
        the matplotlib Figure (one Axes); the caller closes it.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    downs = list(dict.fromkeys(r["downstream"] for r in rows))
    ups = list(dict.fromkeys(r["upstream"] for r in rows))
    lookup = {(r["downstream"], r["upstream"]): r for r in rows}
    log = use_log_axis([r["csi"] for r in rows])
    ends = [v for r in rows for v in (r["csi"], r["ci_low"], r["ci_high"]) if v is not None and v > 0]
    floor = min(ends) / 3 if log else 0.0  # a log axis starts below every positive value and interval end
    width = 0.8 / len(ups)
    x = np.arange(len(downs))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.8 * len(downs) * max(1, len(ups) / 3)), 4.6))
    for k, up in enumerate(ups):
        vals, lo, hi, labels = [], [], [], []
        for down in downs:
            r = lookup.get((down, up))
            v = np.nan if r is None else r["csi"]
            vals.append(v)
            lo.append(0.0 if r is None or r["ci_low"] is None else max(v - r["ci_low"], 0.0))
            hi.append(0.0 if r is None or r["ci_high"] is None else max(r["ci_high"] - v, 0.0))
            labels.append("" if r is None else f"{v:.3g}" + ("\n(same set)" if r.get("same_dataset") else ""))
        if log:  # a log axis cannot draw a bar or error bar down to 0: stop them at the axis floor
            shown = [floor if v == 0 else v for v in vals]  # a zero bar: labelled "0" at the floor
            lo = [min(e, sh - floor) if v > 0 else 0.0 for v, e, sh in zip(vals, lo, shown, strict=True)]
            hi = [max(v + e - sh, 0.0) if v >= 0 else 0.0 for v, e, sh in zip(vals, hi, shown, strict=True)]
        else:
            shown = vals
        xs = x + (k - (len(ups) - 1) / 2) * width
        ax.bar(xs, shown, width, yerr=[lo, hi], capsize=3, label=up, error_kw={"elinewidth": 1})
        for xi, top, err, text in zip(xs, shown, hi, labels, strict=True):
            if text:  # the value above its error bar, where the bar cannot hide it
                ax.annotate(
                    text,
                    (xi, top + err),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(x, downs)
    ax.set_xlabel("downstream dataset")
    first = rows[0]
    units = first.get("csi_units", "squared feature units")
    ax.set_ylabel(f"CSI [{units}]" + (", log scale" if log else ""), fontsize=9)
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
    ax.set_title(
        f"CSI per downstream set (lower = better aligned); extractor {first['extractor']}, {first['aggregation']}",
        fontsize=10,
    )
    ax.legend(title="upstream", fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    has_bars = any(r["ci_low"] is not None for r in rows)
    caption = ("error bars: " + interval_text(first) + "\n") if has_bars else "no error bars (bootstrap off)\n"
    caption += "CSI values compare only within one extractor"
    fig.text(0.01, 0.01, caption, fontsize=7, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig
