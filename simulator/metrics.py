"""Pure metric functions of preference tensors (no model, no state).

Polarization indices take a 1-D opinion sample ``z`` (users' positions on the polarity
axis, see :func:`polarity`). Every index is 0 (its minimum) for a point mass.
"""

from __future__ import annotations

import torch


def principal_axis(u: torch.Tensor) -> torch.Tensor:
    """First principal direction of the rows of u (unit vector, sign fixed so that its
    largest-magnitude component is positive). A point mass gives the first basis vector."""
    d = u.shape[1]
    x = (u - u.mean(dim=0)).double()
    cov = x.T @ x
    if float(cov.abs().max()) == 0.0:
        axis = torch.zeros(d, dtype=u.dtype, device=u.device)
        axis[0] = 1.0
        return axis
    _, vecs = torch.linalg.eigh(cov)
    axis = vecs[:, -1]
    if axis[axis.abs().argmax()] < 0:
        axis = -axis
    return axis.to(u.dtype)


def polarity(u: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """Users' positions on the polarity axis: ``<u, axis>`` with a unit axis."""
    return u @ (axis / axis.norm())


def variance_index(z: torch.Tensor) -> float:
    """Polarization as opinion variance (Musco, Musco and Tsourakakis, WWW 2018).

    Their index is the sum ``sum_i (z_i - mean z)^2``; we report the mean (divided by n)
    so that populations of different sizes compare.
    """
    zd = z.double()
    return float(((zd - zd.mean()) ** 2).mean())


def bimodality_coefficient(z: torch.Tensor) -> float:
    """Sarle's bimodality coefficient with the sample corrections of Pfister et al. (2013):

        BC = (g^2 + 1) / (k + 3 (n - 1)^2 / ((n - 2)(n - 3)))

    with g the sample skewness and k the sample excess kurtosis. About 1/3 for a normal
    sample, 5/9 for a uniform one, 1 for two equal point masses; above 5/9 suggests
    bimodality. A point mass (zero variance) gives 0 by convention; needs n >= 4.
    """
    n = z.numel()
    if n < 4:
        raise ValueError("the bimodality coefficient needs at least 4 values")
    x = z.double()
    m = x.mean()
    m2 = ((x - m) ** 2).mean()
    # zero variance up to rounding (the mean of n equal doubles need not be exact)
    if float(m2) <= 1e-24 * max(float(m) ** 2, 1e-300):
        return 0.0
    m3 = ((x - m) ** 3).mean()
    m4 = ((x - m) ** 4).mean()
    g1 = m3 / m2**1.5
    g2 = m4 / m2**2 - 3
    skew = g1 * (n * (n - 1)) ** 0.5 / (n - 2)
    kurt = ((n + 1) * g2 + 6) * (n - 1) / ((n - 2) * (n - 3))
    return float((skew**2 + 1) / (kurt + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def esteban_ray(
    z: torch.Tensor,
    alpha: float = 1.6,
    bins: int = 20,
    lo: float = -1.0,
    hi: float = 1.0,
    k: float = 1.0,
) -> float:
    """Esteban and Ray (Econometrica 1994): ``K sum_i sum_j pi_i^(1+alpha) pi_j |y_i - y_j|``
    over ``bins`` equal-width bins of [lo, hi] (values outside are clipped into the end
    bins), with pi the population shares and y the bin centres. alpha in (0, 1.6]."""
    if not 0 < alpha <= 1.6:
        raise ValueError("alpha must be in (0, 1.6]")
    x = z.double().clamp(lo, hi)
    idx = ((x - lo) / (hi - lo) * bins).long().clamp(0, bins - 1)
    pi = torch.bincount(idx, minlength=bins).double() / x.numel()
    y = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * (hi - lo) / bins
    dist = (y[:, None] - y[None, :]).abs().to(pi.device)
    return float(k * (pi[:, None] ** (1 + alpha) * pi[None, :] * dist).sum())


def mean_pairwise_distance(z: torch.Tensor) -> float:
    """Mean |z_i - z_j| over ordered pairs i != j, exact in O(n log n) by sorting."""
    n = z.numel()
    if n < 2:
        return 0.0
    s = z.double().sort().values
    s = s - s[0]  # shift-invariant; makes a point mass exactly 0
    i = torch.arange(n, dtype=torch.float64, device=s.device)
    total = ((2 * i - n + 1) * s).sum()  # sum over i<j of (s_j - s_i)
    return float(2 * total / (n * (n - 1)))


def extreme_share(z: torch.Tensor, threshold: float = 0.8) -> float:
    """Share of users with ``|z| > threshold``."""
    return float((z.abs() > threshold).double().mean())
