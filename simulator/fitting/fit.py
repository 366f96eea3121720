"""Maximum-likelihood fit of one family with each user's initial preferences as a
nuisance parameter.

Every user has their own initial preference vector ``u0`` (a unit vector), so the
number of nuisance parameters grows with the number of users while each user has only
T events: the plain joint maximum likelihood of the family's parameters is then biased
toward "no drift" (the incidental-parameter problem of Neyman and Scott 1948; in dynamic
panels, Nickell 1981). We therefore treat ``u0`` as a random effect with a flat prior
on the sphere and maximize the marginal likelihood

    l_m(theta) = sum_u log integral exp(l_u(theta, u)) du   (over the sphere),

each user's integral importance-sampled around their mode ``u0_u(theta)`` with a proposal
shaped by the expected information there (:func:`user_terms`). Its Laplace approximation
``l_u(theta, u0_u(theta)) - 1/2 log det J_u(theta)`` (Cox and Reid 1987) leaves an O(1/T)
error that moves with ``theta`` and biased the estimates by 1-4% at 50 events per user.
``l_m`` is a sum over users, so each user's contribution at a point is kept: bootstrap
replicates over users are reweighted sums (see :mod:`.uncertainty`).

The search is derivative-free on the unconstrained scale (sigmoid / softplus maps each
parameter to its range): a coarse grid on a subsample of users, then a compass search
with parabolic steps from its best point (:func:`maximize`).
"""

from __future__ import annotations

import itertools
import math
import pickle
from collections import deque
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch

from ..geometry import unit
from .families import FAMILIES, Family
from .likelihood import ChoiceForm, Items, consumed_mean, event_loglik, prepared, states
from .log import EventLog

#: logistic-gate width (radians) of the bounded-confidence threshold while fitting
SMOOTH = 0.05
#: floor of each user's information eigenvalues (keeps users with few events finite)
RIDGE = 1e-3
#: importance-sampling draws per user for the marginal likelihood (see :func:`user_terms`)
DRAWS = 16
#: degrees of freedom of the importance-sampling proposal (a multivariate t)
TAIL_DF = 4
#: one importance-sampling draw in this many (at least one) is uniform on the sphere
UNIFORM_SHARE = 8
#: the longest Newton step (radians) that centres a user's proposal on their mode
NEWTON_MAX = 0.05
#: the gain in a user's log-likelihood at their mode for which a refit from their static
#: fit replaces a fit that stopped where the information is not positive definite
REFIT_GAIN = 1e-3
#: floor of the proposal's precision (at most about 3 radians of spread on the sphere)
PROPOSAL_FLOOR = 0.1
#: rows (users x draws) whose likelihood is evaluated in one pass: at most the rows an
#: evaluation stacks anyway (the Evaluator's ``max_rows``), whose memory
#: auditor/budget.py's ``estimate_fit`` counts
DRAW_ROWS = 8192
#: coarse-grid box on the unconstrained scale
RAW_LOW, RAW_HIGH = -7.0, 4.0
#: the box the search stays in: at its lower edge a parameter is within 0.001 of its
#: range from its lower bound (sigmoid(-7), softplus(-7)); at the upper, within 0.001
#: for a bounded parameter (sigmoid(7)), 7 for an unbounded one
SEARCH_LOW, SEARCH_HIGH = RAW_LOW, RAW_HIGH + 3.0
STATIC = FAMILIES["static"]
#: evaluations per initial-preference fit at the coarse grid's points
ROUGH_EVALS = 25
#: a user's initial-preference fit ends when the norm of their log-likelihood's gradient
#: on the sphere falls below U0_GTOL (nats per radian) or their next step's predicted
#: gain below U0_FTOL nats (see :func:`_sphere_bfgs`); ARMIJO: the line search's
#: sufficient-decrease constant
U0_GTOL, U0_FTOL, ARMIJO = 1e-4, 1e-6, 1e-4
#: the newest points that keep each user's curvature for the warm starts of the next
#: (the best point keeps it too)
CURVATURE_KEPT = 8
#: users the coarse grid is evaluated on (a seeded subsample of larger logs): the grid
#: only locates a start for the search, which then uses every user
ROUGH_USERS = 300


def initial_u0(log: EventLog, items: Items, seed: int = 0) -> torch.Tensor:
    """Each user's consumed-item mean direction (random for users with no click)."""
    s = consumed_mean(log, items)
    gen = torch.Generator().manual_seed(seed)
    empty = s.norm(dim=1) < 1e-9
    s = torch.where(empty[:, None], torch.randn(s.shape, generator=gen), s)
    return unit(s + torch.randn(s.shape, generator=gen) * 1e-3)


def _lbfgs(params: list[torch.Tensor], loss_fn, max_evals: int) -> int:
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_evals,
        max_eval=int(max_evals * 1.25),
        tolerance_grad=1e-5,
        tolerance_change=1e-6,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    evals = 0

    def closure() -> torch.Tensor:
        nonlocal evals
        evals += 1
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)
    return evals


