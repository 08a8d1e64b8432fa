"""Radial, circular and spherical bases of GemNet-OC, in closed form (no sympy).

Names of modules, parameters and buffers follow fairchem-core 1.10 (``rbf.offset``,
``rbf.frequencies``, ``rbf.pregamma``, ``cosφ_basis.offset``, ``circular_basis.offset``,
``scale_rbf.scale_factor`` ...), so fairchem state_dicts load by key.

Real spherical harmonics use the convention of fairchem's ``basis_utils`` (no Condon-Shortley phase):

    Y_l0 = N_l0 P_l(z),   Y_lm = sqrt(2) N_lm P~_lm(z) cos(m phi),   Y_l(-m) = sqrt(2) N_lm P~_lm(z) sin(m phi)

with N_lm = sqrt((2l+1)/(4 pi) (l-m)!/(l+m)!), P~_lm = (-1)^m P_lm (P_lm with the phase), and within
each degree the order m = 0, 1, ..., l, -l, ..., -1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from atomsift.errors import ConfigError

from .scaling import ScaleFactor

__all__ = [
    "BernsteinBasis",
    "CircularBasisLayer",
    "ExponentialEnvelope",
    "GaussianBasis",
    "PolynomialEnvelope",
    "RadialBasis",
    "SphericalBasisLayer",
    "SphericalBesselBasis",
    "get_sph_harm_basis",
    "legendre_polynomials",
    "real_sph_harm",
]


# --------------------------------------------------------------------------- Legendre / harmonics


def legendre_polynomials(z: Tensor, num_degrees: int) -> list[Tensor]:
    """P_0(z) ... P_{num_degrees-1}(z) by Bonnet's recurrence; each has z's shape."""
    out = [torch.ones_like(z)]
    if num_degrees > 1:
        out.append(z)
    for l in range(2, num_degrees):
        out.append(((2 * l - 1) * z * out[l - 1] - (l - 1) * out[l - 2]) / l)
    return out[:num_degrees]


def _norm(l: int, m: int) -> float:
    return math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - m) / math.factorial(l + m))


def _assoc_legendre_no_phase(z: Tensor, num_degrees: int) -> dict[tuple[int, int], Tensor]:
    """P~_lm(z) = (-1)^m P_lm(z) for 0 <= m <= l < num_degrees (i.e. without Condon-Shortley phase)."""
    s = torch.sqrt(torch.clamp(1.0 - z * z, min=0.0))
    p: dict[tuple[int, int], Tensor] = {(0, 0): torch.ones_like(z)}
    for m in range(num_degrees):
        if m > 0:
            p[(m, m)] = (2 * m - 1) * s * p[(m - 1, m - 1)]
        if m + 1 < num_degrees:
            p[(m + 1, m)] = (2 * m + 1) * z * p[(m, m)]
        for l in range(m + 2, num_degrees):
            p[(l, m)] = ((2 * l - 1) * z * p[(l - 1, m)] - (l + m - 1) * p[(l - 2, m)]) / (l - m)
    return p


def real_sph_harm(z: Tensor, phi: Tensor | None, num_degrees: int) -> Tensor:
    """Real spherical harmonics for l < num_degrees in fairchem's order and sign convention.

    Args:
        z: (n,) cos(polar angle).
        phi: (n,) azimuth in radians, or None for the m = 0 harmonics only.
        num_degrees: L; degrees 0..L-1.

    Returns:
        (n, L) if phi is None, else (n, L**2) ordered per degree as m = 0, 1..l, -l..-1.
    """
    if phi is None:
        legendre = legendre_polynomials(z, num_degrees)
        return torch.stack([_norm(l, 0) * p for l, p in enumerate(legendre)], dim=1)
    p = _assoc_legendre_no_phase(z, num_degrees)
    cols: list[Tensor] = []
    for l in range(num_degrees):
        cols.append(_norm(l, 0) * p[(l, 0)])
        cols += [math.sqrt(2.0) * _norm(l, m) * p[(l, m)] * torch.cos(m * phi) for m in range(1, l + 1)]
        cols += [math.sqrt(2.0) * _norm(l, m) * p[(l, m)] * torch.sin(m * phi) for m in range(l, 0, -1)]
    return torch.stack(cols, dim=1)


def get_sph_harm_basis(L_maxdegree: int, zero_m_only: bool = True) -> Callable[..., Tensor]:
    """Function computing the real spherical harmonics basis, as fairchem's ``get_sph_harm_basis``.

    The returned function takes ``(z,)`` when zero_m_only (-> (n, L)) or ``(z, phi)`` otherwise
    (-> (n, L**2)).
    """
    if zero_m_only:
        return lambda z: real_sph_harm(z, None, L_maxdegree)
    return lambda z, phi: real_sph_harm(z, phi, L_maxdegree)


# --------------------------------------------------------------------------- envelopes


class PolynomialEnvelope(nn.Module):
    """Smooth cutoff u(d) = 1 + a d^p + b d^(p+1) + c d^(p+2) for d < 1, else 0 (d = r / cutoff).

    u(1) = u'(1) = u''(1) = 0.
    """

    def __init__(self, exponent: int) -> None:
        super().__init__()
        if exponent <= 0:
            raise ConfigError(f"envelope exponent must be positive, got {exponent}", fix="use e.g. exponent: 5")
        self.p = float(exponent)
        self.a = -(self.p + 1) * (self.p + 2) / 2
        self.b = self.p * (self.p + 2)
        self.c = -self.p * (self.p + 1) / 2

    def forward(self, d_scaled: Tensor) -> Tensor:
        """d_scaled (n,) -> (n,)."""
        p = self.p
        val = 1 + self.a * d_scaled**p + self.b * d_scaled ** (p + 1) + self.c * d_scaled ** (p + 2)
        return torch.where(d_scaled < 1, val, torch.zeros_like(d_scaled))


class ExponentialEnvelope(nn.Module):
    """Smooth cutoff exp(-d^2 / ((1 - d)(1 + d))) for d < 1, else 0 (SpookyNet, Unke et al. 2021)."""

    def forward(self, d_scaled: Tensor) -> Tensor:
        """d_scaled (n,) -> (n,); finite gradients also at and beyond the cutoff."""
        inside = d_scaled < 1
        d = torch.where(inside, d_scaled, torch.zeros_like(d_scaled))
        val = torch.exp(-(d**2) / ((1 - d) * (1 + d)))
        return torch.where(inside, val, torch.zeros_like(d_scaled))


# --------------------------------------------------------------------------- radial functions


#: Gaussian basis values below this are set to zero, and envelope values below ENVELOPE_FLOOR: their
#: products are then zero or normal floats. The Gaussian tails underflow otherwise: exp with a result below
#: float32's smallest normal (1.2e-38) takes a slow path, and every matrix product reading subnormal values
#: (the basis projections forwards, their weight gradients backwards) runs 3-14x slower on x86 CPUs
#: (benchmarks/subnormal_speed.py). Each row also holds values near 1 (the nearest Gaussian), so terms
#: below 1e-20 are far under the rounding of the sums they enter: GemNet-OC's energies and forces were
#: bitwise equal with and without the floor (small and S presets, molecules and oxides).
TINY_BASIS_VALUE = 1e-20
ENVELOPE_FLOOR = 1e-17
_EXP_FLOOR = -46.5  # exp(-46.5) = 6.3e-21 < TINY_BASIS_VALUE: exponents below are clamped, then zeroed


def flush_subnormals(x: Tensor) -> Tensor:
    """x with its subnormal values (below the dtype's smallest normal, 1.2e-38 in float32) set to zero."""
    return x.masked_fill(x.abs() < torch.finfo(x.dtype).tiny, 0.0)


class GaussianBasis(nn.Module):
    """Gaussians exp(coeff (x - offset_k)^2) on ``num_gaussians`` equally spaced centres in [start, stop].

    The centres are the buffer ``offset`` (a parameter if trainable); coeff = -1 / (2 spacing^2).
    """

    def __init__(self, start: float = 0.0, stop: float = 5.0, num_gaussians: int = 50, trainable: bool = False) -> None:
        super().__init__()
        offset = torch.linspace(start, stop, num_gaussians)
        if trainable:
            self.offset = nn.Parameter(offset, requires_grad=True)
        else:
            self.register_buffer("offset", offset)
        self.coeff = -0.5 / ((stop - start) / (num_gaussians - 1)) ** 2

    def forward(self, dist: Tensor) -> Tensor:
        """(n,) -> (n, num_gaussians)."""
        diff = dist[:, None] - self.offset[None, :]
        arg = self.coeff * diff * diff
        return nn.functional.threshold(torch.exp(arg.clamp_min(_EXP_FLOOR)), TINY_BASIS_VALUE, 0.0)


class SphericalBesselBasis(nn.Module):
    """sqrt(2 / cutoff^3) sin(f_k d) / d with trainable frequencies f_k = k pi (d = r / cutoff)."""

    def __init__(self, num_radial: int, cutoff: float) -> None:
        super().__init__()
        self.norm_const = math.sqrt(2.0 / cutoff**3)
        self.frequencies = nn.Parameter(math.pi * torch.arange(1, num_radial + 1, dtype=torch.float32))

    def forward(self, d_scaled: Tensor) -> Tensor:
        """(n,) -> (n, num_radial)."""
        d = d_scaled[:, None]
        return self.norm_const / d * torch.sin(self.frequencies * d)


class BernsteinBasis(nn.Module):
    """Bernstein polynomials in exp(-gamma d), gamma = softplus(pregamma) (SpookyNet)."""

    def __init__(self, num_radial: int, pregamma_initial: float = 0.45264) -> None:
        super().__init__()
        k = torch.arange(num_radial)
        binom = torch.tensor([math.comb(num_radial - 1, int(i)) for i in k], dtype=torch.float32)
        self.register_buffer("prefactor", binom, persistent=False)
        self.pregamma = nn.Parameter(torch.tensor(pregamma_initial, dtype=torch.float32))
        self.softplus = nn.Softplus()
        self.register_buffer("exp1", k[None, :], persistent=False)
        self.register_buffer("exp2", (num_radial - 1 - k)[None, :], persistent=False)

    def forward(self, d_scaled: Tensor) -> Tensor:
        """(n,) -> (n, num_radial)."""
        x = torch.exp(-self.softplus(self.pregamma) * d_scaled)[:, None]
        return self.prefactor * x**self.exp1 * (1 - x) ** self.exp2


def _split_spec(spec: dict, what: str) -> tuple[str, dict]:
    if "name" not in spec:
        raise ConfigError(f"{what} needs a 'name' entry, got {spec!r}")
    params = dict(spec)
    return str(params.pop("name")).lower(), params


class RadialBasis(nn.Module):
    """Envelope(d / cutoff) * rbf(d / cutoff), optionally scaled by a fitted ScaleFactor.

    Args:
        num_radial: number of radial functions.
        cutoff: cutoff in Angstrom.
        rbf: {"name": "gaussian" | "spherical_bessel" | "bernstein", ...hyperparameters}.
        envelope: {"name": "polynomial", "exponent": 5} or {"name": "exponential"}.
        scale_basis: add ``scale_rbf`` (a ScaleFactor) after the basis.
    """

    def __init__(
        self,
        num_radial: int,
        cutoff: float,
        rbf: dict | None = None,
        envelope: dict | None = None,
        scale_basis: bool = False,
    ) -> None:
        super().__init__()
        rbf = {"name": "gaussian"} if rbf is None else rbf
        envelope = {"name": "polynomial", "exponent": 5} if envelope is None else envelope
        self.inv_cutoff = 1.0 / cutoff
        self.scale_basis = scale_basis
        if scale_basis:
            self.scale_rbf = ScaleFactor()

        env_name, env_params = _split_spec(envelope, "envelope")
        if env_name == "polynomial":
            self.envelope = PolynomialEnvelope(**env_params)
        elif env_name == "exponential":
            self.envelope = ExponentialEnvelope(**env_params)
        else:
            raise ConfigError(f"unknown envelope {env_name!r}", fix="use 'polynomial' or 'exponential'")

        rbf_name, rbf_params = _split_spec(rbf, "rbf")
        self._floored = rbf_name == "gaussian"
        if rbf_name == "gaussian":
            self.rbf = GaussianBasis(start=0, stop=1, num_gaussians=num_radial, **rbf_params)
        elif rbf_name == "spherical_bessel":
            self.rbf = SphericalBesselBasis(num_radial=num_radial, cutoff=cutoff, **rbf_params)
        elif rbf_name == "bernstein":
            self.rbf = BernsteinBasis(num_radial=num_radial, **rbf_params)
        else:
            raise ConfigError(
                f"unknown radial basis {rbf_name!r}", fix="use 'gaussian', 'spherical_bessel' or 'bernstein'"
            )

    def forward(self, d: Tensor) -> Tensor:
        """Distances (E,) Angstrom -> (E, num_radial)."""
        d_scaled = d * self.inv_cutoff
        env = self.envelope(d_scaled)
        if self._floored:  # Gaussians >= TINY_BASIS_VALUE or 0: the product has no subnormals
            out = env.masked_fill(env.abs() < ENVELOPE_FLOOR, 0.0)[:, None] * self.rbf(d_scaled)
        else:
            out = flush_subnormals(env[:, None] * self.rbf(d_scaled))
        if self.scale_basis:
            out = self.scale_rbf(out)
        return out


# --------------------------------------------------------------------------- angular layers


class CircularBasisLayer(nn.Module):
    """Radial basis of the edge and a basis in cos(angle) of each triplet.

    Args:
        num_spherical: number of angular functions.
        radial_basis: the RadialBasis used for the distances (child ``radial_basis``).
        cbf: {"name": "spherical_harmonics"} (Y_l0, l < num_spherical), {"name": "legendre_outer"}
            (same functions) or {"name": "gaussian", ...} (Gaussians on [-1, 1]).
        scale_basis: add ``scale_cbf`` after the angular basis.
    """

    def __init__(self, num_spherical: int, radial_basis: RadialBasis, cbf: dict, scale_basis: bool = False) -> None:
        super().__init__()
        self.radial_basis = radial_basis
        self.scale_basis = scale_basis
        if scale_basis:
            self.scale_cbf = ScaleFactor()
        name, params = _split_spec(cbf, "cbf")
        if name == "gaussian":
            self.cosφ_basis = GaussianBasis(start=-1, stop=1, num_gaussians=num_spherical, **params)
        elif name in ("spherical_harmonics", "legendre_outer"):
            self.cosφ_basis = get_sph_harm_basis(num_spherical, zero_m_only=True)
        else:
            raise ConfigError(
                f"unknown circular basis {name!r}", fix="use 'spherical_harmonics', 'legendre_outer' or 'gaussian'"
            )

    def forward(self, D_ca: Tensor, cosφ_cab: Tensor) -> tuple[Tensor, Tensor]:
        """Distances (E,), cosines (T,) -> radial (E, num_radial), circular (T, num_spherical)."""
        rad = self.radial_basis(D_ca)
        cir = self.cosφ_basis(cosφ_cab)
        if self.scale_basis:
            cir = self.scale_cbf(cir)
        return rad, cir


class SphericalBasisLayer(nn.Module):
    """Radial basis of the edge and a basis in (cos phi, theta) of each quadruplet.

    Args:
        num_spherical: L; the basis has L**2 functions.
        radial_basis: the RadialBasis used for the distances (child ``radial_basis``).
        sbf: {"name": "spherical_harmonics"} (Y_lm(cos phi, theta)), {"name": "legendre_outer"}
            (outer product Y_l0(cos phi) Y_l'0(cos theta)) or {"name": "gaussian_outer", ...}.
        scale_basis: add ``scale_sbf`` after the angular basis.
    """

    def __init__(self, num_spherical: int, radial_basis: RadialBasis, sbf: dict, scale_basis: bool = False) -> None:
        super().__init__()
        self.num_spherical = num_spherical
        self.radial_basis = radial_basis
        self.scale_basis = scale_basis
        if scale_basis:
            self.scale_sbf = ScaleFactor()
        name, params = _split_spec(sbf, "sbf")
        self._kind = name
        if name == "spherical_harmonics":
            self._sph = get_sph_harm_basis(num_spherical, zero_m_only=False)
        elif name == "legendre_outer":
            self._cir = get_sph_harm_basis(num_spherical, zero_m_only=True)
        elif name == "gaussian_outer":
            self.circular_basis = GaussianBasis(start=-1, stop=1, num_gaussians=num_spherical, **params)
        else:
            raise ConfigError(
                f"unknown spherical basis {name!r}",
                fix="use 'spherical_harmonics', 'legendre_outer' or 'gaussian_outer'",
            )

    def spherical_basis(self, cosφ: Tensor, ϑ: Tensor) -> Tensor:
        """cos phi (Q,), theta (Q,) radians -> (Q, num_spherical**2)."""
        if self._kind == "spherical_harmonics":
            return self._sph(cosφ, ϑ)
        f = self._cir if self._kind == "legendre_outer" else self.circular_basis
        outer = f(cosφ)[:, :, None] * f(torch.cos(ϑ))[:, None, :]
        return outer.reshape(cosφ.shape[0], self.num_spherical**2)

    @property
    def factorable(self) -> bool:
        """True if the basis is an outer product of a cos phi and a theta factor (see `factors`)."""
        return self._kind in ("legendre_outer", "gaussian_outer") and not self.scale_basis

    def factors(self, D_ca: Tensor, cosφ: Tensor, ϑ: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The outer-product basis as its factors: distances (E,), cos phi (P,), theta (Q,) -> radial
        (E, num_radial), f(cos phi) (P, L), f(cos theta) (Q, L); ``spherical_basis`` is their outer product
        (reshaped to L**2, first factor major) when cos phi is given per quadruplet."""
        f = self._cir if self._kind == "legendre_outer" else self.circular_basis
        return self.radial_basis(D_ca), f(cosφ), f(torch.cos(ϑ))

    def forward(self, D_ca: Tensor, cosφ_cab: Tensor, θ_cabd: Tensor) -> tuple[Tensor, Tensor]:
        """Distances (E,), cos phi (Q,), theta (Q,) -> radial (E, num_radial), spherical (Q, L**2)."""
        rad = self.radial_basis(D_ca)
        sph = self.spherical_basis(cosφ_cab, θ_cabd)
        if self.scale_basis:
            sph = self.scale_sbf(sph)
        return rad, sph
