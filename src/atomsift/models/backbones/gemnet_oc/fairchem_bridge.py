"""Run fairchem-core 1.10's own GemNet-OC next to atomsift's, for parity checks and benchmarks.

Needs the optional side environment (fairchem-core 1.10 with torch-geometric 2.7 and torch-scatter /
torch-sparse; see docs/gemnet_oc.md). Nothing else in atomsift imports this module.

    reference = fairchem_gemnet(config)                   # fairchem GemNetOC from a fairchem-style config
    backbone, heads, report = gemnet_from_fairchem(config, reference.state_dict())
    reference(to_fairchem_batch(batch))                   # same batch, fairchem's input type
"""

from __future__ import annotations

from typing import Any

import torch

from atomsift.errors import ConfigError


def fairchem_available() -> bool:
    """Whether fairchem-core's GemNet-OC and torch_geometric can be imported here."""
    try:
        import fairchem.core.models.gemnet_oc.gemnet_oc  # noqa: F401
        import torch_geometric  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def _require() -> None:
    if not fairchem_available():
        raise ConfigError(
            "fairchem-core 1.10 (with torch_geometric, torch_scatter, torch_sparse) is not importable here",
            fix="build the side environment described in docs/gemnet_oc.md and run this there",
        )


def to_fairchem_batch(batch: Any) -> Any:
    """An atomsift AtomsBatch as fairchem's input: a torch_geometric Batch (float32 positions and cells).

    Fields: pos (N, 3), atomic_numbers (N,), cell (B, 3, 3), natoms (B,), tags (N,), fixed (N,), pbc (B, 3).
    """
    _require()
    from torch_geometric.data import Batch, Data

    data = []
    start = 0
    for b, n in enumerate(batch.natoms.tolist()):
        stop = start + n
        data.append(
            Data(
                pos=batch.positions[start:stop].detach().to(torch.float32).cpu().clone(),
                atomic_numbers=batch.numbers[start:stop].cpu().long(),
                cell=batch.cell[b].detach().to(torch.float32).cpu().view(1, 3, 3),
                natoms=n,
                tags=batch.tags[start:stop].cpu().long(),
                fixed=torch.zeros(n, dtype=torch.long),
                pbc=batch.pbc[b].cpu().view(1, 3),
            )
        )
        start = stop
    return Batch.from_data_list(data)


def fairchem_gemnet(config: dict[str, Any], *, regress_forces: bool = True, seed: int | None = None) -> Any:
    """fairchem's GemNetOC built from a fairchem-style config (atomsift GemNetOC hparams are one).

    Args:
        config: constructor keywords of fairchem's GemNetOC ("name" is dropped).
        regress_forces: fairchem's flag (forces direct or by gradient, following config["direct_forces"]).
        seed: torch seed for the random initialisation.
    """
    _require()
    from fairchem.core.models.gemnet_oc.gemnet_oc import GemNetOC as FairchemGemNetOC

    if seed is not None:
        torch.manual_seed(seed)
    kwargs = {k: v for k, v in config.items() if k != "name"}
    kwargs.setdefault("otf_graph", True)
    return FairchemGemNetOC(regress_forces=regress_forces, **kwargs)