def theta_tensors(theta: dict[str, float] | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter values as tensors: scalars, or [B] per-row values (stacked points)."""
    return {
        k: v if isinstance(v, torch.Tensor) else torch.tensor(float(v)) for k, v in theta.items()
    }


@dataclass
class Point:
    """The likelihood at one parameter value: per user, the log marginal likelihood
    (initial preferences integrated out, see :func:`user_terms`) and their fitted
    initial preferences (the warm start of nearby points)."""

    raw: tuple[float, ...]
    theta: dict[str, float]
    marginal_u: torch.Tensor  # [U] float64
    u0: torch.Tensor  # [U, d]
    #: [U, d, d] float64 each user's last inverse-Hessian approximation (the warm start's
    #: curvature, see :func:`_sphere_bfgs`); kept only on the :data:`CURVATURE_KEPT`
    #: newest points and the best, the likely warm starts of the next
    curvature: torch.Tensor | None = None

    @property
    def marginal(self) -> float:
        return float(self.marginal_u.sum())


def fit_u0(
    family: Family,
    theta: dict[str, float] | dict[str, torch.Tensor],
    log: EventLog,
    items: Items,
    choice: ChoiceForm,
    weight: torch.Tensor,
    u0: torch.Tensor,
    max_evals: int = 100,
    curvature: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's maximum-likelihood initial preferences at fixed parameters (``theta``
    scalars, or [U] per-row values), from ``u0``, in at most ``max_evals`` evaluations of
    the users still being fitted (see :func:`_sphere_bfgs`), and each user's final
    inverse-Hessian approximation [U, d, d] (float64): ``curvature`` for the next fit
    started here (rows of NaN: none known)."""
    th = theta_tensors(theta)
    smooth = SMOOTH if family.smooth_gate else 0.0

    def objective(x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        part = log if len(rows) == log.users else log.subset(rows)
        own = {k: v[rows] if v.dim() else v for k, v in th.items()}
        raw = x.to(u0.dtype).requires_grad_(True)
        ll = event_loglik(family, own, unit(raw), part, items, choice, smooth)
        # summed in float64: a float32 total cannot resolve the last steps' changes
        total = (ll.double() * weight[rows]).sum(dim=1)
        (grad,) = torch.autograd.grad(total.sum(), raw)
        return -total.detach(), -grad.double()

    x, h = _sphere_bfgs(objective, u0, max_evals, curvature)
    return x.to(u0.dtype), h


def _tangent(v: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """``v`` projected on the tangent space of the sphere at the unit vectors ``at``
    (over the last dimension)."""
    return v - (v * at).sum(dim=-1, keepdim=True) * at


def _sphere_bfgs(
    objective, x0: torch.Tensor, max_evals: int, h0: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimizes U independent functions of a direction, ``f_u(x / |x|)``, from the rows
    of ``x0`` [U, d]; ``objective(x [R, d], rows [R])`` gives the values [R] and
    gradients [R, d] (float64) of the users ``rows`` at the unit vectors ``x``. Returns
    [U, d] unit vectors and each user's last inverse-Hessian approximation [U, d, d].

    Each user has their own BFGS on the sphere: a step along the tangent space, mapped
    back onto the sphere by normalizing (a retraction), with vectors carried from one
    point's tangent space to the next by projection (Absil, Mahony and Sepulchre 2008,
    ch. 8); their own d x d inverse-Hessian approximation, its first update scaled as
    Shanno and Phua (1978) propose; and their own backtracking line search (Armijo's
    condition; a step that fails is halved). Users are independent given the
    parameters, so one joint optimizer would give them one line search and one curvature
    history, and the worst-conditioned users then hold back all the others: a joint
    L-BFGS left bounded confidence's users short of their maximum after 100 iterations,
    at every point (bench/fit_profile.py). Each evaluation takes only the users still
    being fitted. A user is done when their gradient on the sphere falls below
    :data:`U0_GTOL`, or when the decrease their next step can make is under
    :data:`U0_FTOL` nats (a user's float32 likelihood resolves about 1e-5); the batch
    stops after ``max_evals`` evaluations.

    ``h0`` [U, d, d]: inverse-Hessian approximations to start from (rows of NaN: none),
    the last ones of a fit at nearby parameters; carried to ``x0``'s tangent spaces by
    projection. A warm start then takes near-Newton steps from the first (Nocedal and
    Wright 2006, 6.1, on the initial matrix), where a user whose curvature must be learnt
    again spends about d - 1 steps on it."""
    users, d = x0.shape
    x = unit(x0.double())
    eye = torch.eye(d, dtype=torch.float64)

    def projector(at: torch.Tensor) -> torch.Tensor:
        return eye - at[:, :, None] * at[:, None, :]

    f, g = objective(x, torch.arange(users))
    g = _tangent(g, x)
    # a first step of at most 1 (45 degrees): the curvature is not known yet
    h = projector(x) / g.norm(dim=1).clamp_min(1.0)[:, None, None]
    fresh = torch.ones(users, dtype=torch.bool)  # no update yet: the first is scaled
    if h0 is not None:
        known = torch.isfinite(h0).all(dim=2).all(dim=1)
        move = projector(x[known])
        h[known] = move @ h0[known].double() @ move
        fresh[known] = False
    step = torch.ones(users, dtype=torch.float64)
    active = g.norm(dim=1) >= U0_GTOL
    for _ in range(max_evals - 1):
        rows = torch.nonzero(active)[:, 0]
        here = x[rows]
        p = _tangent(-(h[rows] @ g[rows, :, None])[..., 0], here)
        slope = (g[rows] * p).sum(dim=1)
        uphill = slope >= 0  # the approximation lost its curvature (rounding): start again
        if bool(uphill.any()):
            h[rows[uphill]] = projector(here[uphill])
            fresh[rows[uphill]] = True
            p = torch.where(uphill[:, None], -g[rows], p)
            slope = (g[rows] * p).sum(dim=1)
        t = step[rows]
        tiny = -t * slope < U0_FTOL
        active[rows[tiny]] = False
        keep = ~tiny
        rows, here, p, slope, t = rows[keep], here[keep], p[keep], slope[keep], t[keep]
        if not len(rows):
            break
        there = unit(here + t[:, None] * p)
        f_new, g_new = objective(there, rows)
        g_new = _tangent(g_new, there)
        ok = (f_new <= f[rows] + ARMIJO * t * slope) & torch.isfinite(g_new).all(dim=1)
        step[rows[~ok]] *= 0.5
        done, there, g_new = rows[ok], there[ok], g_new[ok]
        # the step and the gradient's change, in the new point's tangent space
        s = _tangent(t[ok, None] * p[ok], there)
        y = g_new - _tangent(g[done], there)
        sy = (s * y).sum(dim=1)
        curved = sy > 1e-12  # otherwise the update would not stay positive definite
        move = projector(there)
        h_old = move @ h[done] @ move
        scale = sy / (y * y).sum(dim=1).clamp_min(1e-300)
        h_old = torch.where(
            (fresh[done] & curved)[:, None, None], scale[:, None, None] * move, h_old
        )
        rho = 1.0 / sy.clamp_min(1e-12)
        v = eye - rho[:, None, None] * s[:, :, None] * y[:, None, :]
        h_new = v @ h_old @ v.transpose(1, 2) + rho[:, None, None] * s[:, :, None] * s[:, None, :]
        h[done] = torch.where(curved[:, None, None], h_new, h_old)
        fresh[done[curved]] = False
        x[done], f[done], g[done] = there, f_new[ok], g_new
        step[done] = 1.0
        active[done] = g_new.norm(dim=1) >= U0_GTOL
    return x, h


def user_terms(
    family: Family,
    theta: dict[str, float] | dict[str, torch.Tensor],
    log: EventLog,
    items: Items,
    choice: ChoiceForm,
    weight: torch.Tensor,
    u0: torch.Tensor,
    draws: torch.Tensor | None = None,
    keep: dict[str, torch.Tensor] | None = None,
    exact: bool = True,
    per_pass: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-user log-likelihood at ``u0`` [U], log marginal likelihood [U], the
    proposal's centre [U, d] (``u0`` polished by a Newton step) and whether ``u0`` looks
    like a maximum [U] bool: the information in the tangent space positive definite, every
    eigenvalue over :data:`RIDGE` (the observed information without draws where ``exact``,
    else the expected, as below: the expected is positive definite at most saddles too, so
    rough points, which only rank the coarse grid, flag few); not so at a saddle, where the
    fit can stop. The marginal is the
    likelihood integrated over the initial preferences on the sphere (a flat prior, the
    sphere's area measure), by importance sampling around ``u0`` (the user's mode) with
    the standard normal ``draws`` [M, U, d + TAIL_DF]; without draws, the Laplace
    approximation ``l(u0) + (d-1)/2 log 2 pi - 1/2 log det J``.

    ``J`` is the information of ``u0`` in the sphere's tangent space, eigenvalues
    floored at :data:`RIDGE`: for the Laplace value the observed information (the
    Riemannian Hessian of the log-likelihood; the expected where not ``exact``, for the
    coarse grid's rough points, which only locate a start), for
    the proposal the expected information
    given the user's history (:func:`_expected_information`, several times cheaper: any
    proposal gives an unbiased estimate of the integral, so it need only be close). A
    draw, a multivariate t vector ``y`` in the tangent space at the centre c (TAIL_DF
    degrees of freedom), becomes the tangent vector ``v = J^(-1/2) y`` (the symmetric
    root, ``J``'s eigenvalues floored at :data:`PROPOSAL_FLOOR` here), mapped onto the
    sphere by the exponential map ``cos|v| c + sin|v| v/|v|`` (area element
    ``(sin|v| / |v|)^(d-2)``; a vector longer than pi would reach a point twice and is
    given weight 0). Any proposal gives an unbiased estimate of the integral; this one
    keeps the weights even. ``keep``, where given (with draws), receives the draws'
    points on the sphere [M, U, d] as ``"points"`` and their log importance weights
    [M, U] as ``"log_weights"`` (for draws from each user's posterior, see
    :func:`posterior_u0`). ``per_pass``: the draws whose likelihood is evaluated in one
    pass (default: as many as :data:`DRAW_ROWS` rows hold)."""
    th = theta_tensors(theta)
    smooth = SMOOTH if family.smooth_gate else 0.0
    raw = u0.clone().requires_grad_(True)
    n, d = raw.shape
    ll = (event_loglik(family, th, unit(raw), log, items, choice, smooth) * weight).sum(dim=1)
    if draws is None and exact:  # the Laplace value needs the exact observed information
        grad = torch.autograd.grad(ll.sum(), raw, create_graph=True)[0]
        hess = _observed_information(grad, raw)
    else:  # the proposal only needs an approximation of it (see the docstring)
        grad = torch.autograd.grad(ll.sum(), raw)[0]
        hess = -_expected_information(family, th, u0, log, items, choice, weight, smooth)
    ll = ll.detach().double()
    uh = u0.double()
    tangent = _tangent_basis(uh)
    eig, vec = torch.linalg.eigh(-tangent.transpose(1, 2) @ hess @ tangent)
    concave = eig[:, 0] > RIDGE
    eig = eig.clamp_min(RIDGE)
    half_log_2pi = 0.5 * (d - 1) * math.log(2 * math.pi)
    laplace = ll + half_log_2pi - 0.5 * eig.log().sum(dim=1)
    if draws is None:
        return ll, laplace, u0, concave
    # the proposal's centre: one scoring step on the sphere from u0 (at most NEWTON_MAX
    # radians), which takes the mode further than the optimizer's tolerance; the weights
    # of far draws are steep in the centre, and a centre that moved with the optimizer's
    # noise made the likelihood noisy in theta
    g = tangent.transpose(1, 2) @ grad.detach().double()[:, :, None]  # [U, d-1, 1]
    newton = (tangent @ vec @ ((vec.transpose(1, 2) @ g) / eig[:, :, None]))[..., 0]
    length = newton.norm(dim=1, keepdim=True)
    newton = newton * (NEWTON_MAX / length.clamp_min(NEWTON_MAX))
    centre = torch.where(concave[:, None], _exp_map(uh, newton)[0], uh)
    tangent = _tangent_basis(centre)
    eig, vec = torch.linalg.eigh(-tangent.transpose(1, 2) @ hess @ tangent)
    eig = eig.clamp_min(PROPOSAL_FLOOR)
    # A draw: d normals projected on the tangent space (a standard normal there, whatever
    # its basis) over the root mean square of TAIL_DF more, a multivariate t ``y``,
    # heavier-tailed than the Laplace Gaussian so that no weight is much larger than the
    # others where the likelihood is skewed; then ``v = J^(-1/2) y`` with the symmetric
    # root, which like the projection does not depend on a choice of basis or of
    # eigenvector signs (either made the draws jump between nearby parameter values).
    # The last M // UNIFORM_SHARE draws are uniform on the sphere instead (the d normals
    # normalized): a defensive component, so that a user whose likelihood is nearly flat
    # (few events) still has draws that land, and no weight is unbounded. The weights
    # use the mixture's density (deterministic mixture importance sampling).
    k, nu, m = d - 1, TAIL_DF, len(draws)
    if draws.shape[-1] != d + nu:
        raise ValueError(f"draws must have {d + nu} columns (d + TAIL_DF), not {draws.shape[-1]}")
    uniform = torch.arange(m) >= m - max(1, m // UNIFORM_SHARE)  # [M]
    share = float(uniform.double().mean())
    z = draws[..., :d]
    y = _tangent(z, centre) / draws[..., d:].pow(2).mean(dim=-1, keepdim=True).sqrt()
    root = tangent @ vec  # [U, d, d-1]
    inv_sqrt = root @ (root.transpose(1, 2) / eig.sqrt()[:, :, None])  # [U, d, d]
    v = torch.einsum("ude,mue->mud", inv_sqrt, y)  # [M, U, d]
    t_points, t_r = _exp_map(centre, v)
    on_sphere = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    points = torch.where(uniform[:, None, None], on_sphere, t_points)
    # every point's density under the t component on the sphere: through the inverse
    # exponential map, its tangent vector's density over the area element
    cos = (points * centre).sum(dim=-1).clamp(-1.0, 1.0)
    r = torch.where(uniform[:, None], torch.arccos(cos), t_r)
    sin_ratio = (torch.sin(r) / r.clamp_min(1e-12)).clamp_min(1e-300)
    back = (points - cos[..., None] * centre) / sin_ratio[..., None]  # the tangent vector
    v = torch.where(uniform[:, None, None], back, v)
    sqrt_j = root @ (root.transpose(1, 2) * eig.sqrt()[:, :, None])  # [U, d, d]
    y = torch.einsum("ude,mue->mud", sqrt_j, v)
    log_t = (
        math.lgamma((nu + k) / 2)
        - math.lgamma(nu / 2)
        - 0.5 * k * math.log(nu * math.pi)
        - 0.5 * (nu + k) * torch.log1p((y * y).sum(dim=-1) / nu)
    )  # [M, U]: the density of y
    log_q_t = log_t + 0.5 * eig.log().sum(dim=1) - (d - 2) * sin_ratio.log()
    log_q_t = torch.where(r < math.pi, log_q_t, torch.full_like(log_q_t, -math.inf))
    log_area = math.log(2) + 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d)
    log_q = torch.logaddexp(
        log_q_t + math.log1p(-share), torch.full_like(log_q_t, math.log(share) - log_area)
    )
    lp = []
    # draws evaluated together (copies of the users)
    per = per_pass or max(1, DRAW_ROWS // n)
    with torch.no_grad():
        for chunk in points.to(u0.dtype).split(per):
            ll_c = event_loglik(family, th, chunk, log, items, choice, smooth)
            lp.append((ll_c * weight).sum(dim=2).double())
    w = torch.cat(lp) - log_q  # [M, U]
    # a t draw past the antipode would reach a point twice: weight 0
    w = torch.where(uniform[:, None] | (t_r < math.pi), w, torch.full_like(w, -math.inf))
    if keep is not None:
        keep["points"], keep["log_weights"] = points, w
    marginal = torch.logsumexp(w, dim=0) - math.log(len(draws))
    # The log of an average of M weights is biased low by about the average's relative
    # variance over 2 (Jensen; O(1/M)), and that bias moves with theta: with 16 draws it
    # pulled biased assimilation's eta 0.4% low. It is added back, the variance estimated
    # from the weights themselves within each component (the t draws and the uniform ones
    # are strata of fixed sizes: the spread between their means is not the average's).
    r = torch.exp(w - marginal)  # the weights over their average
    var = torch.zeros_like(marginal)
    for part in (r[~uniform], r[uniform]):
        if len(part) > 1:
            spread = ((part - part.mean(dim=0)) ** 2).sum(dim=0)
            var = var + spread * len(part) / (len(part) - 1)
    marginal = marginal + var / (2 * m**2)
    return ll, marginal, centre.to(u0.dtype), concave


#: the fewest rows (users x points) an evaluation splits over a pool's processes
SHARD_ROWS = 256


class Rows(NamedTuple):
    """One evaluation's rows (a user at a point's parameters) and what each row needs:
    ``theta`` (scalars, or [R] per row), their log, event weights, starts [R, d] with
    inverse-Hessian approximations [R, d, d] (rows of NaN: none known), importance-sampling
    draws [M, R, d + TAIL_DF] (None: the Laplace value) and static fits [R, d] to restart
    from (None: none, as for static itself)."""

    theta: dict[str, float] | dict[str, torch.Tensor]
    log: EventLog
    weight: torch.Tensor
    start: torch.Tensor
    curvature: torch.Tensor
    draws: torch.Tensor | None
    restarts: torch.Tensor | None

    def take(self, rows: torch.Tensor, plain: bool = False) -> Rows:
        """These rows only; ``plain``: their log without the likelihood's cached tensors
        (to travel to another process)."""
        log = self.log.subset(rows)
        return Rows(
            {k: v[rows] if v.dim() else v for k, v in theta_tensors(self.theta).items()},
            replace(log) if plain else log,
            self.weight[rows],
            self.start[rows],
            self.curvature[rows],
            None if self.draws is None else self.draws[:, rows],
            None if self.restarts is None else self.restarts[rows],
        )


def fit_rows(
    family: Family,
    rows: Rows,
    items: Items,
    choice: ChoiceForm,
    evals: int,
    rough: bool = False,
    pool: Executor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's log marginal likelihood [R] (float64), proposal centre [R, d] and
    inverse-Hessian approximation [R, d, d]: :func:`fit_u0` from the rows' starts with
    their curvature (at most ``evals`` evaluations), then :func:`user_terms` with their
    draws (without draws the Laplace value, from the expected information where
    ``rough``, else the observed). Rows are independent given the parameters: with a
    ``pool`` (and at least :data:`SHARD_ROWS` rows), the later half of the rows is
    computed in one of its processes while this one computes the first. Each half
    evaluates its draws in passes of as many as the whole would, so each row's numbers
    are the ones one process gives it (a pass over another number of draws rounds the
    float32 likelihood differently), to float64 rounding in the last digit.

    A row's fit can stop at a saddle, where the gradient vanishes too, and a warm start
    then carries it from point to point. The proposal is far too wide there: one such
    user's marginal came out 34 nats low, and where a draw happened to land near their
    maximum only 10 nats low, a spike the search took for the maximum (biased
    assimilation, seed 7005: an interval 1e-5 wide around an estimate 2.4% off). Such rows
    are fitted again from their ``restarts`` (each user's static fit), and that fit is
    kept where its log-likelihood at the mode is higher by :data:`REFIT_GAIN` (a user
    flagged at a true maximum, with few events, reaches it again: their centre should not
    move with the optimizer's noise). A user with no events to fit has no maximum to find;
    static's own fit is the static fit (``restarts`` None)."""
    # the draws evaluated together, as many as fit all rows in one pass: the same in
    # either half (a pass over other numbers of draws rounds differently)
    per = max(1, DRAW_ROWS // max(rows.log.users, 1))
    if pool is None or rows.log.users < SHARD_ROWS or not _travels(family):
        return _fit_rows(family, rows, items, choice, evals, rough, per)
    # both halves without the cached tensors: carrying them along (slicing them for each
    # half) made this process's half slower than building its own (26.6 s against 30.8 s
    # for a 2,000-user whole-log fit, docs/benchmarks.md)
    first, later = (rows.take(h, plain=True) for h in torch.arange(rows.log.users).tensor_split(2))
    # Pickled here, before this process computes: a pool's queue pickles in a thread of
    # its own, and torch's reductions move a tensor's storage into shared memory as they
    # pickle it, under the feet of a computation reading it (the items are in both halves;
    # it corrupted their values). Only this package's own processes read these bytes.
    payload = pickle.dumps(
        (family.name, family.smooth_gate, later, items, choice, evals, rough, per)
    )
    try:
        away: Future | None = pool.submit(_fit_rows_by_name, payload)
    except BrokenProcessPool:  # a process of the pool died earlier (killed, out of memory)
        away = None
    here = _fit_rows(family, first, items, choice, evals, rough, per)
    there = None
    if away is not None:
        try:
            there = pickle.loads(away.result())
        except BrokenProcessPool:
            pass
    if there is None:  # the same numbers, here
        there = _fit_rows(family, later, items, choice, evals, rough, per)
    marginal, u0, curv = (torch.cat([a, b]) for a, b in zip(here, there, strict=True))
    return marginal, u0, curv


def _travels(family: Family) -> bool:
    """Whether ``family`` is the registered family of its name (with its gate), which a
    pool's process can rebuild from the name."""
    known = FAMILIES.get(family.name)
    return known is not None and replace(known, smooth_gate=family.smooth_gate) == family


def _fit_rows(
    family: Family, rows: Rows, items: Items, choice: ChoiceForm, evals: int, rough: bool, per: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`fit_rows` on all of its rows at once, ``per`` draws in each pass."""
    theta, log, weight = rows.theta, rows.log, rows.weight
    u0, curv = fit_u0(family, theta, log, items, choice, weight, rows.start, evals, rows.curvature)
    ll, marginal, u0, concave = user_terms(
        family, theta, log, items, choice, weight, u0, rows.draws, exact=not rough, per_pass=per
    )
    stuck = torch.nonzero(~concave & weight.any(dim=1))[:, 0]
    if len(stuck) and rows.restarts is not None:
        sub = rows.take(stuck)
        # the rows' own arguments: family, parameters, log, items, choice, weight
        own = (family, sub.theta, sub.log, items, choice, sub.weight)
        again, again_curv = fit_u0(*own, rows.restarts[stuck], evals)
        ll2, m2, c2, _ = user_terms(*own, again, sub.draws, exact=not rough, per_pass=per)
        up = ll2 > ll[stuck] + REFIT_GAIN
        marginal[stuck[up]] = m2[up]
        u0[stuck[up]] = c2[up]
        curv[stuck[up]] = again_curv[up]
    return marginal, u0, curv


def _fit_rows_by_name(payload: bytes) -> bytes:
    """:func:`fit_rows` on half of its rows in a pool's process: the family's name and
    gate, and :func:`_fit_rows`'s other arguments, pickled by :func:`fit_rows` (a family's
    update may be a closure, so the family travels by name); the result pickled the same
    way."""
    name, gated, *args = pickle.loads(payload)
    family = FAMILIES[name]
    if family.smooth_gate != gated:
        family = replace(family, smooth_gate=gated)
    return pickle.dumps(_fit_rows(family, *args))


def _observed_information(grad: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """[U, d, d] the Hessian of each user's log-likelihood ``l(unit(raw))`` at
    ``|raw| = 1`` (float64, symmetrized), from its gradient ``grad`` [U, d] (made with
    ``create_graph``): the d rows of every user's Hessian in one batched backward pass
    (users are independent)."""
    d = raw.shape[1]
    basis = torch.eye(d, dtype=grad.dtype)[:, None, :].expand(d, *grad.shape)
    try:
        rows = torch.autograd.grad(
            grad, raw, grad_outputs=basis, is_grads_batched=True, retain_graph=True
        )[0]
    except RuntimeError:  # an op without a batching rule (anomaly detection's checks): row by row
        rows = torch.stack(
            [torch.autograd.grad(grad[:, j].sum(), raw, retain_graph=True)[0] for j in range(d)]
        )
    hess = rows.transpose(0, 1).detach().double()
    return 0.5 * (hess + hess.transpose(1, 2))


def _expected_information(
    family: Family,
    th: dict[str, torch.Tensor],
    u0: torch.Tensor,
    log: EventLog,
    items: Items,
    choice: ChoiceForm,
    weight: torch.Tensor,
    smooth: float,
) -> torch.Tensor:
    """[U, d, d] each user's expected information about ``u0`` given their history (the
    choice model's Fisher information, event by event, at the logged past): with ``A_t``
    the Jacobian of the state before event t in ``u0`` and ``g_i = A_t' x_i / T`` the
    gradient of slot i's logit, ``sum_t sum_i p_i g_i g_i' - (sum_i p_i g_i)(...)'``
    (the outside option's logit does not move), plus the sphere's curvature term
    ``sum_t lam_t A_t' A_t`` (below). The Jacobians come from one forward-mode
    pass over d copies of the users, each carrying one direction; no second-order
    derivative is taken (the exact Hessian costs several times more). Users are taken a
    block at a time so that the largest tensors (the d copies' states and tangents, 2 d^2
    values per event; the slots' gradients, k d) hold no more values than the memory
    budget counts for :data:`DRAW_ROWS` rows (k d per event)."""
    n, d = u0.shape
    k = log.slates.shape[2]
    per = max(1, DRAW_ROWS * min(k, 2 * d) // (2 * d))
    if n > per:
        parts = []
        for rows in torch.arange(n).split(per):
            th_rows = {name: v[rows] if v.dim() else v for name, v in th.items()}
            sub = log.subset(rows)
            parts.append(
                _expected_information(
                    family, th_rows, u0[rows], sub, items, choice, weight[rows], smooth
                )
            )
        return torch.cat(parts)
    prep = prepared(log, items, choice)
    temp = choice.temperature
    with torch.no_grad():
        if family.params:
            with torch.autograd.forward_ad.dual_level():
                eye = torch.eye(d, dtype=u0.dtype)[:, None, :].expand(d, n, d).contiguous()
                dual = torch.autograd.forward_ad.make_dual(u0.expand(d, n, d).contiguous(), eye)
                out = torch.autograd.forward_ad.unpack_dual(
                    states(family, th, dual, log, prep, smooth)
                )
                u, jac = out.primal[0], out.tangent  # [U, T, d], [d, U, T, d]
            jac = jac.permute(1, 2, 3, 0).contiguous()  # [U, T, d (state), d (u0)]
        else:  # the state is u0
            u, jac = u0[:, None, :].expand(-1, log.slates.shape[1], -1), None
        logits = torch.einsum("utd,utkd->utk", u, prep.shown) / temp + prep.base
        lse = torch.logsumexp(logits, dim=2, keepdim=True)
        if choice.no_click_utility is not None:  # the outside option
            lse = torch.logaddexp(lse, torch.tensor(choice.no_click_utility / temp))
        on = weight.to(logits.dtype)
        p = torch.exp(logits - lse) * on[..., None]  # [U, T, k]
        # The states live on the sphere, which curves away from the tangent plane: an
        # event's logits gain -(x . u_t) / T |A_t v|^2 / 2 along a tangent step v, which
        # adds its residual-weighted mean ``lam_t = sum_i (y_i - p_i) x_i . u_t / T`` (y the
        # choice) times A_t' A_t to the information. Its expectation is zero at the true
        # preferences, but not for a user whose choices are sharper (or flatter) than the
        # temperature says: leaving it out made the proposal far too wide at d = 32
        # (MovieLens under a proxy), and 16 draws missed most of the likelihood's mass.
        scores = (logits - prep.base) * on[..., None]
        chosen = (u * prep.consumed_x).sum(dim=2) / temp * prep.clicked * on
        lam = chosen - (p * scores).sum(dim=2)  # [U, T]
        # each slot's logit gradient in u0, g [U, T, k, d]: summed over the state's
        # coordinates one at a time (a batched product of such small matrices is slower)
        x = prep.shown / temp
        if jac is None:
            g = x
            curve = torch.diag_embed(lam.sum(dim=1)[:, None].expand(n, d))
        else:
            g = sum(x[..., e, None] * jac[:, :, None, e, :] for e in range(d))
            flat_jac = jac.reshape(n, -1, d)  # [U, T * d, d]
            weights = lam[..., None].expand(-1, -1, d).reshape(n, -1, 1)
            curve = (flat_jac * weights).transpose(1, 2) @ flat_jac
        # sum_t sum_i p_i g_i g_i' - sum_t m_t m_t' with m_t = sum_i p_i g_i, as products
        # over all of a user's events at once
        flat = g.reshape(n, -1, d)
        second = (flat * p.reshape(n, -1, 1)).transpose(1, 2) @ flat
        mean = (g * p[..., None]).sum(dim=2)  # [U, T, d]
        return (second - mean.transpose(1, 2) @ mean + curve).double()


def _tangent_basis(u: torch.Tensor) -> torch.Tensor:
    """[U, d, d-1] an orthonormal basis of each unit row's tangent space: the last d-1
    columns of a QR of [u, I] (the first column spans u)."""
    n, d = u.shape
    eye = torch.eye(d, dtype=u.dtype).expand(n, d, d)
    q, _ = torch.linalg.qr(torch.cat([u[:, :, None], eye], dim=2))
    return q[:, :, 1:d]


def _exp_map(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sphere's exponential map at the unit rows ``u`` of tangent vectors ``v`` (any
    leading dimensions), and their lengths."""
    r = v.norm(dim=-1).clamp_min(1e-12)
    return torch.cos(r)[..., None] * u + (torch.sin(r) / r)[..., None] * v, r


def raw_to_theta(family: Family, raw: tuple[float, ...]) -> dict[str, float]:
    return {
        p.name: float(p.to_value(torch.tensor(r))) for p, r in zip(family.params, raw, strict=True)
    }


def theta_to_raw(family: Family, theta: dict[str, float]) -> tuple[float, ...]:
    return tuple(float(p.to_raw(theta[p.name])) for p in family.params)


@dataclass
class Profile:
    """Every point evaluated, and the best one."""

    family: Family
    points: dict[tuple[float, ...], Point] = field(default_factory=dict)
    best: Point | None = None


class Evaluator:
    """Evaluates (and caches) the marginal likelihood at points on the unconstrained
    scale, warm-starting each user's initial preferences from the nearest point evaluated.
    Each user's importance-sampling draws are fixed (seeded) for every point, so the
    estimated likelihood is a smooth function of the parameters.

    Several points are evaluated together by stacking copies of the users, each copy
    with its own parameter values (users are independent given the parameters), which
    costs little more than one point while the batch is small. With a ``pool``, each
    evaluation's users are shared with one of its processes (:func:`fit_rows`; the coarse
    grid's rough points are not: they are few users)."""

    def __init__(
        self,
        family: Family,
        log: EventLog,
        items: Items,
        choice: ChoiceForm,
        weight: torch.Tensor | None = None,
        u0: torch.Tensor | None = None,
        seed: int = 0,
        max_rows: int = 8192,
        draws: int = DRAWS,
        pool: Executor | None = None,
        curvature: torch.Tensor | None = None,
    ) -> None:
        """``u0`` [U, d]: each user's start (default: their static fit, or for static
        itself their consumed-item mean direction; rows of NaN: that user's static fit),
        with ``curvature`` [U, d, d] its inverse-Hessian approximations (rows of NaN: none
        known), the warm start of the first point evaluated."""
        self.family, self.log, self.items, self.choice = family, log, items, choice
        #: processes that share each full evaluation's users (see :func:`fit_rows`)
        self.pool = pool
        self.seed = seed
        self.weight = log.mask if weight is None else (weight & log.mask)
        self._restarts: torch.Tensor | None = None
        if u0 is None:  # the static fit is cheap and a far better start
            u0 = self.restarts() if family.params else initial_u0(log, items, seed)
        elif bool(u0.isnan().any()):
            u0 = torch.where(u0.isnan().any(dim=1, keepdim=True), self.restarts(), u0)
        self.start = u0
        self.start_curvature = curvature
        self.profile = Profile(family)
        self.rough: dict[tuple[float, ...], Point] = {}
        if log.users > ROUGH_USERS:
            gen = torch.Generator().manual_seed(seed)
            self.rough_rows = torch.randperm(log.users, generator=gen)[:ROUGH_USERS].sort()[0]
        else:
            self.rough_rows = torch.arange(log.users)
        self.rough_log = log.subset(self.rough_rows)
        self.max_rows = max_rows
        self.evaluations = 0
        self._curved: deque[Point] = deque(maxlen=CURVATURE_KEPT)
        dim = items.features.shape[1]
        gen = torch.Generator().manual_seed(seed + 1)
        self.draws = (
            torch.randn(draws, log.users, dim + TAIL_DF, generator=gen, dtype=torch.float64)
            if draws
            else None
        )

    def restarts(self) -> torch.Tensor:
        """[U, d] each user's static fit from their consumed-item mean direction: where a
        user's fit stopped at a saddle, it is taken again from here."""
        if self._restarts is None:
            u0 = initial_u0(self.log, self.items, self.seed)
            fitted = fit_u0(STATIC, {}, self.log, self.items, self.choice, self.weight, u0)
            self._restarts = fitted[0]
        return self._restarts

    @staticmethod
    def key(raw: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(round(min(max(float(r), RAW_LOW - 3), RAW_HIGH + 3), 6) for r in raw)

    def __call__(self, raw: tuple[float, ...]) -> Point:
        return self.many([raw])[0]

    def many(self, raws: list[tuple[float, ...]], rough: bool = False) -> list[Point]:
        """The points at these values. ``rough``: on at most :data:`ROUGH_USERS` users,
        each user's initial preferences fitted with at most :data:`ROUGH_EVALS`
        evaluations, and the points kept apart from the profile (they only locate a
        start for the search, never an estimate)."""
        keys = [self.key(r) for r in raws]
        store = self.rough if rough else self.profile.points
        todo = list(dict.fromkeys(k for k in keys if k not in store))
        users = len(self.rough_rows) if rough else self.log.users
        per = max(1, self.max_rows // max(users, 1))
        for i in range(0, len(todo), per):
            self._evaluate(todo[i : i + per], rough)
        return [store[k] for k in keys]

    def _evaluate(self, keys: list[tuple[float, ...]], rough: bool = False) -> None:
        log = self.rough_log if rough else self.log
        n, p = log.users, len(keys)
        pts = self.profile.points
        known = list(self.rough.values()) if rough else list(pts.values())
        start = self.start[self.rough_rows] if rough else self.start
        weight_all = self.weight[self.rough_rows] if rough else self.weight
        d = start.shape[1]
        starts, curvatures = [], []
        for raw in keys:
            curv = torch.full((n, d, d), math.nan, dtype=torch.float64)  # none known
            if raw in self.rough and not rough:  # the grid's users from their rough fit
                warm = start.clone()
                grid = self.rough[raw]
                warm[self.rough_rows] = grid.u0
                if grid.curvature is not None:
                    curv[self.rough_rows] = grid.curvature
                starts.append(warm)
            elif known:
                near = min(
                    known,
                    key=lambda q: sum((a - b) ** 2 for a, b in zip(q.raw, raw, strict=True)),
                )
                starts.append(near.u0)
                if near.curvature is not None:
                    curv = near.curvature
            else:
                starts.append(start)
                if self.start_curvature is not None:
                    curv = self.start_curvature[self.rough_rows] if rough else self.start_curvature
            curvatures.append(curv)
        thetas = [raw_to_theta(self.family, raw) for raw in keys]
        theta: dict[str, float] | dict[str, torch.Tensor]
        if p == 1:
            big, weight, theta = log, weight_all, thetas[0]
        else:
            idx = torch.arange(n).repeat(p)
            big = log.subset(idx)
            weight = weight_all[idx]
            theta = {
                q.name: torch.tensor([t[q.name] for t in thetas]).repeat_interleave(n)
                for q in self.family.params
            }
        evals = ROUGH_EVALS if rough else 100
        rows_all = self.rough_rows if rough else torch.arange(self.log.users)
        # the rough points only locate a start: the Laplace approximation suffices there
        draws = None if rough or self.draws is None else self.draws.repeat(1, p, 1)
        stacked = Rows(
            theta,
            big,
            weight,
            torch.cat(starts),
            torch.cat(curvatures),
            draws,
            self.restarts()[rows_all].repeat(p, 1) if self.family.params else None,
        )
        pool = None if rough else self.pool
        marginal, u0, curvature = fit_rows(
            self.family, stacked, self.items, self.choice, evals, rough, pool
        )
        self.evaluations += p
        for j, raw in enumerate(keys):
            rows = slice(j * n, (j + 1) * n)
            point = Point(raw, thetas[j], marginal[rows], u0[rows], curvature[rows])
            # only the newest points and the best keep their curvature for the next warm
            # starts, so that it costs at most CURVATURE_KEPT + 1 points' worth of memory
            if len(self._curved) == self._curved.maxlen:
                oldest = self._curved[0]
                if oldest is not self.profile.best:
                    oldest.curvature = None
            self._curved.append(point)
            if rough:
                self.rough[raw] = point
                continue
            pts[raw] = point
            before = self.profile.best
            if before is None or point.marginal > before.marginal:
                self.profile.best = point
                if before is not None and all(q is not before for q in self._curved):
                    before.curvature = None


def grid_axes(family: Family, size: int) -> list[list[float]]:
    """Coarse grid on the unconstrained scale, per parameter: ``size`` points, twice as
    many along a threshold (:attr:`.families.Param.threshold`). A threshold's likelihood
    peaks within a fraction of its range: bounded confidence's 4 points straddled its
    truth (epsilon 0.17 and 1.47 for 0.8) and on one log (seed 6014) the search from the
    better one walked onto the open gate's plateau (epsilon 3.0, every item within reach),
    6,100 below the truth's marginal likelihood; 8 points put one at 0.97, the best."""
    return [
        [RAW_LOW + (RAW_HIGH - RAW_LOW) * (i + 0.5) / n for i in range(n)]
        for n in (size * (2 if q.threshold else 1) for q in family.params)
    ]


def zoom(ev: Evaluator, step: float | tuple[float, ...], rounds: int) -> Point:
    """Compass search around the best point: evaluate its 2p neighbours at ``step`` along
    each axis (one step, or one per axis; all at once, inside the search box), move to the
    best, and shrink the steps by 3 once the centre stays best (or after three moves at
    one step). When the centre stays best, the vertex of the parabola through it and its
    two neighbours on each axis is evaluated too: it reaches the maximum of a smooth
    profile in fewer rounds."""
    p = len(ev.family.params)
    steps = tuple(step) if isinstance(step, tuple) else (step,) * p
    offsets = [tuple(s if j == i else 0 for j in range(p)) for i in range(p) for s in (-1, 1)]
    level, moves = 0, 0
    while level < rounds:
        assert ev.profile.best is not None
        centre = ev.profile.best
        near = [
            tuple(
                min(max(c + o * h, SEARCH_LOW), SEARCH_HIGH)
                for c, o, h in zip(centre.raw, off, steps, strict=True)
            )
            for off in offsets
        ]
        # the search stays in its box: at the edge a parameter is as good as at its
        # bound, and walking on along a flat profile (no anchor, no drift) costs points
        ev.many([r for r in near if ev.key(r) != centre.raw])
        bracketed = ev.profile.best is centre
        if bracketed:  # try the parabola's vertex (the next level is centred on the best)
            vertex = _vertex(ev, centre, near, steps)
            if vertex is not None:
                ev(vertex)
        if bracketed or moves >= 3:  # shrink; after a move, look again
            steps, level, moves = tuple(h / 3 for h in steps), level + 1, 0
        else:
            moves += 1
    assert ev.profile.best is not None
    return ev.profile.best


def _vertex(
    ev: Evaluator, centre: Point, near: list[tuple[float, ...]], steps: tuple[float, ...]
) -> tuple[float, ...] | None:
    """Per axis, the maximum of the parabola through the centre and its two neighbours
    (within half a step; 0 where a neighbour is missing or the axis is not concave)."""
    pts = ev.profile.points
    f0 = centre.marginal
    out = list(centre.raw)
    for i in range(len(centre.raw)):
        lo, hi = pts.get(ev.key(near[2 * i])), pts.get(ev.key(near[2 * i + 1]))
        if lo is None or hi is None or lo is centre or hi is centre:
            continue
        curv = lo.marginal - 2 * f0 + hi.marginal
        if curv < 0:
            off = steps[i] * (lo.marginal - hi.marginal) / (2 * curv)
            out[i] += max(-steps[i] / 2, min(steps[i] / 2, off))
    vertex = tuple(out)
    return vertex if ev.key(vertex) != centre.raw else None


def maximize(ev: Evaluator, grid: int | None = None, rounds: int = 3) -> Point:
    """The marginal likelihood's maximum: a coarse grid (``grid`` points per parameter;
    default 7 for one parameter, 4 for more; rough fits, only to locate a start), then a
    pattern search from its best."""
    fam = ev.family
    if not fam.params:
        return ev(())
    size = grid or (7 if len(fam.params) == 1 else 4)
    axes = grid_axes(fam, size)
    coarse = ev.many(list(itertools.product(*axes)), rough=True)
    ev(max(coarse, key=lambda q: q.marginal).raw)
    # first steps: half the grid's spacing along each axis
    return zoom(ev, tuple((RAW_HIGH - RAW_LOW) / len(a) / 2 for a in axes), rounds)


#: the first step and levels of a refit's pattern search (unconstrained scale): its start
#: is the same family's estimate on a subsample of the same log, a few of that
#: estimate's standard errors away, and the stencil that follows locates the maximum
#: (at 0.2 and 3 levels, its first points were tens of standard errors out)
REFIT_STEP, REFIT_ROUNDS = 0.05, 2


def refit(ev: Evaluator, start: dict[str, float], rounds: int = REFIT_ROUNDS) -> Point:
    """Pattern search from a known nearby estimate (no grid): refits on related data."""
    fam = ev.family
    if not fam.params:
        return ev(())
    ev(theta_to_raw(fam, start))
    return zoom(ev, REFIT_STEP, rounds)


def posterior_u0(
    ev: Evaluator, point: Point, seed: int, family: Family | None = None
) -> torch.Tensor:
    """[U, d] one draw of each user's initial preferences from their posterior at
    ``point``'s parameters under ``family`` (default the evaluator's): the flat prior on
    the sphere times the user's likelihood, approximated by importance sampling around
    ``point``'s modes with the evaluator's draws, one of which is picked in proportion to
    its weight (sampling importance resampling, Rubin 1988). Unlike the user's mode, such
    a draw is distributed with the log as the true initial preferences are (where the
    model holds): the mode leans toward the items the user chose on the log's own slates.

    Where the draws start the hard-threshold model, pass the family with its hard
    threshold (``smooth_gate=False``): under the logistic gate the posterior is narrower
    than the truth's spread (bounded confidence's draws sat 0.27 rad from the modes on
    average, the true initial preferences 0.30, the hard threshold's draws 0.29-0.30;
    docs/results.md)."""
    if ev.draws is None:
        raise ValueError("posterior draws need the importance-sampling draws (draws > 0)")
    keep: dict[str, torch.Tensor] = {}
    user_terms(
        family or ev.family,
        point.theta,
        ev.log,
        ev.items,
        ev.choice,
        ev.weight,
        point.u0,
        ev.draws,
        keep=keep,
    )
    w, points = keep["log_weights"], keep["points"]  # [M, U], [M, U, d]
    gen = torch.Generator().manual_seed(seed)
    pick = torch.multinomial(torch.softmax(w, dim=0).T, 1, generator=gen)[:, 0]
    return points[pick, torch.arange(w.shape[1])].to(point.u0.dtype)


def plain_mle(
    family: Family,
    log: EventLog,
    items: Items,
    choice: ChoiceForm,
    weight: torch.Tensor | None = None,
    max_evals: int = 200,
) -> tuple[dict[str, float], torch.Tensor]:
    """The joint (unadjusted) maximum likelihood of parameters and initial preferences by
    L-BFGS with autograd: kept to show the incidental-parameter bias it suffers."""
    weight = log.mask if weight is None else (weight & log.mask)
    raw = {p.name: p.to_raw(p.init).clone().requires_grad_(True) for p in family.params}
    u_raw = initial_u0(log, items).clone().requires_grad_(True)
    smooth = SMOOTH if family.smooth_gate else 0.0
    n = max(int(weight.sum()), 1)

    def loss() -> torch.Tensor:
        th = {p.name: p.to_value(raw[p.name]) for p in family.params}
        ll = event_loglik(family, th, unit(u_raw), log, items, choice, smooth)
        return -(ll * weight).sum() / n * log.users

    _lbfgs([*raw.values(), u_raw], loss, max_evals)
    theta = {p.name: float(p.to_value(raw[p.name].detach())) for p in family.params}
    return theta, unit(u_raw.detach())


def finite(x: float) -> bool:
    return math.isfinite(x)
