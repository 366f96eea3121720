"""The rollout loop: the one place where the order of a simulation step is written.

Several arms (one policy each) run in lockstep on the same users. Each step, the engine
draws the step's random numbers once and gives the same numbers to every arm (common
random numbers), so two arms that differ only in their policy differ only because of the
policy, and two arms with the same policy produce identical trajectories.

Step order, for every arm:

1. the policy observes (true preferences only if it is an oracle) and returns a slate;
2. the user's choice probabilities are computed from the *true* preferences;
3. one choice is sampled from the shared uniform (inverse CDF);
4. the preference dynamics apply the shown and chosen items;
5. the recommendation-independent natural drift applies; when it moves preferences, the
   scenario's preference space is enforced (item dynamics keep their own geometry);
6. the policy receives the feedback (slates and choices, never preferences);
7. per-step summaries are streamed to the recorder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from . import metrics
from .catalog import build_catalog
from .choice import ChoiceModel, build_choice, sample_choice
from .dynamics import Dynamics, build_dynamics
from .errors import SpecError
from .policy import Policy, PolicyContext, check_slate
from .rng import Streams
from .specs import ScenarioSpec
from .types import Catalog, Feedback, Observation, StepNoise, check_ids
from .users import sample_population_with_ids, user_types

#: per-step summary columns, in order, named as the metrics of ``metric_registry`` they
#: stream (``induced_shift`` here is per step, against the run's reference arm)
SUMMARY_COLUMNS = (
    "engagement",  # share of users who clicked
    "expected_engagement",  # mean probability of a click (lower-variance engagement)
    "initial_pref_engagement",  # mean click probability of the slate under initial preferences
    "welfare",  # mean value of consumed items: <u, x> + quality (0 without a click)
    "shift",  # mean ||u_t - u_0||
    "induced_shift",  # mean ||u_t - u_t(reference arm)||; 0 for the reference itself
    "polarity_mean",  # mean position on the polarity axis
    "polarization",  # variance of the positions on the polarity axis
)


@dataclass(frozen=True)
class Environment:
    """A scenario built for one device: catalog, choice model, dynamics."""

    spec: ScenarioSpec
    catalog: Catalog
    choice: ChoiceModel
    dynamics: Dynamics
    device: torch.device

    @property
    def dim(self) -> int:
        return self.catalog.dim


def build_environment(spec: ScenarioSpec, device: str | torch.device = "cpu") -> Environment:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpecError("device 'cuda' was asked for but no CUDA device is available")
    catalog = build_catalog(spec.catalog, spec.env_seed)
    if spec.slate_size > catalog.size:
        raise SpecError(f"slate size {spec.slate_size} exceeds the catalog's {catalog.size} items")
    if spec.polarity_axis is not None and len(spec.polarity_axis) != catalog.dim:
        raise SpecError(
            f"polarity axis has {len(spec.polarity_axis)} entries, the catalog dimension is {catalog.dim}"
        )
    return Environment(
        spec=spec,
        catalog=catalog.to(dev),
        choice=build_choice(spec.choice),
        dynamics=build_dynamics(spec.dynamics),
        device=dev,
    )


@dataclass
class ArmRecord:
    """Everything one arm produced. Summaries are per step (memory independent of the
    horizon); the trajectory is kept only when asked for."""

    summaries: dict[str, list[float]] = field(
        default_factory=lambda: {c: [] for c in SUMMARY_COLUMNS}
    )
    final: torch.Tensor | None = None  # [B, d] preferences after the last step
    clicks: torch.Tensor | None = None  # [B] total clicks per user
    preferences: list[torch.Tensor] | None = None  # full: T + 1 tensors [B, d] (CPU)
    slates: list[torch.Tensor] | None = None  # full: T tensors [B, k] (CPU)
    choices: list[torch.Tensor] | None = None  # full: T tensors [B] item or -1 (CPU)


@dataclass(frozen=True)
class StepView:
    """One arm's step as an observer of :func:`run_arms` sees it."""

    t: int  # step index (0-based)
    arm: str
    u0: torch.Tensor  # [B, d] initial preferences
    u: torch.Tensor  # [B, d] preferences after the step
    slate: torch.Tensor  # [B, k] items shown
    item: torch.Tensor  # [B] item consumed or -1
    axis: torch.Tensor  # [d] unit polarity axis of this run
    p_none: torch.Tensor  # [B] probability of no click on the slate (preferences before the step)
    p_none_initial: torch.Tensor  # [B] the same under the initial preferences


