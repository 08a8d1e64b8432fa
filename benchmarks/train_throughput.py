"""Pretraining throughput through atomsift's Lightning loop against a bare PyTorch loop, data-loading rate
against step rate, and peak memory per step.

For every model (PaiNN default size, GemNet-OC "small" and "S") and dataset (bundled acac molecules,
bundled periodic oxides) the script builds one pretraining TrainModule the way `atomsift pretrain` does
(plan, subsets, normalisers, GemNet-OC scale factors, the pretraining defaults: direct forces, force weight
10, AdamW, warm-up/cosine schedule, grad-norm clip 1, EMA 0.99, edge dropout 0.1 for GemNet-OC) and an
identical copy of it. Then, in one run, on the same pre-collated batches:

  A  Lightning: the Trainer of `atomsift.train.runner.make_trainer` (CSV logger, logging every step,
     per-epoch lines) fits the module; one step = the wall time from the end of one `on_train_batch_end`
     of the benchmark's callback to the next (all of Lightning's work: fetch, hooks, training_step with its
     `self.log` calls, backward, clip, AdamW, EMA, scheduler, logger), minus nothing.
  B  bare PyTorch: the copy, stepped by hand inside that callback: edge-dropout seed, forward_heads, the
     same per-structure loss, NaN check, counts, backward, clip_grad_norm_, AdamW, scheduler, EMA update.
  L  loading: one batch from the DataLoader `atomsift` trains with (TrainSet + BudgetBatchSampler +
     BatchCollator, num_workers=0: reading records and collating; neighbour graphs are built in the model
     step, so they count as training, not loading).

The order is A0 B0 B1 A1 A2 B2 B3 A3 ... (each side goes first equally often), with one L after every B.
Both sides start from the same weights and see the same batches, so their losses, final weights and EMA
weights must agree (column "max abs dloss, dweights"; tests/train/test_benchmark_smoke.py checks it).
Times are wall clock and process CPU time (less sensitive to other jobs on a shared machine).
Where Lightning's extra time goes: process CPU time inside the module's self.log calls, inside handing the
metrics to the logger, and inside the batch transfer, measured per step by wrapping those calls on the
benchmark's trainer and module (src is untouched); "rest" = (A - B) minus those, per step.
Peak memory: each model and dataset in a fresh process, Lightning loop, Linux VmHWM (peak resident set)
reset just before the fit (/proc/self/clear_refs), against the resident set just before it. GemNet-OC's
scale factors are fitted once and kept in benchmarks/_work/train_throughput/.

    .venv/bin/python benchmarks/train_throughput.py            # full run (~9 min on 2 cores)
    .venv/bin/python benchmarks/train_throughput.py --quick    # fewer steps (make bench: ~3 min, ~6 the first time)
    ... --models painn --data acac --pairs 80 --threads 2

Prints markdown tables; paste it into benchmarks/RESULTS.md with the lines above it.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from _machine import cpu_name
from atomsift.train.config import PretrainConfig
from atomsift.train.data import BatchCollator, BudgetBatchSampler, TrainSet
from atomsift.train.losses import TaskInfo
from atomsift.train.module import TrainModule
from atomsift.train.pretrain import build_model, build_tasks, plan_pretraining
from atomsift.train.runner import make_trainer
from atomsift.train.setup import fit_scale_factors_if_needed, fit_task_normalizer, param_groups

# name: (backbone settings, structures per batch, (pairs, warm-up steps) full, (pairs, warm-up) quick)
MODELS: dict[str, tuple[dict[str, Any], int, tuple[int, int], tuple[int, int]]] = {
    "painn": ({"name": "painn"}, 16, (400, 6), (40, 4)),
    "gemnet-small": ({"name": "gemnet_oc", "preset": "small"}, 8, (24, 2), (6, 1)),
    "gemnet-S": ({"name": "gemnet_oc", "preset": "S"}, 4, (8, 1), (3, 1)),
}
DATA = {"acac": "bundled:acac", "oxides": "bundled:oxides"}
MEMORY_STEPS = 3
CACHE = Path(__file__).resolve().parent / "_work" / "train_throughput"


def quiet() -> None:
    """Lightning's start-up lines and known-harmless warnings off (as the CLI does)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def build(
    model: str, data: str, n_batches: int, out: Path, settings: dict[str, Any] | None = None
) -> tuple[TrainModule, PretrainConfig, list]:
    """A pretraining TrainModule as run_pretraining builds it, and `n_batches` batches from its DataLoader.
    `settings` override the pretraining settings (the tests use a large lr)."""
    backbone, batch_size, _, _ = MODELS[model]
    cfg = PretrainConfig.model_validate(
        {
            "backbone": backbone,
            "upstream": {data: {"path": DATA[data], "val_size": 4}},
            "mixture": "single",
            "n_samples": batch_size * n_batches,
            "allow_repeats": True,
            "epochs": 1,
            "batch_size": batch_size,
            "checkpoint_every": 10**9,  # checkpoint writes are timed apart (see the notes)
            "normalizer_samples": 200,
            "scale_factor_batches": 1,
            **(settings or {}),
        }
    )
    plan = plan_pretraining(cfg)
    tasks = build_tasks(plan, cfg, out, resume=False)
    net, _ = build_model(cfg, tasks)
    for task in tasks:
        fit_task_normalizer(task, cfg.normalizer_samples, net.backbone.num_elements).apply_to(net.heads[task.name])
    # GemNet-OC scale factors: fitted on one training batch the first time (about a minute on CPU), then
    # read from benchmarks/_work; their values do not change the work of a step
    cache = CACHE / f"{model}-{data}-seed{cfg.seed}.scales.pt"
    if cache.exists():
        net.backbone.load_state_dict(torch.load(cache, weights_only=True), strict=False)
    if fit_scale_factors_if_needed(net.backbone, tasks, cfg.scale_factor_batches, cfg.batch_size, torch.float32):
        cache.parent.mkdir(parents=True, exist_ok=True)
        scales = {k: v for k, v in net.backbone.state_dict().items() if k.endswith("scale_factor")}
        torch.save(scales, cache.with_suffix(".tmp"))
        os.replace(cache.with_suffix(".tmp"), cache)
    infos = [TaskInfo(t.name, t.name, "energy", "energy", t.has_forces, t.energy_weight, t.force_weight) for t in tasks]
    module = TrainModule(
        net,
        infos,
        cfg,
        train_set=TrainSet(tasks),
        val_set=TrainSet(tasks, "val"),
        collator=BatchCollator(tasks, [], torch.float32),
        param_groups=param_groups(net, None),
        edge_dropout=cfg.edge_dropout,
    )
    loader = Loader(module)
    batches = [loader.next()[0] for _ in range(n_batches)]
    return module, cfg, batches


