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