@dataclass
class RunResult:
    scenario: ScenarioSpec
    seed: int
    users: int
    steps: int
    reference: str | None
    initial: torch.Tensor  # [B, d]
    axis: torch.Tensor  # [d] unit polarity axis
    types: torch.Tensor | None  # [B] user type index for typed populations
    arms: dict[str, ArmRecord]
    #: the users' and the catalog's string ids at the boundary (user b is ``user_ids[b]``,
    #: item i is ``item_ids[i]``), what exports name them by
    user_ids: tuple[str, ...] = ()
    item_ids: tuple[str, ...] = ()


def segment_matrix(spec: ScenarioSpec, types: torch.Tensor | None) -> torch.Tensor | None:
    """One-hot user types: the side information policies get for typed populations."""
    if types is None:
        return None
    n_types = len(getattr(spec.population, "types", ()))
    return torch.nn.functional.one_hot(types, n_types).float()


def draw_noise(env: Environment, gens: Mapping[str, torch.Generator], n: int) -> StepNoise:
    """The step's random numbers; their shapes depend on the scenario, never the policy."""
    dev = env.device
    choice = torch.rand(n, generator=gens["choice"], device=dev)
    dyn = (
        torch.rand(n, generator=gens["dynamics"], device=dev)
        if env.dynamics.needs_uniform
        else None
    )
    drift = (
        torch.randn(n, env.dim, generator=gens["drift"], device=dev)
        if env.spec.drift.noise_std > 0
        else None
    )
    return StepNoise(choice=choice, dynamics=dyn, drift=drift)


def natural_drift(
    env: Environment, u: torch.Tensor, u0: torch.Tensor, noise: StepNoise
) -> torch.Tensor:
    """Recommendation-independent drift, then the preference space is enforced."""
    d = env.spec.drift
    if d.mean_reversion == 0 and noise.drift is None:
        return u
    if d.mean_reversion:
        u = u + d.mean_reversion * (u0 - u)
    if noise.drift is not None:
        u = u + d.noise_std * noise.drift
    return project(env.spec.space, u)


def project(space: str, u: torch.Tensor) -> torch.Tensor:
    if space == "sphere":
        return u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if space == "box":
        return u.clamp(-1.0, 1.0)
    if space == "unit_interval":
        return u.clamp(0.0, 1.0)
    return u


@dataclass(frozen=True)
class StepOutcome:
    """One arm's step: what was shown, the choice, and the new preferences."""

    items: torch.Tensor  # [B, k, d] features of the shown items
    appeal: torch.Tensor  # [B, k]
    probs: torch.Tensor  # [B, k + 1] choice probabilities (last: no click)
    slot: torch.Tensor  # [B] chosen slot or -1
    item: torch.Tensor  # [B] chosen item or -1
    new_u: torch.Tensor  # [B, d] preferences after dynamics and natural drift


def step_users(
    env: Environment, u: torch.Tensor, u0: torch.Tensor, slate: torch.Tensor, noise: StepNoise
) -> StepOutcome:
    """Steps 2 to 5 of the step order for one arm: choice probabilities from the true
    preferences, the sampled choice, the item dynamics, then the natural drift."""
    cat = env.catalog
    items = cat.features[slate]
    appeal = cat.appeal[slate]
    probs = env.choice.probabilities(u, items, appeal)
    slot = sample_choice(probs, noise.choice)
    rows = torch.arange(slot.shape[0], device=slot.device)
    item = torch.where(slot >= 0, slate[rows, slot.clamp_min(0)], torch.full_like(slot, -1))
    new_u = env.dynamics.step(u, u0, items, slot, noise.dynamics)
    new_u = natural_drift(env, new_u, u0, noise)
    return StepOutcome(items=items, appeal=appeal, probs=probs, slot=slot, item=item, new_u=new_u)


