"""Bases of GemNet-OC: harmonics and Legendre polynomials against scipy, envelopes, shapes and keys."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

from atomsift.errors import ConfigError
from atomsift.models.backbones.gemnet_oc.bases import (
    TINY_BASIS_VALUE,
    CircularBasisLayer,
    ExponentialEnvelope,
    PolynomialEnvelope,
    RadialBasis,
    SphericalBasisLayer,
    flush_subnormals,
    get_sph_harm_basis,
    legendre_polynomials,
    real_sph_harm,
)

L = 7


def _scipy_real_sh(l: int, m: int, polar: np.ndarray, azimuth: np.ndarray) -> np.ndarray:
    """Real SH in fairchem's convention from scipy's complex ones (which carry the Condon-Shortley phase)."""
    if hasattr(special, "sph_harm_y"):
        y = special.sph_harm_y(l, abs(m), polar, azimuth)
    else:  # scipy < 1.15
        y = special.sph_harm(abs(m), l, azimuth, polar)
    if m == 0:
        return y.real
    part = y.real if m > 0 else y.imag
    return math.sqrt(2.0) * (-1) ** abs(m) * part


def test_real_sph_harm_matches_scipy():
    g = torch.Generator().manual_seed(0)
    z = torch.rand(300, generator=g, dtype=torch.float64) * 2 - 1
    z[:3] = torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64)
    phi = torch.rand(300, generator=g, dtype=torch.float64) * 2 * math.pi
    ours = real_sph_harm(z, phi, L).numpy()
    polar, azimuth = np.arccos(z.numpy()), phi.numpy()
    col = 0
    for l in range(L):
        for m in [0, *range(1, l + 1), *range(-l, 0)]:
            np.testing.assert_allclose(ours[:, col], _scipy_real_sh(l, m, polar, azimuth), atol=1e-12, rtol=0)
            col += 1
    assert col == L * L == ours.shape[1]


def test_zero_m_harmonics_are_scaled_legendre():
    z = torch.linspace(-1, 1, 101, dtype=torch.float64)
    ours = get_sph_harm_basis(L, zero_m_only=True)(z).numpy()
    for l in range(L):
        ref = math.sqrt((2 * l + 1) / (4 * math.pi)) * special.lpmv(0, l, z.numpy())
        np.testing.assert_allclose(ours[:, l], ref, atol=1e-13)
    full = get_sph_harm_basis(L, zero_m_only=False)(z, torch.zeros_like(z)).numpy()
    np.testing.assert_allclose(full[:, [l * l for l in range(L)]], ours, atol=1e-13)


def test_legendre_matches_scipy():
    z = torch.linspace(-1, 1, 57, dtype=torch.float64)
    for l, p in enumerate(legendre_polynomials(z, 10)):
        np.testing.assert_allclose(p.numpy(), special.eval_legendre(l, z.numpy()), atol=1e-13)


def test_harmonics_orthonormal_on_sphere():
    nodes, weights = np.polynomial.legendre.leggauss(16)
    nphi = 32
    z = torch.tensor(np.repeat(nodes, nphi))
    phi = torch.tensor(np.tile(np.arange(nphi) * 2 * math.pi / nphi, len(nodes)))
    w = torch.tensor(np.repeat(weights, nphi) * 2 * math.pi / nphi)
    y = real_sph_harm(z, phi, L)
    gram = (y * w[:, None]).T @ y
    torch.testing.assert_close(gram, torch.eye(L * L, dtype=torch.float64), atol=1e-10, rtol=0)


@pytest.mark.parametrize("exponent", [3, 5, 6])
def test_polynomial_envelope_smooth_at_cutoff(exponent):
    env = PolynomialEnvelope(exponent)
    d = torch.tensor([0.0, 1 - 1e-6, 1.0, 1.3], dtype=torch.float64, requires_grad=True)
    u = env(d)
    (du,) = torch.autograd.grad(u.sum(), d, create_graph=True)
    (d2u,) = torch.autograd.grad(du.sum(), d)
    assert u[0].item() == pytest.approx(1.0)
    assert abs(u[1].item()) < 1e-12 and abs(du[1].item()) < 1e-8 and abs(d2u[1].item()) < 1e-2
    assert u[2].item() == 0.0 and u[3].item() == 0.0 and du[3].item() == 0.0
    dd = torch.linspace(0, 1, 200, dtype=torch.float64)[:-1]
    assert torch.all(env(dd) > -1e-12) and torch.all(env(dd) <= 1 + 1e-12)


def test_exponential_envelope():
    env = ExponentialEnvelope()
    d = torch.tensor([0.0, 0.5, 1 - 1e-4, 1.0, 1.5], dtype=torch.float64, requires_grad=True)
    u = env(d)
    (du,) = torch.autograd.grad(u.sum(), d)
    assert u[0].item() == 1.0 and u[1].item() == pytest.approx(math.exp(-0.25 / 0.75))
    assert abs(u[2].item()) < 1e-12 and u[3].item() == 0.0 and u[4].item() == 0.0
    assert torch.isfinite(du).all()


@pytest.mark.parametrize(
    ("rbf", "keys"),
    [
        ({"name": "gaussian"}, ["rbf.offset"]),
        ({"name": "spherical_bessel"}, ["rbf.frequencies"]),
        ({"name": "bernstein"}, ["rbf.pregamma"]),
    ],
)
def test_radial_basis_variants(rbf, keys):
    rb = RadialBasis(num_radial=8, cutoff=6.0, rbf=rbf, envelope={"name": "polynomial", "exponent": 5})
    assert sorted(rb.state_dict()) == keys
    d = torch.tensor([0.5, 3.0, 5.99, 6.0, 7.0])
    out = rb(d)
    assert out.shape == (5, 8) and torch.isfinite(out).all()
    assert torch.all(out[3:] == 0)


def test_radial_basis_gaussian_values_and_scale_key():
    rb = RadialBasis(num_radial=5, cutoff=4.0, scale_basis=True)
    assert sorted(rb.state_dict()) == ["rbf.offset", "scale_rbf.scale_factor"]
    d = torch.tensor([1.0], dtype=torch.float64)
    rb = rb.double()
    x = 0.25
    env = 1 - 21 * x**5 + 35 * x**6 - 15 * x**7
    ref = [env * math.exp(-0.5 * (x - k / 4) ** 2 / 0.25**2) for k in range(5)]
    torch.testing.assert_close(rb(d)[0], torch.tensor(ref, dtype=torch.float64))


def test_bad_names_raise_config_error():
    with pytest.raises(ConfigError):
        RadialBasis(4, 5.0, rbf={"name": "nope"})
    with pytest.raises(ConfigError):
        RadialBasis(4, 5.0, envelope={"name": "nope"})
    rb = RadialBasis(4, 5.0)
    with pytest.raises(ConfigError):
        CircularBasisLayer(3, rb, cbf={"name": "nope"})
    with pytest.raises(ConfigError):
        SphericalBasisLayer(3, rb, sbf={"name": "nope"})


def test_circular_and_spherical_layers():
    rb = RadialBasis(num_radial=6, cutoff=5.0)
    d = torch.tensor([1.0, 2.0, 3.0])
    cos = torch.tensor([-1.0, -0.3, 0.2, 0.9])
    theta = torch.tensor([0.1, 1.0, 2.0, 3.0])
    cir_layer = CircularBasisLayer(4, rb, cbf={"name": "spherical_harmonics"})
    rad, cir = cir_layer(d, cos)
    assert rad.shape == (3, 6) and cir.shape == (4, 4)
    torch.testing.assert_close(cir, real_sph_harm(cos, None, 4))
    gauss = CircularBasisLayer(4, rb, cbf={"name": "gaussian"}, scale_basis=True)
    assert "cosφ_basis.offset" in gauss.state_dict() and "scale_cbf.scale_factor" in gauss.state_dict()
    assert "radial_basis.rbf.offset" in gauss.state_dict()

    sph = SphericalBasisLayer(4, rb, sbf={"name": "legendre_outer"})
    _, s = sph(d, cos, theta)
    ref = (cir[:, :, None] * real_sph_harm(torch.cos(theta), None, 4)[:, None, :]).reshape(4, 16)
    torch.testing.assert_close(s, ref)
    _, s = SphericalBasisLayer(4, rb, sbf={"name": "spherical_harmonics"})(d, cos, theta)
    torch.testing.assert_close(s, real_sph_harm(cos, theta, 4))
    go = SphericalBasisLayer(4, rb, sbf={"name": "gaussian_outer"})
    assert "circular_basis.offset" in go.state_dict()
    assert go(d, cos, theta)[1].shape == (4, 16)


def test_radial_basis_has_no_subnormals():
    """Gaussian tails underflow into subnormals (slow matrix products): values below TINY_BASIS_VALUE are zero,
    every other value is the plain formula's, bit for bit."""
    basis = RadialBasis(128, 12.0, rbf={"name": "gaussian"}, envelope={"name": "polynomial", "exponent": 5})
    d = torch.linspace(0.5, 11.99999, 4000)
    scaled = d * basis.inv_cutoff
    diff = scaled[:, None] - basis.rbf.offset[None, :]
    gauss = torch.exp(basis.rbf.coeff * diff * diff)
    raw = basis.envelope(scaled)[:, None] * gauss
    tiny = torch.finfo(torch.float32).tiny
    assert int(((raw != 0) & (raw.abs() < tiny)).sum()) > 1000  # the case exists
    out = basis(d)
    assert not bool(((out != 0) & (out.abs() < tiny)).any())
    kept = gauss >= TINY_BASIS_VALUE
    assert torch.equal(out[kept], raw[kept]) and bool((out[~kept] == 0).all())
    assert bool((raw[~kept].abs() < 1e-19).all())
    x = torch.tensor([1e-39, -1e-40, 1.2e-38, -3.0, 0.0], dtype=torch.float32)
    assert flush_subnormals(x).tolist() == [0.0, 0.0, x[2].item(), -3.0, 0.0]
    assert flush_subnormals(torch.tensor([1e-310, 1e-300], dtype=torch.float64)).tolist() == [0.0, 1e-300]
