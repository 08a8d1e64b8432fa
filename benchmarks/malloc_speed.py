"""Training steps with glibc's default malloc thresholds against raised ones, process by process.

"Tuned" sets glibc's mmap threshold to its 32 MiB maximum and the trim threshold to 1 GiB (mallopt, as
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ would): freed activations stay mapped instead of being handed
back to the kernel and faulted in again, zeroed, at the next step. Measured, not adopted (benchmarks/RESULTS.md):
page faults and system time drop by 50-100x, the step times do not follow.

The thresholds hold for a whole process, so the two sides cannot alternate step by step in one: this script runs
one child process per measurement, alternating the sides (default, tuned, tuned, default, ...) so that load from
other processes lands on both. Each child builds atomsift's GemNet-OC (random weights, fairchem's heads as in
train_step_speed.py, atomsift's AdamW), runs a few warm-up steps on real bundled data and times `--steps` training
steps, counting minor page faults and system CPU time (getrusage). The table gives each side's median over
children of the median step time, faults and system seconds per step, and the median per-pair ratio.

    .venv/bin/python benchmarks/malloc_speed.py                       # small and S on ethanol, direct forces
    .venv/bin/python benchmarks/malloc_speed.py --models gemnet-S --data oxides --pairs 3

Linux with glibc only. Prints one table; paste it into
benchmarks/RESULTS.md with the machine and date.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def child(model_name: str, data_name: str, tuned: bool, steps: int) -> dict[str, float]:
    """One measurement in this process: median step ms, minor faults and system seconds per step."""
    if tuned:  # the mmap threshold first: the trim threshold alone (no dynamic thresholds) maps every buffer
        libc = ctypes.CDLL("libc.so.6")
        assert libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
    import torch

    from atomsift.data import open_dataset
    from atomsift.graph import collate
    from atomsift.models import build_backbone
    from atomsift.models.backbones.gemnet_oc.compat import FairchemGemNetOC, gemnet_from_fairchem
    from atomsift.models.registry import presets
    from atomsift.train.optimizer import fused_adamw
    from train_step_speed import DATA, trainer

    source, batch_size, graph = DATA[data_name]
    ds = open_dataset(source)
    batch = collate([ds[i] for i in range(batch_size)], dtype=torch.float32)
    batch.tags[:] = 2
    config = {**presets("gemnet_oc")[model_name.split("-", 1)[1]], **graph, "direct_forces": True}
    torch.manual_seed(0)
    backbone, heads, _ = gemnet_from_fairchem(config, build_backbone("gemnet_oc", **config).state_dict())
    model = FairchemGemNetOC(backbone, heads)
    step = trainer(model, lambda: (model(batch), batch), torch.device("cpu"), fused_adamw(list(model.parameters())))
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = [step() for _ in range(steps)]
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "ms": 1000 * statistics.median(times),
        "faults": (after.ru_minflt - before.ru_minflt) / steps,
        "sys_ms": 1000 * (after.ru_stime - before.ru_stime) / steps,
    }


def measure(model_name: str, data_name: str, tuned: bool, steps: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", model_name, data_name, "tuned" if tuned else "default", str(steps)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent / "src")])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model_name, data_name, side, steps = sys.argv[2:6]
        print(json.dumps(child(model_name, data_name, side == "tuned", int(steps))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="gemnet-small,gemnet-S")
    parser.add_argument("--data", default="ethanol")
    parser.add_argument("--pairs", type=int, default=4, help="child processes per side")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per child")
    args = parser.parse_args()
    if platform.libc_ver()[0] != "glibc":
        sys.exit("malloc_speed.py measures glibc's malloc thresholds: this Python does not run on glibc")
    from _machine import machine_line

    print(f"{machine_line()}  load {os.getloadavg()[0]:.2f}  {os.confstr('CS_GNU_LIBC_VERSION')}")
    header = (
        f"{'model':<13} {'data':<8} {'pairs':>5} {'default ms':>10} {'faults':>7} {'sys ms':>7} "
        f"{'tuned ms':>9} {'faults':>7} {'sys ms':>7} {'default/tuned':>13}"
    )
    print(header)
    print("-" * len(header))
    for data_name in args.data.split(","):
        for model_name in args.models.split(","):
            default, tuned = [], []
            for k in range(args.pairs):
                order = (False, True) if k % 2 == 0 else (True, False)
                for side in order:
                    (tuned if side else default).append(measure(model_name, data_name, side, args.steps))

            def med(rows: list[dict[str, float]], key: str) -> float:
                return statistics.median(r[key] for r in rows)

            ratio = statistics.median(d["ms"] / t["ms"] for d, t in zip(default, tuned))
            print(
                f"{model_name:<13} {data_name:<8} {args.pairs:>5} {med(default, 'ms'):>10.1f} "
                f"{med(default, 'faults'):>7.0f} {med(default, 'sys_ms'):>7.1f} {med(tuned, 'ms'):>9.1f} "
                f"{med(tuned, 'faults'):>7.0f} {med(tuned, 'sys_ms'):>7.1f} {ratio:>12.2f}x",
                flush=True,
            )
    print(f"# load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
