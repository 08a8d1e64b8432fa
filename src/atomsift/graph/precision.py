"""Geometry outside 16-bit autocast.

Lightning's `bf16-mixed` / `16-mixed` run the model's forward under `torch.autocast`, which computes every
matrix product (`mm`, `bmm`, `einsum`, `@`) in bf16 / fp16. Graph construction uses products for periodic
image shifts (S @ cell); in bf16 a 10 A shift is off by up to 0.04 A, which changes which pairs fall inside
the cutoff or among the nearest neighbours, and every edge vector. Functions decorated with `full_precision`
run with autocast switched off, in the dtype of their inputs (float64 inputs are never cast by autocast).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

__all__ = ["full_precision"]

P = ParamSpec("P")
R = TypeVar("R")
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def full_precision(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator: run `fn` with every active autocast switched off (a no-op when none is active)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        active = [d for d in _DEVICE_TYPES if torch.is_autocast_enabled(d)]
        if not active:
            return fn(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            for device_type in active:
                stack.enter_context(torch.autocast(device_type, enabled=False))
            return fn(*args, **kwargs)

    return wrapper
