"""`atomsift demo`: the main job on the bundled data (for now: the data overview)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for the demo's outputs."),
    csi: bool = typer.Option(True, "--csi/--no-csi", help="Also rank the bundled upstream sets by CSI."),
) -> None:
    """The main job on the bundled data: a data overview table, then CSI rankings with a bar chart."""
    from atomsift.cli.common import on_interrupt
    from atomsift.data import open_dataset
    from atomsift.data.bundled import DEMO_DATASETS
    from atomsift.data.stats import summarize
    from atomsift.settings import check_output_dir

    check_output_dir(out)  # a run folder: the demo reuses what matches inside it
    on_interrupt("nothing was kept yet (the data overview is written when it is complete); rerun the same command")

    console = Console() if Console().is_terminal else Console(width=160)
    table = Table(title="atomsift: bundled datasets", title_justify="left")
    for column in (
        "dataset",
        "format",
        "structures",
        "atoms",
        "elements",
        "periodic",
        "E mean (eV)",
        "F rms (eV/A)",
        "classes",
    ):
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
    (out / "data_overview.json").write_text(json.dumps(rows, indent=2))
    console.print(f"saved {out / 'data_overview.json'}")
    if csi:
        _demo_csi(out / "csi", console)


def _demo_csi(out: Path, console: Console) -> None:
    """CSI of the bundled upstream candidates to the bundled downstream sets (atomsift/configs/csi_demo.yaml)."""
    from atomsift.cli.csi import run_and_report
    from atomsift.csi.config import load_config

    config = demo_csi_config()
    console.print(f"\nCSI on the bundled data (settings: {config})")
    # the demo owns runs/demo: statistics cached by another atomsift version or settings are replaced, not refused
    run_and_report(load_config(config, {"recompute": True}), out, console)


def demo_csi_config() -> Path:
    """The packaged CSI settings of the demo (configs/csi_demo.yaml links to the same file)."""
    from importlib import resources

    return Path(str(resources.files("atomsift.configs") / "csi_demo.yaml"))
