"""A small builder of synthetic experiment result rows (the shape `atomsift experiment` writes)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

METRIC = "forces_mae_meV_per_A"


def row(
    upstream: str,
    downstream: str,
    seed: int,
    value: float | None,
    *,
    kind: str = "dataset",
    members: str | None = None,
    n_samples: int | None = 500,
    epochs: int | None = 20,
    csi: float | None = None,
    ci: tuple[float, float] | None = None,
    status: str = "ok",
    metric: str = METRIC,
) -> dict[str, Any]:
    """One result row; scratch rows get kind 'scratch', no budget and no CSI."""
    scratch = kind == "scratch"
    if scratch:
        n_samples = epochs = None
        csi = None
    r: dict[str, Any] = {
        "upstream": upstream,
        "kind": kind,
        "members": "" if scratch else (members if members is not None else upstream),
        "downstream": downstream,
        "n_samples": n_samples,
        "epochs": epochs,
        "budget": None if scratch else n_samples * epochs,
        "seed": seed,
        "csi": csi,
        "ci_low": None if ci is None else ci[0],
        "ci_high": None if ci is None else ci[1],
        "csi_units": "squared feature units",
        "metric": metric,
        "value": value if status == "ok" else None,
        "status": status,
        "error": "RuntimeError: boom" if status == "failed" else None,
        "pretrain_dir": "" if scratch else f"pretrain/{upstream}-N{n_samples}-E{epochs}-s{seed}",
        "finetune_dir": f"finetune/{upstream}-{downstream}-s{seed}",
        "pretrain_wall_s": None if scratch else 12.5,
        "finetune_wall_s": 3.25,
    }
    if status == "ok" and value is not None:
        r[metric] = value
        r["energy_mae_meV"] = 2.0 * value
    return r


def grid(
    candidates: dict[str, dict[str, Any]],
    value: Callable[[str, str, tuple[int, int], int], float],
    *,
    downstreams: Iterable[str] = ("d1",),
    budgets: Iterable[tuple[int, int]] = ((500, 20),),
    seeds: Iterable[int] = (0, 1, 2),
    failed: Iterable[tuple[str, str, tuple[int, int] | None, int]] = (),
    pending: Iterable[tuple[str, str, tuple[int, int] | None, int]] = (),
) -> list[dict[str, Any]]:
    """Rows for every candidate x downstream x budget x seed plus scratch per downstream and seed.

    candidates: name -> {"kind", "members", "csi": {downstream: value}, "ci": {downstream: (lo, hi)}}.
    value(upstream, downstream, (N, E), seed) -> the metric; scratch is called with budget (0, 0).
    failed / pending: (upstream, downstream, budget or None for scratch, seed) marked as such.
    """
    failed, pending, seeds, budgets = set(failed), set(pending), list(seeds), list(budgets)
    rows = []
    for down in downstreams:
        for seed in seeds:
            status = (
                "failed" if ("scratch", down, None, seed) in failed else
                "pending" if ("scratch", down, None, seed) in pending else "ok"
            )  # fmt: skip
            rows.append(row("scratch", down, seed, value("scratch", down, (0, 0), seed), kind="scratch", status=status))
        for b in budgets:
            for name, spec in candidates.items():
                for seed in seeds:
                    key = (name, down, b, seed)
                    status = "failed" if key in failed else "pending" if key in pending else "ok"
                    rows.append(
                        row(
                            name,
                            down,
                            seed,
                            value(name, down, b, seed),
                            kind=spec.get("kind", "dataset"),
                            members=spec.get("members"),
                            n_samples=b[0],
                            epochs=b[1],
                            csi=spec["csi"][down],
                            ci=spec.get("ci", {}).get(down),
                            status=status,
                        )
                    )
    return rows