def prepared_loader(batches: list) -> torch.utils.data.DataLoader:
    """Pre-collated batches for Lightning's side (batch_size=None: handed over as they are)."""
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, collate_fn=_same)


def _same(batch: Any) -> Any:
    return batch


class Loader:
    """The training DataLoader of `module` (num_workers=0), cycled over epochs; `next()` -> (batch, seconds)."""

    def __init__(self, module: TrainModule) -> None:
        cfg = module.cfg
        self.sampler = BudgetBatchSampler(module.train_set, cfg.batch_size, cfg.seed)
        self.loader = module._loader(module.train_set, self.sampler)
        self.epoch = 0
        self.it = iter(self.loader)

    def next(self) -> tuple[Any, float]:
        start = time.perf_counter()
        try:
            batch = next(self.it)
        except StopIteration:
            self.epoch += 1
            self.sampler.set_epoch(self.epoch)
            self.it = iter(self.loader)
            batch = next(self.it)
        return batch, time.perf_counter() - start


class BareLoop:
    """Side B: a copy of the module stepped by plain PyTorch, doing TrainModule's per-step work without
    Lightning (and without its `self.log` calls)."""

    def __init__(self, module: TrainModule) -> None:
        self.m = copy.deepcopy(module)
        conf = self.m.configure_optimizers()
        self.opt, self.sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
        self.params = [p for g in self.opt.param_groups for p in g["params"]]
        self.step_no = 0

    def step(self, batch) -> torch.Tensor:
        m, cfg = self.m, self.m.cfg
        self.opt.zero_grad(set_to_none=True)
        backbone = m.model.backbone
        if m.edge_dropout > 0 and hasattr(backbone, "edge_dropout"):  # as TrainModule._seed_edge_dropout
            backbone.edge_dropout = m.edge_dropout
            seed = np.random.SeedSequence([cfg.seed, self.step_no]).generate_state(1)[0]
            backbone.edge_dropout_generator = torch.Generator().manual_seed(int(seed))
        outs = m.model.forward_heads(batch, m._heads(batch), create_graph=True)
        per = m._losses(m.model, outs, batch)
        weights = batch.weights.to(per.dtype)
        loss = (weights * per).sum() / batch.step_size
        if not bool(torch.isfinite(loss)):
            raise RuntimeError(f"bare loop: loss {float(loss)} at step {self.step_no}")
        real = weights > 0
        counts = [real.sum(), batch.natoms[real].sum()] + [
            (real & (batch.dataset == k)).sum() for k in range(len(m.tasks))
        ]
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        if m.ema is not None:
            m.ema.update_parameters(m.model)
        values = torch.stack(counts).to(torch.float64).tolist()
        m.counters["structures"] += values[0]
        m.counters["atoms"] += values[1]
        self.step_no += 1
        return loss.detach()


