"""Training-step throughput of atomsift's backbones, side by side with fairchem 1.10's GemNet-OC.

One training step = build graphs, forward, energy + forces, loss (L1 energy + mean per-atom force error
norm), backward, AdamW step. Measured on real bundled data: rMD17 ethanol molecules (8 A cutoff, no pbc)
and periodic PBE oxides (12 A, periodic), 30 neighbours, for PaiNN (gradient forces), atomsift GemNet-OC
"small" and "S" (direct forces, as in the paper's pretraining) and, where fairchem-core 1.10 is importable,
fairchem's GemNet-OC with the same hyperparameters, the same weights and the same batches.

    .venv/bin/python benchmarks/train_step_speed.py                 # atomsift models only
    fairchem-venv/bin/python benchmarks/train_step_speed.py         # adds fairchem (docs/gemnet_oc.md)
    ... --models painn,gemnet-small --min-time 5 --device cuda

Prints one table; paste it into benchmarks/RESULTS.md with the machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Callable

import torch

from _machine import cpu_name
from atomsift.data import open_dataset
from atomsift.graph import collate
from atomsift.models import AtomsModel, build_backbone
from atomsift.models.backbones.gemnet_oc.compat import FairchemGemNetOC, gemnet_from_fairchem
from atomsift.models.backbones.gemnet_oc.fairchem_bridge import (
    fairchem_available,
    fairchem_gemnet,
    to_fairchem_batch,
)
from atomsift.models.registry import presets

DATA = {
    # name: (bundled dataset, structures per batch, GemNet-OC graph overrides)
    "ethanol": (
        "bundled:ethanol",
        16,
        {"cutoff": 8.0, "cutoff_qint": 8.0, "cutoff_aeaint": 8.0, "cutoff_aint": 8.0, "use_pbc": False},
    ),
    "oxides": ("bundled:oxides", 8, {}),
}


def loss_of(out: dict[str, torch.Tensor], batch) -> torch.Tensor:
    """L1 energy per structure + mean over atoms of the force error norm (the paper's loss shape)."""
    e = (out["energy"] - batch.energy).abs().mean()
    f = (out["forces"] - batch.forces).norm(dim=1).mean()
    return e + 10.0 * f


def time_steps(step: Callable[[], None], min_time: float, min_steps: int) -> float:
    """Seconds per step: one warm-up step, then steps until both min_time and min_steps are reached."""
    step()
    count, start = 0, time.perf_counter()
    while count < min_steps or time.perf_counter() - start < min_time:
        step()
        count += 1
    return (time.perf_counter() - start) / count


def trainer(model: torch.nn.Module, run: Callable[[], tuple[dict, object]]) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out, batch = run()
        loss_of(out, batch).backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="painn,gemnet-small,gemnet-S")
    parser.add_argument("--data", default="ethanol,oxides")
    parser.add_argument("--min-time", type=float, default=4.0, help="seconds timed per row (after a warm-up step)")
    parser.add_argument("--min-steps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    with_fairchem = fairchem_available()
    print(
        f"# {datetime.datetime.now().isoformat(timespec='minutes')}  {cpu_name()}  "
        f"{torch.get_num_threads()} threads  torch {torch.__version__}  device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f"  fairchem {'yes' if with_fairchem else 'not installed'}"
    )
    header = f"{'model':<22} {'data':<8} {'batch':>5} {'atoms':>6} {'ms/step':>9} {'struct/s':>9} {'atoms/s':>9} {'vs fairchem':>11}"
    print(header)
    print("-" * len(header))
    for data_name in args.data.split(","):
        source, batch_size, graph = DATA[data_name]
        ds = open_dataset(source)
        batch = collate([ds[i] for i in range(batch_size)], dtype=torch.float32).to(device)
        batch.tags[:] = 2  # JMP's convention for non-OC20 data: every atom takes part in quadruplets
        natoms = batch.num_atoms
        for name in args.models.split(","):
            if name == "painn":
                torch.manual_seed(0)
                model = AtomsModel(build_backbone("painn"), {"energy": {"kind": "energy", "forces": "gradient"}})
                model.to(device)
                sec = time_steps(trainer(model, lambda m=model, b=batch: (m(b), b)), args.min_time, args.min_steps)
                print(
                    f"{name:<22} {data_name:<8} {batch_size:>5} {natoms:>6} {1000 * sec:>9.1f} "
                    f"{batch_size / sec:>9.1f} {natoms / sec:>9.0f} {'':>11}"
                )
                continue
            preset = name.split("-", 1)[1]
            config = {**presets("gemnet_oc")[preset], **graph}
            reference = fairchem_gemnet(config, seed=0) if with_fairchem else None
            if reference is not None:
                state = reference.state_dict()
            else:
                torch.manual_seed(0)
                state = build_backbone("gemnet_oc", **config).state_dict()
            backbone, heads, _ = gemnet_from_fairchem(config, state)
            ours = FairchemGemNetOC(backbone, heads).to(device)
            sec = time_steps(trainer(ours, lambda m=ours, b=batch: (m(b), b)), args.min_time, args.min_steps)
            ratio = ""
            if reference is not None:
                data = to_fairchem_batch(batch)
                fc_sec = time_steps(
                    trainer(reference, lambda m=reference, d=data, b=batch: (m(d), b)), args.min_time, args.min_steps
                )
                ratio = f"{fc_sec / sec:.2f}x"
                print(
                    f"{'fairchem ' + name:<22} {data_name:<8} {batch_size:>5} {natoms:>6} {1000 * fc_sec:>9.1f} "
                    f"{batch_size / fc_sec:>9.1f} {natoms / fc_sec:>9.0f} {'1.00x':>11}"
                )
            print(
                f"{'atomsift ' + name:<22} {data_name:<8} {batch_size:>5} {natoms:>6} {1000 * sec:>9.1f} "
                f"{batch_size / sec:>9.1f} {natoms / sec:>9.0f} {ratio:>11}"
            )


if __name__ == "__main__":
    main()
