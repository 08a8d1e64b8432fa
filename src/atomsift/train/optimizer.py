"""How atomsift's trainer builds its optimizer, apart from Lightning so benchmarks in other environments
(fairchem's side environment) build the same one."""

from __future__ import annotations

import torch


def fused_adamw(params: list[torch.Tensor], precision: str = "32-true") -> bool | None:
    """AdamW's ``fused`` argument as atomsift's trainer sets it: True (PyTorch's one-kernel AdamW) for CPU
    parameters outside mixed precision, where it is 2.9x as fast as the per-tensor loop PyTorch picks by default
    on CPU (GemNet-OC S, 39M parameters: 27 ms against 79 ms per step, benchmarks/optimizer_speed.py in
    benchmarks/RESULTS.md); None (PyTorch's default) elsewhere: under mixed precision Lightning refuses to clip
    gradients of an optimizer that unscales them itself. benchmarks/train_step_speed.py uses this rule too."""
    on_cpu = bool(params) and all(p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64) for p in params)
    return True if on_cpu and "mixed" not in precision else None