class Alternate(L.Callback):
    """Times Lightning's steps (end of this hook to its next call) and runs B steps and loader draws in here."""

    def __init__(self, bare: BareLoop, batches: list, loader: Loader) -> None:
        self.bare, self.batches, self.loader = bare, batches, loader
        self.probe: Probe | None = None
        self.resumed: tuple[float, float] | None = None
        self.a: dict[int, float] = {}  # wall seconds per step
        self.b: dict[int, float] = {}
        self.a_cpu: dict[int, float] = {}  # process CPU seconds per step
        self.b_cpu: dict[int, float] = {}
        self.load: list[float] = []
        self.loss_a: dict[int, float] = {}
        self.loss_b: dict[int, Any] = {}

    def _run_b(self, i: int) -> None:
        if i >= len(self.batches):
            return
        start, cpu = time.perf_counter(), time.process_time()
        self.loss_b[i] = self.bare.step(self.batches[i])
        self.b[i], self.b_cpu[i] = time.perf_counter() - start, time.process_time() - cpu
        self.loss_b[i] = float(self.loss_b[i])
        self.load.append(self.loader.next()[1])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        if self.resumed is not None:
            self.a[batch_idx], self.a_cpu[batch_idx] = now - self.resumed[0], cpu - self.resumed[1]
        if self.probe is not None:
            self.probe.close(batch_idx)
        self.loss_a[batch_idx] = float(outputs["loss"])
        if batch_idx % 2 == 0:  # A0 B0 B1 A1 A2 B2 B3 A3 ...
            self._run_b(batch_idx)
            self._run_b(batch_idx + 1)
        self.resumed = (time.perf_counter(), time.process_time())