def run_arms(
    env: Environment,
    policies: Mapping[str, Policy],
    *,
    users: int,
    steps: int,
    seed: int,
    reference: str | None = None,
    record_full: bool = False,
    progress: Callable[[int], None] | None = None,
    observe: Callable[[StepView], None] | None = None,
) -> RunResult:
    """Run every policy on the same users with common random numbers.

    ``policies`` maps arm names to distinct policy instances (they keep state). The
    ``reference`` arm (usually the natural counterfactual) is what induced shift is
    measured against. ``observe`` sees every arm's step (for measurements beyond the
    streamed summaries) and must not modify the tensors it is given.
    """
    if users < 1 or steps < 1:
        raise SpecError("users and steps must be positive")
    if len({id(p) for p in policies.values()}) != len(policies):
        raise SpecError("each arm needs its own policy instance")
    if reference is not None and reference not in policies:
        raise SpecError(f"reference arm {reference!r} is not among the arms {sorted(policies)}")
    spec, dev, cat = env.spec, env.device, env.catalog
    streams = Streams(seed, device=dev)
    u0, user_ids = sample_population_with_ids(
        spec.population,
        users,
        cat.dim,
        env_seed=spec.env_seed,
        gen=Streams(seed).generator("population"),
    )
    u0 = u0.to(dev)
    user_ids = check_ids(user_ids, users, "user")  # () -> "0" .. str(users - 1)
    if spec.polarity_axis is not None:
        axis = torch.tensor(spec.polarity_axis, dtype=torch.float32, device=dev)
        axis = axis / axis.norm()
    else:
        axis = metrics.principal_axis(u0)
    gens = {name: streams.generator(name) for name in ("choice", "dynamics", "drift")}
    types = user_types(spec.population, u0)
    segments = segment_matrix(spec, types)
    state = {arm: u0 for arm in policies}
    records = {arm: ArmRecord() for arm in policies}
    clicks = {arm: torch.zeros(users, device=dev) for arm in policies}
    for arm, pol in policies.items():
        pol.reset(
            PolicyContext(
                num_users=users,
                slate_size=spec.slate_size,
                catalog=cat,
                generator=streams.generator("policy"),
                device=dev,
                horizon=steps,
                segments=segments,
                user_ids=user_ids,
            )
        )
        if record_full:
            records[arm].preferences = [u0.cpu()]
            records[arm].slates, records[arm].choices = [], []

    for t in range(steps):
        noise = draw_noise(env, gens, users)
        for arm, pol in policies.items():
            u = state[arm]
            obs = Observation(t=t, num_users=users, true_preferences=u if pol.oracle else None)
            slate = pol.act(obs)
            check_slate(slate, users, spec.slate_size, cat.size, getattr(pol, "name", arm))
            slate = slate.long()
            out = step_users(env, u, u0, slate, noise)
            slot, item, new_u = out.slot, out.item, out.new_u
            clicked = slot >= 0
            pol.update(Feedback(t=t, slate=slate, slot=slot, item=item))

            rec = records[arm]
            safe_item = item.clamp_min(0)
            value = (u * cat.features[safe_item]).sum(dim=1) + cat.quality[safe_item]
            p0 = env.choice.probabilities(u0, out.items, out.appeal)
            s = rec.summaries
            s["engagement"].append(float(clicked.float().mean()))
            s["expected_engagement"].append(float(1.0 - out.probs[:, -1].mean()))
            s["initial_pref_engagement"].append(float(1.0 - p0[:, -1].mean()))
            s["welfare"].append(float(torch.where(clicked, value, torch.zeros_like(value)).mean()))
            s["shift"].append(float((new_u - u0).norm(dim=1).mean()))
            z = metrics.polarity(new_u, axis)
            s["polarity_mean"].append(float(z.mean()))
            s["polarization"].append(metrics.variance_index(z))
            clicks[arm] += clicked.float()
            state[arm] = new_u
            if observe is not None:
                view = StepView(
                    t=t,
                    arm=arm,
                    u0=u0,
                    u=new_u,
                    slate=slate,
                    item=item,
                    axis=axis,
                    p_none=out.probs[:, -1],
                    p_none_initial=p0[:, -1],
                )
                observe(view)
            if record_full:
                assert (
                    rec.preferences is not None
                    and rec.slates is not None
                    and rec.choices is not None
                )
                rec.preferences.append(new_u.cpu())
                rec.slates.append(slate.cpu())
                rec.choices.append(item.cpu())
            # free this arm's step tensors ([B, k, d] items above all) before the next arm
            del out, p0, value, z
        for arm in policies:
            ref_u = state[reference] if reference is not None else state[arm]
            records[arm].summaries["induced_shift"].append(
                float((state[arm] - ref_u).norm(dim=1).mean())
            )
        if progress is not None:
            progress(t + 1)

    for arm in policies:
        records[arm].final = state[arm]
        records[arm].clicks = clicks[arm]
    return RunResult(
        scenario=spec,
        seed=seed,
        users=users,
        steps=steps,
        reference=reference,
        initial=u0,
        axis=axis,
        types=types,
        arms=records,
        user_ids=user_ids,
        item_ids=cat.item_ids,
    )
