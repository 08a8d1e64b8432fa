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


def mixture_settings(cfg: CSIConfig, sel: Selection, candidates: list[Any]) -> dict[str, Any]:
    """The pretraining keys of the selected mixture: `upstream` (the candidates with non-zero shares; a class
    is its dataset restricted to the class's subset file, reader option `indices`), `mixture: weights` and
    `weights` (structure shares), or `mixture: single` when one set takes the whole share; for `atomsift pretrain
    --config` plus backbone and budget."""
    kept = [(n, w) for n, w in zip(sel.names, sel.shares.tolist()) if w > 0]
    by_name = {c.name: c for c in candidates}
    upstream = {}
    for name, _ in kept:
        cand = by_name[name]
        dataset = getattr(cand, "dataset", name)
        spec = cfg.upstream[dataset].model_dump(mode="json", exclude_defaults=True)
        spec.pop("n_samples", None)  # pretraining's N and the weights decide each dataset's count
        if getattr(cand, "subset_file", None) is not None:
            spec["options"] = {**spec.get("options", {}), "indices": str(cand.subset_file)}
        upstream[name] = _absolute_paths(spec)
    if len(kept) == 1:
        return {"upstream": upstream, "mixture": "single"}
    return {"upstream": upstream, "mixture": "weights", "weights": {n: round(w, 6) for n, w in kept}}


def _absolute_paths(spec: dict[str, Any]) -> dict[str, Any]:
    """The dataset's path, and option values naming files that exist, made absolute: the mixture file is read
    from wherever `pretrain --config` runs, not from where select ran (bundled: names stay as they are)."""
    out = dict(spec)
    path = str(out.get("path", ""))
    if path and not path.startswith("bundled:") and not Path(path).is_absolute():
        out["path"] = str(Path(path).absolute())
    options = dict(out.get("options") or {})
    for key, value in options.items():
        if isinstance(value, str) and not Path(value).is_absolute() and Path(value).exists():
            options[key] = str(Path(value).absolute())
    if options:
        out["options"] = options
    return out


def selection_table(sel: Selection, unit: str, shown: int | None = None) -> Table:
    """Each candidate: the measure alone, its structure share and its atom share in the selected mixture (with
    `shown`: the selected candidates and the best others by the measure alone, at most `shown` rows)."""
    table = Table(
        title=f"mixture for '{sel.downstream}' minimising {sel.measure} (lower = better aligned)",
        title_justify="left",
    )
    for col in ("upstream", f"{sel.measure} alone", "structure share", f"{unit} share"):
        table.add_column(col, justify="left" if col == "upstream" else "right")
    order = range(len(sel.names))
    if shown is not None:
        order = sorted(order, key=lambda i: (sel.shares[i] == 0, sel.singles[sel.names[i]]))[:shown]
    for i in order:
        name = sel.names[i]
        table.add_row(name, f"{sel.singles[name]:.4g}", f"{sel.shares[i]:.3f}", f"{sel.atom_weights[i]:.3f}")
    return table


def run_select(
    cfg: CSIConfig,
    out: Path,
    measure: str,
    over: str = "datasets",
    console: Console | None = None,
    overwrite: bool = False,
) -> list[Selection]:
    """Gather statistics, score the single sets (with warnings), select a mixture per downstream set (over the
    datasets, or over the classes of each dataset), write it."""
    from atomsift.cli.csi import run_and_report
    from atomsift.csi.selection import select_weights
    from atomsift.train.config import PretrainConfig

    settings = ("select_config.yaml", {"measure": measure, "over": over})
    defaults = PretrainConfig.model_fields  # quoted in each mixture file's header
    rows, up, down, extractor, console = run_and_report(cfg, out, console, settings, overwrite=overwrite)
    unit = "atom" if cfg.aggregation == "flat" else "observation"
    candidates: list[Any] = up
    if over == "classes":
        from atomsift.csi.classes import class_candidates

        candidates = class_candidates(up, extractor, cfg, out)
        console.print(f"{len(candidates)} candidates: the classes of the upstream sets (subset files in {out}/classes)")
    selections = []
    for dn in down:
        sel = select_weights(candidates, dn, cfg, measure)
        selections.append(sel)
        console.print(selection_table(sel, unit, shown=30 if over == "classes" else None))
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
        settings = mixture_settings(cfg, sel, candidates)
        header = (
            f"# atomsift select: {measure} to downstream '{dn.name}' ({sel.value:.6g}; best single {best} "
            f"{sel.singles[best]:.6g}).\n# Use: atomsift pretrain --config {path.name} backbone.name=... "
            "n_samples=N epochs=E --out RUN\n# (or add backbone / n_samples / epochs to this file). The optimisation "
            f"keys keep pretrain's defaults\n# (lr {defaults['lr'].default:g}, warmup_steps "
            f"{defaults['warmup_steps'].default}: the paper's, for millions of structures); a small run sets its own,"
            "\n# e.g. lr=2e-3 warmup_steps=25 as in configs/experiment_demo.yaml. CSI samples: subsets/.\n"
        )
        path.write_text(header + yaml.safe_dump(settings, sort_keys=False))
        console.print(f"wrote {path}")
    (out / "selection.json").write_text(json.dumps([s.as_dict() for s in selections], indent=2))
    console.print(f"wrote {out / 'selection.json'}")
    return selections
