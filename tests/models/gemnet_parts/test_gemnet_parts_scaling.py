"""Scale factors: pass-through until fitted, keys, fitting in order of first use."""

from __future__ import annotations

import logging

import torch
from torch import nn

from atomsift.models.backbones.gemnet_oc.scaling import (
    ScaleFactor,
    fit_scale_factors,
    has_unfitted_scale_factors,
    scale_factors_from_file_dict,
    unfitted_scale_factors,
)


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(3.0 * torch.eye(4))
        self.late = ScaleFactor()  # registered first, used second
        self.early = ScaleFactor()
        self.unused = ScaleFactor()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.early(self.lin(x))  # no reference: aim at variance 1
        return self.late(5.0 * y + 1.0, ref=x)  # keep the variance of x


def test_unfitted_is_identity_and_keys():
    sf = ScaleFactor()
    x = torch.randn(3, 2)
    assert not sf.fitted and torch.equal(sf(x), x)
    assert list(sf.state_dict()) == ["scale_factor"] and list(sf.parameters()) == []
    sf.set_(2.0)
    torch.testing.assert_close(sf(x), 2 * x)
    fresh = ScaleFactor()
    fresh.load_state_dict(sf.state_dict())
    assert fresh.fitted and float(fresh.scale_factor) == 2.0


def test_fit_in_order_of_first_use(caplog):
    torch.manual_seed(0)
    model = _Toy()
    batches = [2.0 * torch.randn(500, 4) for _ in range(4)]
    assert has_unfitted_scale_factors(model)
    with caplog.at_level(logging.WARNING):
        fitted = fit_scale_factors(model, batches)
    assert list(fitted) == ["early", "late", "unused"]
    assert "unused" in caplog.text
    assert not has_unfitted_scale_factors(model) and unfitted_scale_factors(model) == []
    x = torch.cat(batches)
    with torch.no_grad():
        y = model.early(model.lin(x))
        out = model(x)
    assert abs(y.var(dim=0).mean().item() - 1.0) < 1e-3
    assert abs(out.var(dim=0).mean().item() / x.var(dim=0).mean().item() - 1.0) < 1e-3
    assert model.training  # mode restored

    # refit=False leaves fitted factors alone
    model.early.set_(7.0)
    assert fit_scale_factors(model, batches, refit=False) == {}
    assert float(model.early.scale_factor) == 7.0


def test_scale_file_dict_conversion():
    d = {"comment": "x", "module.backbone.int_blocks.0.scale_rbf": 2.5, "out_blocks.1.scale_sum": torch.tensor(0.5)}
    sd = scale_factors_from_file_dict(d, prefix="backbone.")
    assert set(sd) == {"backbone.int_blocks.0.scale_rbf.scale_factor", "backbone.out_blocks.1.scale_sum.scale_factor"}
    assert float(sd["backbone.int_blocks.0.scale_rbf.scale_factor"]) == 2.5


def test_enforce_consistency_option():
    import pytest

    from atomsift.errors import ConfigError

    strict = ScaleFactor(enforce_consistency=True)
    strict.set_(2.0)
    strict.load_state_dict({"scale_factor": torch.tensor(2.0)})
    with pytest.raises(ConfigError, match="scale factor"):
        strict.load_state_dict({"scale_factor": torch.tensor(3.0)})
    lenient = ScaleFactor()
    lenient.set_(2.0)
    lenient.load_state_dict({"scale_factor": torch.tensor(3.0)})
    assert float(lenient.scale_factor) == 3.0


def _fit_with_full_passes(model: nn.Module, batches: list, order: list[str]) -> dict[str, float]:
    """The procedure without stopping early: every factor sees whole forward passes."""
    factors = dict(model.named_modules())
    for name in order:
        factors[name].reset_()
    out = {}
    with torch.no_grad():
        for name in order:
            with factors[name].fit_context_():
                for batch in batches:
                    model(batch)
                out[name] = factors[name].fit_()[2]
    return out


class _Twice(nn.Module):
    """`shared` is called twice per pass, so its passes must not stop after its first call."""

    def __init__(self) -> None:
        super().__init__()
        self.shared, self.last = ScaleFactor(), ScaleFactor()
        self.calls_after_shared = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shared(x * 3.0)
        y = self.shared(y + 2.0 * x)
        self.calls_after_shared += 1
        return self.last(y, ref=x)


def test_passes_stop_after_the_fitted_factor_with_the_same_values():
    torch.manual_seed(0)
    batches = [2.0 * torch.randn(300, 4) for _ in range(3)]
    for make in (_Toy, _Twice):
        model = make()
        fitted = fit_scale_factors(model, batches)
        used = [name for name in fitted if name != "unused"]
        assert {k: fitted[k] for k in used} == _fit_with_full_passes(make(), batches, used)
    model = _Twice()
    fit_scale_factors(model, batches)
    # the order pass, then both factors' passes reach the end: shared is called twice, last is the end
    assert model.calls_after_shared == 1 + 2 * len(batches)


def test_gemnet_fit_stops_early_with_the_same_values(ethanol):
    from atomsift.graph import collate
    from atomsift.models.backbones.gemnet_oc.model import GemNetOC

    torch.manual_seed(0)
    model = GemNetOC.from_preset("tiny").eval()
    batches = [collate(ethanol[:2], dtype=torch.float32), collate(ethanol[2:], dtype=torch.float32)]
    reference = GemNetOC.from_preset("tiny").eval()
    reference.load_state_dict(model.state_dict())
    blocks = []
    model.out_mlp_E.register_forward_hook(lambda *_: blocks.append(1))  # the end of a forward pass
    fitted = fit_scale_factors(model, batches)
    assert len(blocks) < len(fitted) * len(batches) // 4  # most passes stopped before the output MLP
    assert fitted == _fit_with_full_passes(reference, batches, list(fitted))
