"""Conformance checks for scenarios, in the spirit of Gymnasium's ``check_env``.

:func:`check_scenario` builds a scenario, runs it briefly with the given policies, and
raises :class:`ConformanceError` with a precise message if any contract is broken:
finite preferences of the right shape that stay in the scenario's space, choice
probabilities that are a distribution, bitwise determinism for a seed, and exact
equality of arms that run the same policy (common random numbers).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .engine import build_environment, run_arms
from .policy import Policy
from .specs import ScenarioSpec


class ConformanceError(AssertionError):
    pass


def _in_space(space: str, u: torch.Tensor) -> bool:
    tol = 1e-4
    if space == "sphere":
        return bool(((u.norm(dim=1) - 1).abs() < tol).all())
    if space == "box":
        return bool((u.abs() <= 1 + tol).all())
    if space == "unit_interval":
        return bool(((u >= -tol) & (u <= 1 + tol)).all())
    return True


def check_scenario(
    spec: ScenarioSpec,
    make_policy: Callable[[], Policy],
    *,
    users: int = 64,
    steps: int = 5,
    seed: int = 0,
) -> None:
    env = build_environment(spec)
    cat = env.catalog
    if not torch.isfinite(cat.features).all():
        raise ConformanceError(f"{spec.id}: catalog has non-finite features")

    def run(s: int) -> dict[str, torch.Tensor]:
        res = run_arms(
            env,
            {"a": make_policy(), "b": make_policy()},
            users=users,
            steps=steps,
            seed=s,
            reference="b",
        )
        a, b = res.arms["a"], res.arms["b"]
        assert a.final is not None and b.final is not None
        if not torch.equal(a.final, b.final):
            raise ConformanceError(
                f"{spec.id}: two arms with the same policy diverged (common random numbers broken)"
            )
        if a.summaries != b.summaries:
            raise ConformanceError(
                f"{spec.id}: two arms with the same policy have different summaries"
            )
        if any(v != 0.0 for v in a.summaries["induced_shift"]):
            raise ConformanceError(f"{spec.id}: identical arms report a non-zero induced shift")
        if a.final.shape != (users, cat.dim) or not torch.isfinite(a.final).all():
            raise ConformanceError(
                f"{spec.id}: final preferences have shape {tuple(a.final.shape)} or are not finite"
            )
        if not _in_space(spec.space, a.final):
            raise ConformanceError(f"{spec.id}: preferences left the {spec.space} space")
        for name in ("engagement", "expected_engagement"):
            vals = a.summaries[name]
            if not all(0.0 <= v <= 1.0 + 1e-6 for v in vals):
                raise ConformanceError(f"{spec.id}: {name} outside [0, 1]: {vals}")
        return {"final": a.final, "initial": res.initial}

    first, again = run(seed), run(seed)
    for key in first:
        if not torch.equal(first[key], again[key]):
            raise ConformanceError(f"{spec.id}: the same seed gave different {key} preferences")
    other = run(seed + 1)
    if spec.population.kind not in ("types", "file") and torch.equal(
        first["initial"], other["initial"]
    ):
        raise ConformanceError(f"{spec.id}: different seeds gave the same users")

    # choice probabilities are a distribution over slots + no-click
    u = first["initial"][: min(users, 16)]
    slate = torch.arange(spec.slate_size)[None, :].expand(u.shape[0], -1)
    probs = env.choice.probabilities(u, cat.features[slate], cat.appeal[slate])
    if probs.shape != (u.shape[0], spec.slate_size + 1):
        raise ConformanceError(f"{spec.id}: choice probabilities have shape {tuple(probs.shape)}")
    if not (
        (probs >= 0).all() and torch.allclose(probs.sum(dim=1), torch.ones(u.shape[0]), atol=1e-5)
    ):
        raise ConformanceError(f"{spec.id}: choice probabilities are not a distribution")
