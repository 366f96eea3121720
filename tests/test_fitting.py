"""Dynamics fitting: the differentiable updates match the simulator, the likelihood is
the choice model's, and small fixed-seed fits recover known parameters."""

from __future__ import annotations

import math

import pytest
import torch

from simulator.dynamics import build_dynamics
from simulator.engine import build_environment, natural_drift
from simulator.fitting.families import FAMILIES, family_of_spec
from simulator.fitting.fit import theta_tensors
from simulator.geometry import unit
from simulator.specs import (
    AnchoredDynamics,
    BiasedAssimilation,
    BoundedConfidence,
    NaturalDrift,
    NoDynamics,
    TRecsDrift,
)
from simulator.types import StepNoise

SPECS = [
    NoDynamics(),
    TRecsDrift(delta=0.3),
    TRecsDrift(delta=1.0),
    BiasedAssimilation(eta=0.7),
    BoundedConfidence(epsilon=1.2, mu=0.4),
    AnchoredDynamics(lam=0.2, inner=TRecsDrift(delta=0.3)),
    AnchoredDynamics(lam=0.1, inner=BiasedAssimilation(eta=0.5)),
    AnchoredDynamics(lam=0.3, inner=BoundedConfidence(epsilon=0.9, mu=0.5)),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind + str(getattr(s, "inner", "")))
def test_fitted_updates_match_the_simulator(spec):
    gen = torch.Generator().manual_seed(3)
    b, k, d = 64, 5, 6
    u0 = unit(torch.randn(b, d, generator=gen))
    u = unit(u0 + 0.5 * torch.randn(b, d, generator=gen))
    items = unit(torch.randn(b, k, d, generator=gen))
    items[0, 0] = u[0]  # angle 0 and pi: the degenerate rows
    items[1, 0] = -u[1]
    slot = torch.randint(-1, k, (b,), generator=gen)
    slot[:2] = 0
    expected = build_dynamics(spec).step(u, u0, items, slot, None)
    family, theta = family_of_spec(spec)
    x = items[torch.arange(b), slot.clamp_min(0)]
    got = family.step(u, u0, x, (slot >= 0).float(), theta_tensors(theta))
    assert torch.allclose(got, expected, atol=2e-6), (got - expected).abs().max()
    # per-row parameter values (stacked profile points) give the same result
    rows = {k_: v.repeat(b) for k_, v in theta_tensors(theta).items()}
    assert torch.allclose(family.step(u, u0, x, (slot >= 0).float(), rows), expected, atol=2e-6)


def test_fitted_updates_have_finite_gradients_at_degenerate_angles():
    u = unit(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])).requires_grad_(True)
    x = torch.stack([u[0].detach(), -u[1].detach()])
    delta = torch.tensor(0.3, requires_grad=True)
    out = FAMILIES["trecs"].step(u, u, x, torch.ones(2), {"delta": delta})
    out.sum().backward()
    assert torch.isfinite(u.grad).all() and torch.isfinite(delta.grad)


def test_mean_reversion_is_the_anchor_on_the_sphere():
    """Natural drift's mean reversion after an item update is the anchored family."""
    from simulator.scenarios import get_scenario
    from simulator.specs import with_overrides

    gen = torch.Generator().manual_seed(5)
    b, d = 32, 4
    u0 = unit(torch.randn(b, d, generator=gen))
    f = unit(torch.randn(b, d, generator=gen))
    spec = with_overrides(get_scenario("topics-tiny-v1"), {})
    spec = spec.model_copy(update={"drift": NaturalDrift(mean_reversion=0.15)})
    env = build_environment(spec)
    drifted = natural_drift(env, f, u0, StepNoise(torch.zeros(b), None, None))
    anchored = unit(0.15 * u0 + 0.85 * f)
    assert torch.allclose(drifted, anchored, atol=1e-6)


def test_param_maps_round_trip():
    for fam in FAMILIES.values():
        for p in fam.params:
            for v in (0.01, 0.3, 0.9):
                if p.high is not None:
                    v = p.low + v * (p.high - p.low)
                assert math.isclose(float(p.to_value(p.to_raw(v))), v, rel_tol=1e-5)