class Probe:
    """Process CPU time spent, per timed Lightning step, in the parts of Lightning's work that atomsift chooses:
    the module's self.log calls, handing metrics to the loggers (log_every_n_steps=1: every step) and the
    batch transfer (apply_to_collection over the AtomsBatch dataclass). Wraps them on this trainer and module
    only (src is untouched)."""

    PARTS = ("self.log", "logger", "transfer")

    def __init__(self, trainer: L.Trainer, module: TrainModule) -> None:
        self.now = dict.fromkeys(self.PARTS, 0.0)
        self.steps: dict[int, dict[str, float]] = {}
        module.log = self._timed(module.log, "self.log")
        connector, loop = trainer._logger_connector, trainer.fit_loop.epoch_loop
        connector.update_train_step_metrics = self._timed(connector.update_train_step_metrics, "logger")
        loop._save_loggers_on_train_batch_end = self._timed(loop._save_loggers_on_train_batch_end, "logger")
        trainer.strategy.batch_to_device = self._timed(trainer.strategy.batch_to_device, "transfer")

    def _timed(self, fn: Any, part: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.now[part] += time.process_time() - start

        return wrapper

    def close(self, step: int) -> None:
        """The step's window ends: keep its sums and start the next."""
        self.steps[step] = self.now
        self.now = dict.fromkeys(self.PARTS, 0.0)


def _max_diff(a: torch.nn.Module | None, b: torch.nn.Module | None) -> float:
    """Largest absolute difference between two modules' parameters (weights after the run, or EMA weights)."""
    if a is None or b is None:
        return 0.0
    return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _median_ci(values: list[float], rng: np.random.Generator) -> tuple[float, float, float]:
    """Median and its 95 % bootstrap interval."""
    x = np.asarray(values)
    boot = np.median(rng.choice(x, size=(2000, x.size)), axis=1)
    return float(np.median(x)), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def measure(
    model: str,
    data: str,
    pairs: int,
    warmup: int,
    out: Path,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run A, B and L side by side on one model and dataset; medians and per-pair ratios."""
    n = pairs + warmup + 1
    module, cfg, batches = build(model, data, n, out, settings)
    bare = BareLoop(module)
    alt = Alternate(bare, batches, Loader(module))
    trainer = make_trainer(cfg, out, 0, progress=True)
    trainer.limit_val_batches = 0  # no validation inside the timed epoch
    trainer.callbacks.append(alt)
    alt.probe = Probe(trainer, module)
    trainer.fit(module, train_dataloaders=prepared_loader(batches))
    keep = [i for i in range(warmup + 1, n) if i in alt.a and i in alt.b]
    rng = np.random.default_rng(0)
    a, b = [alt.a[i] for i in keep], [alt.b[i] for i in keep]
    a_cpu, b_cpu = [alt.a_cpu[i] for i in keep], [alt.b_cpu[i] for i in keep]
    load = alt.load[warmup:]
    start = time.perf_counter()
    trainer.save_checkpoint(out / "probe.ckpt")
    ckpt_s = time.perf_counter() - start
    structures = statistics.mean(float(batches[i].num_structures) for i in keep)
    atoms = statistics.mean(float(batches[i].num_atoms) for i in keep)
    a_med, b_med = statistics.median(a), statistics.median(b)
    row = {
        "model": model,
        "data": data,
        "batch": MODELS[model][1],
        "structures": structures,
        "atoms": atoms,
        "pairs": len(keep),
        "a_ms": 1000 * a_med,
        "b_ms": 1000 * b_med,
        "ratio": _median_ci([x / y for x, y in zip(a, b, strict=True)], rng),
        "a_cpu_ms": 1000 * statistics.median(a_cpu),
        "b_cpu_ms": 1000 * statistics.median(b_cpu),
        "ratio_cpu": _median_ci([x / y for x, y in zip(a_cpu, b_cpu, strict=True)], rng),
        "diff_cpu_ms": 1000 * statistics.median([x - y for x, y in zip(a_cpu, b_cpu, strict=True)]),
        "load_ms": 1000 * statistics.median(load),
        "load_x": a_med / statistics.median(load),
        "dloss": max(abs(alt.loss_a[i] - alt.loss_b[i]) for i in alt.loss_b if i in alt.loss_a),
        "dweights": max(_max_diff(module.model, bare.m.model), _max_diff(module.ema, bare.m.ema)),
        "ckpt_s": ckpt_s,
        "params": sum(p.numel() for p in module.model.parameters()),
    }
    parts = {k: [alt.probe.steps[i][k] for i in keep] for k in Probe.PARTS}
    for k, v in parts.items():
        row[f"{k}_ms"] = 1000 * statistics.median(v)
    rest = [x - y - sum(parts[k][n] for k in Probe.PARTS) for n, (x, y) in enumerate(zip(a_cpu, b_cpu, strict=True))]
    row["rest_ms"] = 1000 * statistics.median(rest)
    return row


def _status(key: str) -> float:
    """MB of a /proc/self/status line (VmRSS, VmHWM)."""
    for line in open("/proc/self/status"):  # noqa: SIM115
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_probe(model: str, data: str) -> None:
    """(child process) Peak resident set of MEMORY_STEPS Lightning steps; prints one JSON line."""
    with tempfile.TemporaryDirectory() as tmp:
        module, cfg, batches = build(model, data, MEMORY_STEPS, Path(tmp))
        trainer = make_trainer(cfg, Path(tmp), 0, progress=False)
        trainer.limit_val_batches = 0
        before = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current resident set
        trainer.fit(module, train_dataloaders=prepared_loader(batches))
        print(json.dumps({"before": before, "peak": _status("VmHWM")}))


def memory(model: str, data: str, threads: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--memory-probe", f"{model}:{data}", "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe {model}:{data} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _pct(r: tuple[float, float, float]) -> str:
    return f"{100 * (r[0] - 1):+.1f} % [{100 * (r[1] - 1):+.1f}, {100 * (r[2] - 1):+.1f}]"


def print_tables(rows: list[dict[str, Any]]) -> None:
    print("Loop overhead: Lightning (A) against the bare loop (B), same batches, A0 B0 B1 A1 A2 B2 ...;")
    print("medians per step; overhead = median over pairs of A / B - 1 [95 % bootstrap interval]")
    print()
    print(
        "| model | data | batch | atoms/batch | pairs | A wall ms | B wall ms | overhead, wall | A CPU ms | B CPU ms "
        "| overhead, CPU | A - B CPU ms | max abs dloss, dweights |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['data']} | {r['batch']} | {r['atoms']:.0f} | {r['pairs']} | {r['a_ms']:.1f} | "
            f"{r['b_ms']:.1f} | {_pct(r['ratio'])} | {r['a_cpu_ms']:.1f} | {r['b_cpu_ms']:.1f} | "
            f"{_pct(r['ratio_cpu'])} | {r['diff_cpu_ms']:.2f} | {r['dloss']:.1e}, {r['dweights']:.1e} |"
        )
    print()
    print("Throughput (Lightning loop), loading rate and peak memory")
    print()
    print(
        "| model | data | params M | structures/s | atoms/s | structures/CPU-s | load ms/batch | loading / step rate "
        "| RSS before MB | peak RSS MB | peak - before MB | checkpoint write s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mem = r.get("mem")
        m = f"{mem['before']:.0f} | {mem['peak']:.0f} | {mem['peak'] - mem['before']:.0f}" if mem else "- | - | -"
        print(
            f"| {r['model']} | {r['data']} | {r['params'] / 1e6:.2f} | {r['structures'] / r['a_ms'] * 1000:.1f} | "
            f"{r['atoms'] / r['a_ms'] * 1000:.0f} | {r['structures'] / r['a_cpu_ms'] * 1000:.1f} | "
            f"{r['load_ms']:.2f} | {r['load_x']:.0f}x | {m} | {r['ckpt_s']:.2f} |"
        )
    print()
    print("Where Lightning's extra time goes (process CPU ms per step, medians; rest = A - B minus the three)")
    print()
    print("| model | data | A - B | self.log (2 calls) | metrics to logger | batch transfer | rest of Lightning |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['data']} | {r['diff_cpu_ms']:.2f} | {r['self.log_ms']:.2f} | {r['logger_ms']:.2f} | "
            f"{r['transfer_ms']:.2f} | {r['rest_ms']:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--data", default=",".join(DATA))
    parser.add_argument("--quick", action="store_true", help="fewer steps (make bench: ~3 min, ~6 the first time)")
    parser.add_argument("--pairs", type=int, help="timed A/B pairs per row (default: per model)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the cores are shared)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet()
    if args.memory_probe:
        memory_probe(*args.memory_probe.split(":"))
        return
    started = time.perf_counter()
    print(f"# atomsift training-loop benchmark  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(
        f"# {cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__} ({args.threads} thread"
        f"{'s' if args.threads > 1 else ''}), lightning {L.__version__}, Python {platform.python_version()}, CPU"
    )
    print(f"# command: {' '.join(sys.argv)}")
    print(f"# load average at start (1/5/15 min): {load_average()}")
    rows = []
    for data in args.data.split(","):
        for model in args.models.split(","):
            pairs, warmup = MODELS[model][3] if args.quick else MODELS[model][2]
            with tempfile.TemporaryDirectory() as tmp:
                row = measure(model, data, args.pairs or pairs, warmup, Path(tmp))
            if not args.no_memory:
                row["mem"] = memory(model, data, args.threads)
            rows.append(row)
            print(f"# done {model} {data} ({time.perf_counter() - started:.0f} s)", flush=True)
    print()
    print_tables(rows)
    print()
    worst = max(r["ratio"][0] for r in rows)
    worst_cpu = max(r["ratio_cpu"][0] for r in rows)
    slowest_load = min(r["load_x"] for r in rows)
    print(
        f"# target loop overhead < 5 %: {'met' if max(worst, worst_cpu) < 1.05 else 'NOT met'} "
        f"(largest median: wall {worst - 1:+.1%}, CPU {worst_cpu - 1:+.1%})"
    )
    print(
        f"# target loading >= 10x the step rate: {'met' if slowest_load >= 10 else 'NOT met'} "
        f"(smallest {slowest_load:.0f}x)"
    )
    print(f"# total wall time {time.perf_counter() - started:.0f} s; load average at end: {load_average()}")


if __name__ == "__main__":
    main()
