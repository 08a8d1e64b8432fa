"""`atomsift select`: mixture weights per downstream set, printed beside each single set and written as mixtures
that `atomsift pretrain` (and an experiment's `mixtures:`) read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from atomsift.csi.config import CSIConfig
from atomsift.csi.selection import Selection


def mixture_settings(cfg: CSIConfig, sel: Selection, subsets: Path) -> dict[str, Any]:
    """The pretraining keys of the selected mixture: `upstream` (the datasets with non-zero shares), `mixture:
    weights` and `weights` (structure shares), for `atomsift pretrain --config` plus backbone and budget."""
    kept = [(n, w) for n, w in zip(sel.names, sel.shares.tolist()) if w > 0]
    upstream = {}
    for name, _ in kept:
        spec = cfg.upstream[name].model_dump(mode="json", exclude_defaults=True)
        spec.pop("n_samples", None)  # pretraining's N and the weights decide each dataset's count
        upstream[name] = spec
    if len(kept) == 1:
        return {"upstream": upstream, "mixture": "single"}
    return {"upstream": upstream, "mixture": "weights", "weights": {n: round(w, 6) for n, w in kept}}


def selection_table(sel: Selection, unit: str) -> Table:
    """Each upstream set: the measure alone, its structure share and its atom share in the selected mixture."""
    table = Table(
        title=f"mixture for '{sel.downstream}' minimising {sel.measure} (lower = better aligned)",
        title_justify="left",
    )
    for col in ("upstream", f"{sel.measure} alone", "structure share", f"{unit} share"):
        table.add_column(col, justify="left" if col == "upstream" else "right")
    for i, name in enumerate(sel.names):
        table.add_row(name, f"{sel.singles[name]:.4g}", f"{sel.shares[i]:.3f}", f"{sel.atom_weights[i]:.3f}")
    return table


def run_select(cfg: CSIConfig, out: Path, measure: str, console: Console | None = None) -> list[Selection]:
    """Gather statistics, score the single sets (with warnings), select a mixture per downstream set, write it."""
    from atomsift.cli.common import on_interrupt
    from atomsift.csi.pipeline import annotate, gather_stats, score_all
    from atomsift.csi.report import print_tables, write_outputs
    from atomsift.csi.selection import select_weights
    from atomsift.settings import check_output_dir

    console = console or (Console() if Console().is_terminal else Console(width=140))
    check_output_dir(out)
    on_interrupt("statistics of the datasets that finished are cached; rerun the same command to resume from them")
    up, down, extractor = gather_stats(cfg, out)
    rows = annotate(score_all(up, down, cfg), extractor, cfg)
    (out / "select_config.yaml").write_text(yaml.safe_dump({**cfg.model_dump(), "measure": measure}, sort_keys=False))
    print_tables(rows, console)
    write_outputs(rows, out)
    unit = "atom" if cfg.aggregation == "flat" else "observation"
    selections = []
    for dn in down:
        sel = select_weights(up, dn, cfg, measure)
        selections.append(sel)
        console.print(selection_table(sel, unit))
        best = min(sel.singles, key=sel.singles.__getitem__)
        console.print(
            f"selected mixture: {measure} {sel.value:.4g}; best single set {best}: {sel.singles[best]:.4g}; "
            f"equal structure shares: {sel.uniform:.4g}",
            highlight=False,
        )
        for r in rows:
            if r["downstream"] == dn.name and r["upstream"] == best and r.get("out_of_distribution"):
                console.print(
                    f"warning: '{dn.name}' is out of distribution: the selection is unreliable", highlight=False
                )
        path = out / f"mixture-{dn.name}.yaml"
        settings = mixture_settings(cfg, sel, out / "subsets")
        header = (
            f"# atomsift select: {measure} to downstream '{dn.name}' ({sel.value:.6g}; best single {best} "
            f"{sel.singles[best]:.6g}).\n# Use: atomsift pretrain --config {path.name} backbone.name=... "
            "n_samples=N epochs=E --out RUN\n# (or add backbone / n_samples / epochs to this file). CSI samples: "
            "subsets/.\n"
        )
        path.write_text(header + yaml.safe_dump(settings, sort_keys=False))
        console.print(f"wrote {path}")
    (out / "selection.json").write_text(json.dumps([s.as_dict() for s in selections], indent=2))
    console.print(f"wrote {out / 'selection.json'}")
    return selections
