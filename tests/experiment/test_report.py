"""results.csv / results.json round trip, report.md with its figures, and the terminal summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from _rows import grid
from rich.console import Console

from atomsift.experiment.report import COLUMNS, print_summary, write_report, write_results
from atomsift.experiment.summary import fmt, pm, summarize

CANDS = {
    "organic": {"csi": {"d1": 10.2, "qm9": 5.0}, "ci": {"d1": (9.0, 11.0), "qm9": (4.0, 6.5)}},
    "acac": {"csi": {"d1": 3.0, "qm9": 50.0}},
    "oxides": {"csi": {"d1": 200.0, "qm9": 500.0}},
    "organic+oxides": {"kind": "mixture", "members": "organic+oxides", "csi": {"d1": 50.0, "qm9": 30.0}},
}
BASE = {"scratch": 88.0, "organic": 41.0, "acac": 60.0, "oxides": 70.0, "organic+oxides": 45.0}
PNG = b"\x89PNG\r\n\x1a\n"


def value(name: str, down: str, budget: tuple[int, int], seed: int) -> float:
    return BASE[name] + 1.7 * seed + budget[1] / 7 + (0.3 if down == "qm9" else 0.0)


def _rows(budgets=((500, 20),)):
    return grid(CANDS, value, downstreams=("d1", "qm9"), budgets=budgets, failed=[("acac", "d1", budgets[0], 2)])


def test_results_csv_and_json_round_trip(tmp_path: Path) -> None:
    rows = _rows()
    paths = write_results(rows, tmp_path)
    with open(paths["csv"], newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        back = list(reader)
    extra = sorted({k for r in rows for k in r} - set(COLUMNS))
    assert header == [*COLUMNS, *extra]
    assert "forces_mae_meV_per_A" in extra and "energy_mae_meV" in extra
    assert len(back) == len(rows)
    for r, b in zip(rows, back, strict=True):
        for k in header:
            v = r.get(k)
            assert b[k] == ("" if v is None else str(v)), (k, v, b[k])
            if isinstance(v, float):
                assert float(b[k]) == v  # floats survive exactly
    assert json.loads(paths["json"].read_text()) == rows
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_report_files_figures_and_numbers(tmp_path: Path) -> None:
    rows = _rows()
    summary = summarize(rows)
    paths = write_report(rows, summary, tmp_path)
    md = paths["report"].read_text()
    assert paths["report"] == tmp_path / "report.md"
    figures = {k: p for k, p in paths.items() if k != "report"}
    kinds = {k.split(":")[0] for k in figures}
    assert kinds == {"csi", "metric", "scatter", "fig4"}  # one budget: no metric-vs-budget figure
    for p in figures.values():
        assert p.parent == tmp_path / "figures"
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 1000
        assert f"(figures/{p.name})" in md
    for down, task in summary["tasks"].items():
        assert f"## Downstream `{down}`" in md
        assert task["verdict"] in md
        s = task["scratch"]
        assert pm(s["mean"], s["std"]) in md
        for b in task["budgets"].values():
            for c in b["candidates"]:
                assert f"| {fmt(c['csi'])} |" in md
                assert pm(c["mean"], c["std"]) in md
                assert f"{100 * c['gain']:.1f} %" in md
            rho = b["correlation"]["all"]["spearman"]
            assert f"{rho['statistic']:.3f}" in md and f"{rho['p_value']:.3g}" in md
    assert "## Excluded runs" in md and "RuntimeError: boom" in md


def test_several_budgets_add_the_budget_figure(tmp_path: Path) -> None:
    rows = _rows(budgets=((500, 20), (1000, 10)))
    summary = summarize(rows)
    paths = write_report(rows, summary, tmp_path)
    assert {"budget:d1", "budget:qm9"} <= set(paths)
    md = paths["report"].read_text()
    assert "### Metric vs budget" in md
    for name, means in summary["tasks"]["d1"]["vs_budget"]["means"].items():
        assert f"| {name} | " + " | ".join(fmt(m) for m in means.values()) + " |" in md


def test_print_summary_fits_the_console(tmp_path: Path) -> None:
    rows = _rows()
    summary = summarize(rows)
    paths = write_report(rows, summary, tmp_path)
    console = Console(record=True, width=110, color_system=None)
    print_summary(summary, console, paths)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 110
    for name in CANDS:
        assert name in text
    assert "scratch" in text and "Spearman" in text and "Kendall" in text
    assert str(paths["report"]) in text and str(tmp_path / "figures") in text
    assert "CSI ranked" in text  # the verdict paragraphs


def test_scatter_labels_of_close_points_do_not_overlap() -> None:
    """Two candidates with nearly the same CSI and metric: the second label moves up by at least a line;
    points far apart keep their labels beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from atomsift.experiment.report import label_points

    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    xy = [(10.0, 150.0), (10.2, 150.1), (100.0, 130.0), (10.0, 200.0)]
    ax.plot(*zip(*xy, strict=True), "o")
    offsets = label_points(ax, xy, ["acac", "organic", "oxides", "reactive"])
    plt.close(fig)
    assert offsets[0] == 0.0 and offsets[2] == 0.0 and offsets[3] == 0.0
    assert offsets[1] >= 1.25 * 8.0 - 1.0  # a line of 8 pt text, less the 0.1 difference in the data
