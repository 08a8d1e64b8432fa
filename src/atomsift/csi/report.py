"""CSI outputs: ranked tables on the terminal, csi.json, csi.csv and the grouped bar chart."""

from __future__ import annotations

import csv
import json
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
)


def print_tables(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """One table per downstream set, lowest CSI (best aligned) first."""
    console = console or Console()
    for down in dict.fromkeys(r["downstream"] for r in rows):
        sub = sorted((r for r in rows if r["downstream"] == down), key=lambda r: r["rank"])
        table = Table(
            title=f"CSI to downstream '{down}' (lower = closer; {sub[0]['extractor']}, {sub[0]['aggregation']})",
            title_justify="left",
        )
        for col in ("rank", "upstream", "CSI", "interval", "observations (up)", "structures (up)"):
            table.add_column(col, justify="left" if col == "upstream" else "right")
        for r in sub:
            interval = "-" if r["ci_low"] is None else f"[{r['ci_low']:.4g}, {r['ci_high']:.4g}]"
            table.add_row(
                str(r["rank"]),
                r["upstream"],
                f"{r['csi']:.4g}",
                interval,
                str(r["n_obs_upstream"]),
                str(r["n_structures_upstream"]),
            )
        console.print(table)


def write_outputs(rows: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """csi.json, csi.csv and csi_bars.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "csi.json", "csv": out / "csi.csv", "png": out / "csi_bars.png"}
    paths["json"].write_text(json.dumps(rows, indent=2))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    bar_chart(rows, paths["png"])
    return paths


def bar_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: downstream tasks on the x axis, one bar per upstream dataset, bootstrap error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    downs = list(dict.fromkeys(r["downstream"] for r in rows))
    ups = list(dict.fromkeys(r["upstream"] for r in rows))
    lookup = {(r["downstream"], r["upstream"]): r for r in rows}
    width = 0.8 / len(ups)
    x = np.arange(len(downs))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(downs) * max(1, len(ups) / 3)), 4.0))
    for k, up in enumerate(ups):
        vals, lo, hi = [], [], []
        for down in downs:
            r = lookup.get((down, up))
            v = np.nan if r is None else r["csi"]
            vals.append(v)
            lo.append(0.0 if r is None or r["ci_low"] is None else max(v - r["ci_low"], 0.0))
            hi.append(0.0 if r is None or r["ci_high"] is None else max(r["ci_high"] - v, 0.0))
        bars = ax.bar(x + (k - (len(ups) - 1) / 2) * width, vals, width, yerr=[lo, hi], capsize=3, label=up)
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in vals], padding=2, fontsize=7)
    ax.set_xticks(x, downs)
    ax.set_xlabel("downstream dataset")
    extractor, aggregation = rows[0]["extractor"], rows[0]["aggregation"]
    ax.set_ylabel(f"CSI ({extractor}, {aggregation})")
    ax.set_title("CSI per downstream set (lower = better aligned)", fontsize=10)
    ax.legend(title="upstream", fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
