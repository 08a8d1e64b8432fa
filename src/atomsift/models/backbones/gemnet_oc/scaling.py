"""Scale factors: fixed scalar multipliers fitted once so that activations keep unit-ish variance.

A :class:`ScaleFactor` holds one number in the buffer ``scale_factor`` (state_dict key
``<module path>.scale_factor``, as in fairchem-core 1.10 and JMP). Zero means "not fitted", and an
unfitted factor passes its input through unchanged. :func:`fit_scale_factors` fits all factors of a
model one at a time in the order the forward pass first uses them, each with the earlier ones fixed:
``scale = sqrt(Var[ref] / Var[x])`` (or ``sqrt(1 / Var[x])`` without a reference), where Var is the
per-feature variance averaged over features and weighted by the number of rows of each call.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from atomsift.errors import ConfigError
from atomsift.progress import progress_bar

__all__ = [
    "ScaleFactor",
    "fit_scale_factors",
    "has_unfitted_scale_factors",
    "scale_factors_from_file_dict",
    "unfitted_scale_factors",
]

log = logging.getLogger(__name__)


class _FactorObserved(Exception):
    """Raised by the factor being fitted once it has seen a batch: the rest of that forward pass cannot change
    its statistics (factors are fitted in order of first use), so fitting skips it."""


class ScaleFactor(nn.Module):
    """Multiply by a fitted scalar; identity while unfitted (``scale_factor == 0``).

    Args:
        name: optional name (fairchem uses it to look factors up in old scale files).
        enforce_consistency: if True, loading a state_dict whose value differs from an already fitted
            value raises ConfigError (fairchem's default is True; here it is False, so that a
            checkpoint simply overwrites the value).
    """

    scale_factor: Tensor

    def __init__(self, name: str | None = None, enforce_consistency: bool = False) -> None:
        super().__init__()
        self.name = name
        self.index_fn: Callable[[], None] | None = None
        self.stats: dict[str, float] | None = None
        self.stop_when_seen = False  # while fitting: end the forward pass once this factor has observed it
        self.register_buffer("scale_factor", torch.tensor(0.0))
        if enforce_consistency:
            self._register_load_state_dict_pre_hook(self._check_loaded_value)

    def _check_loaded_value(self, state_dict, prefix, *_args) -> None:
        key = prefix + "scale_factor"
        if self.fitted and key in state_dict:
            new = state_dict[key]
            if not torch.allclose(self.scale_factor, new.to(self.scale_factor)):
                raise ConfigError(
                    f"scale factor {key} is {float(self.scale_factor):.6g} but the state_dict holds {float(new):.6g}",
                    fix="reset the scale factors (reset_()) before loading, or load the matching checkpoint",
                )

    @property
    def fitted(self) -> bool:
        """True once a non-zero value is set."""
        return bool(self.scale_factor != 0.0)

    def reset_(self) -> None:
        """Mark as unfitted."""
        self.scale_factor.zero_()

    def set_(self, scale: float | Tensor) -> None:
        """Set the value."""
        self.scale_factor.fill_(float(scale))

    def initialize_(self, *, index_fn: Callable[[], None] | None = None) -> None:
        """Register a callback run at every forward call (used to record the call order)."""
        self.index_fn = index_fn

    @contextmanager
    def fit_context_(self):
        """Collect statistics of the (unscaled) outputs while inside the context."""
        self.stats = {"variance_in": 0.0, "variance_out": 0.0, "n_samples": 0}
        try:
            yield
        finally:
            self.stats = None

    def fit_(self) -> tuple[dict[str, float], float, float]:
        """Set the value from the collected statistics; returns (stats, ratio, value)."""
        stats = self.stats
        if not stats or stats["n_samples"] <= 0 or stats["variance_out"] <= 0 or stats["variance_in"] <= 0:
            raise ConfigError(
                "cannot fit a scale factor: no usable statistics were collected",
                fix="fit on batches with at least two rows reaching this layer",
            )
        var_in = stats["variance_in"] / stats["n_samples"]
        var_out = stats["variance_out"] / stats["n_samples"]
        ratio = var_out / var_in
        value = math.sqrt(1.0 / ratio)
        self.set_(value)
        return {"variance_in": var_in, "variance_out": var_out, "n_samples": stats["n_samples"]}, ratio, value

    @torch.no_grad()
    def _observe(self, x: Tensor, ref: Tensor | None = None) -> None:
        n = x.shape[0]
        if self.stats is None or n < 2:
            return
        self.stats["variance_out"] += float(torch.var(x, dim=0).mean()) * n
        self.stats["variance_in"] += n if ref is None else float(torch.var(ref, dim=0).mean()) * n
        self.stats["n_samples"] += n

    def forward(self, x: Tensor, *, ref: Tensor | None = None) -> Tensor:
        """x (n, ...) -> x * scale_factor (x itself while unfitted); ref: the tensor whose variance x should keep."""
        if self.index_fn is not None:
            self.index_fn()
        if self.fitted:
            x = x * self.scale_factor
        if self.stats is not None:
            self._observe(x, ref=ref)
            if self.stop_when_seen:
                raise _FactorObserved
        return x


def _scale_factor_modules(model: nn.Module) -> dict[str, ScaleFactor]:
    return {name: m for name, m in model.named_modules() if isinstance(m, ScaleFactor)}


def unfitted_scale_factors(model: nn.Module) -> list[str]:
    """Module paths of the ScaleFactor modules of ``model`` that are not fitted."""
    return [name for name, m in _scale_factor_modules(model).items() if not m.fitted]


def has_unfitted_scale_factors(model: nn.Module) -> bool:
    """True if any ScaleFactor in ``model`` still has value 0."""
    return bool(unfitted_scale_factors(model))


def fit_scale_factors(
    model: nn.Module,
    batches: Iterable[Any],
    forward_fn: Callable[[Any], Any] | None = None,
    *,
    refit: bool = True,
    no_grad: bool = True,
    progress: bool = False,
) -> dict[str, float]:
    """Fit every ScaleFactor of ``model``, one by one in order of first use.

    One pass over the first batch records the order; then, for each factor in that order, all
    batches are run with that factor collecting statistics and it is set, so every factor is fitted
    with the ones before it already fixed (fairchem's fit.py procedure). Factors the forward pass
    never reaches are set to 1.0 (a no-op) with a warning. A factor the first pass used once stops each
    of its passes right after it (what follows cannot change its statistics): the same values as full
    passes, 1.6x faster for the small preset (benchmarks/scale_fit_speed.py).

    Args:
        model: module containing ScaleFactor submodules; put in eval mode while fitting.
        batches: a few batches (fairchem uses 16); iterated once per factor, so it is materialised.
        forward_fn: called with each batch; default ``model(batch)``.
        refit: reset and refit factors that are already fitted (False: fit only unfitted ones).
        no_grad: run the passes under torch.no_grad().
        progress: show a bar (stderr) counting the fitted factors; S takes minutes on a CPU.

    Returns:
        {module path: fitted value} in fitting order.
    """
    batches = list(batches)
    if not batches:
        raise ConfigError("fit_scale_factors got no batches", fix="pass a few batches of training data")
    run = forward_fn if forward_fn is not None else model
    factors = _scale_factor_modules(model)
    if refit:
        for m in factors.values():
            m.reset_()
    todo = {name: m for name, m in factors.items() if not m.fitted}
    if not todo:
        return {}

    order: dict[str, int] = {}
    calls: dict[str, int] = {}

    def record(name: str) -> None:
        order.setdefault(name, len(order))
        calls[name] = calls.get(name, 0) + 1

    for name, m in factors.items():
        m.initialize_(index_fn=lambda name=name: record(name))

    was_training = model.training
    model.eval()
    grad_ctx = torch.no_grad if no_grad else torch.enable_grad
    fitted: dict[str, float] = {}
    bar = progress_bar(total=len(todo), desc="fitting scale factors", unit="factor", disable=not progress, leave=False)
    try:
        with grad_ctx():
            run(batches[0])
            for m in factors.values():
                m.initialize_(index_fn=None)
            for name in sorted(todo, key=lambda n: order.get(n, math.inf)):
                module = todo[name]
                if name not in order:
                    log.warning("scale factor %s is never used by the forward pass; setting it to 1", name)
                    module.set_(1.0)
                    fitted[name] = 1.0
                    bar.update()
                    continue
                with module.fit_context_():
                    for batch in batches:
                        module.stop_when_seen = calls[name] == 1  # used twice: the pass must reach both
                        try:
                            run(batch)
                        except _FactorObserved:
                            pass
                    module.stop_when_seen = False
                    stats, ratio, value = module.fit_()
                log.info(
                    "scale factor %s: var_in %.4g, var_out %.4g, ratio %.4g -> %.4g",
                    name,
                    stats["variance_in"],
                    stats["variance_out"],
                    ratio,
                    value,
                )
                fitted[name] = value
                bar.update()
    finally:
        bar.close()
        for m in factors.values():
            m.initialize_(index_fn=None)
            m.stop_when_seen = False
        model.train(was_training)
    return fitted


def scale_factors_from_file_dict(d: Mapping[str, float | Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Turn an old-style scale file dict into state_dict entries.

    fairchem's fit.py / JMP's ``scale_files/*.pt`` and old ``.json`` scale files map module paths
    (e.g. ``"int_blocks.0.trip_interaction.scale_rbf"``, sometimes with ``module.`` or ``backbone.``
    in front) to values; json files may carry a ``"comment"`` entry, which is dropped.

    Args:
        d: the loaded dict ({path: value}).
        prefix: prepended to every key (e.g. ``"backbone."``).

    Returns:
        {prefix + path + ".scale_factor": 0-d float tensor}, ready for ``load_state_dict(strict=False)``.
    """
    out: dict[str, Tensor] = {}
    for key, value in d.items():
        if key == "comment":
            continue
        path = re.sub(r"^(module\.)?(backbone\.)?", "", key)
        path = re.sub(r"\.scale_factor$", "", path)
        out[f"{prefix}{path}.scale_factor"] = torch.as_tensor(value, dtype=torch.float32).detach().clone().reshape(())
    return out
