"""`atomsift demo`: the main job on the bundled data (for now: the data overview)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for the demo's outputs."),
) -> None:
    """Read every bundled dataset and print one overview table (also saved as JSON)."""
    from atomsift.data import open_dataset
    from atomsift.data.bundled import DEMO_DATASETS
    from atomsift.data.stats import summarize

    console = Console() if Console().is_terminal else Console(width=160)
    table = Table(title="atomsift: bundled datasets", title_justify="left")
    for column in ("dataset", "format", "structures", "atoms", "elements", "periodic",
                   "E mean (eV)", "F rms (eV/A)", "classes"):
        table.add_column(column, justify="left" if column in ("dataset", "format", "elements") else "right")
    rows = []
    for name in DEMO_DATASETS:
        summary = summarize(open_dataset(f"bundled:{name}"), progress=True)
        summary["name"] = name
        rows.append(summary)
        table.add_row(
            f"bundled:{name}",
            summary["format"],
            str(summary["n_structures"]),
            str(summary["n_atoms_total"]),
            " ".join(summary["elements"]),
            f"{summary['n_periodic']}/{summary['n_structures']}",
            "-" if summary["energy_mean_eV"] is None else f"{summary['energy_mean_eV']:.3f}",
            "-" if summary["forces_rms_eV_per_A"] is None else f"{summary['forces_rms_eV_per_A']:.3f}",
            "-" if summary["n_classes"] is None else str(summary["n_classes"]),
        )
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_overview.json").write_text(json.dumps(rows, indent=2))
    console.print(f"saved {out / 'data_overview.json'}")
