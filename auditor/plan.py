"""The audit plan: a spec checked and resolved once into arms, kinds, roles, trainings,
checkpoints and (on request) its cost, before anything runs."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from recommenders.registry import get_kind, make_policy
from recommenders.rl.policy import PolicyBundle
from simulator.errors import SpecError
from simulator.policy import Policy
from simulator.specs import ScenarioSpec

from . import budget
from .budget import Cost
from .measure import ArmJob, checkpoints
from .spec import AUDITED, NATURAL, AuditSpec, Criterion, PolicySpec, default_criteria

PolicyFactory = Callable[[], Policy]

_ROLE_OF_KIND = {
    NATURAL: "natural",
    "ppo-myopic": "myopic",
    "myopic": "myopic",
    "ppo": "rl",
    "ppo-safe-shift": "penalized",
    "ppo-distance": "penalized",
    "ppo-path-specific": "penalized",
}
#: kinds that play each reference role, to tell a user which reference to add
_KINDS_OF_ROLE = {
    "natural": "natural",
    "myopic": "ppo-myopic or myopic",
    "rl": "ppo",
    "penalized": "ppo-distance, ppo-safe-shift or ppo-path-specific",
}


def arm_role(label: str, kind: str) -> str:
    """The role an arm plays: audited, natural, myopic, rl, penalized or other."""
    return "audited" if label == AUDITED else _ROLE_OF_KIND.get(kind, "other")


def reference_arm(arms: list[tuple[str, str]], ref: str) -> str | None:
    """The arm a criterion's reference names among ``(label, role)`` pairs: a label
    first, then a role; never the audited policy."""
    refs = [(label, role) for label, role in arms if label != AUDITED]
    for label, _ in refs:
        if label == ref:
            return label
    for label, role in refs:
        if role == ref:
            return label
    return None


def add_reference(ref: str) -> str:
    kinds = _KINDS_OF_ROLE.get(ref)
    what = (
        f"a reference playing the {ref} role (kind {kinds})"
        if kinds
        else f"a reference labelled {ref!r}"
    )
    return f"add {what} to the references"


def _is_default(c: Criterion) -> bool:
    return c in default_criteria()


def _check_criteria(spec: AuditSpec) -> None:
    """A criterion the user wrote must name a reference of the audit. (A default criterion
    whose reference is absent is kept: it makes the verdict inconclusive and says what to
    add, so that leaving out a reference can never turn into a pass.)"""
    arms = [(label, arm_role(label, p.kind)) for label, p in spec.arms()]
    for c in spec.criteria:
        if reference_arm(arms, c.reference) is None and not _is_default(c):
            raise SpecError(
                f"criterion {c.name!r} names the reference {c.reference!r}, which is not in "
                f"this audit; {add_reference(c.reference)} or drop the criterion"
            )


@dataclass(frozen=True)
class BuiltinPolicy:
    """A picklable factory for a registry policy (with its trained bundle if any)."""

    kind: str
    config: dict[str, Any] | None = None
    weights: bytes | None = None

    def __call__(self) -> Policy:
        bundle = None
        if self.config is not None and self.weights is not None:
            bundle = PolicyBundle(config=self.config, weights=self.weights)
        return make_policy(self.kind, bundle)


@dataclass
class PlannedArm:
    """One arm as the plan resolved it (the factory is filled in before running)."""

    label: str
    spec: PolicySpec
    kind: str  # registry kind actually run ('natural' resolved to the scenario's)
    role: str
    factory: PolicyFactory | None = None
    trained_run_id: str | None = None
    penalty_weight: float | None = None
    oracle: bool = False
    users_independent: bool = False  # see PolicyKind.users_independent
    trainable: bool = False  # a learner: from the trained-policy cache, or trained first
    retrains: bool = False  # see PolicyKind.retrains (RecBole in the loop)
    extra: bool = False  # a kind outside the registry, resolved by the caller


def _train_config(kind: str, params: dict[str, Any]) -> Any:
    from .train import default_config

    return default_config(kind, **params)


def check_spec(spec: AuditSpec, extra_kinds: Collection[str] = ()) -> None:
    """Refuse an audit that cannot run, with one clear line: unknown scenario or policy
    kinds, parameters a kind does not take, an audit of the natural policy itself."""
    spec.scenario_spec()
    _check_criteria(spec)
    if spec.policy.kind == NATURAL:
        raise SpecError("the policy under audit cannot be 'natural'; it is the counterfactual")
    for label, p in spec.arms():
        if p.kind in extra_kinds:
            continue
        if p.kind == NATURAL:
            if p.params:
                raise SpecError("the natural reference takes no parameters")
            continue
        kind = get_kind(p.kind)  # raises: unknown policy, with the known ones
        if kind.trainable:
            try:
                _train_config(p.kind, dict(p.params))
            except (SpecError, ValidationError) as exc:
                raise SpecError(f"arm {label!r} ({p.kind}): {exc}") from None
        elif p.params:
            raise SpecError(
                f"policy {p.kind!r} takes no parameters (got {', '.join(sorted(p.params))})"
            )


def _arms(
    spec: AuditSpec,
    scenario: ScenarioSpec,
    extra_kinds: Collection[str],
    independent_kinds: Collection[str] = (),
) -> list[PlannedArm]:
    out = []
    for label, p in spec.arms():
        kind = scenario.natural_policy if p.kind == NATURAL else p.kind
        arm = PlannedArm(label=label, spec=p, kind=kind, role=arm_role(label, p.kind))
        arm.users_independent = p.kind in independent_kinds
        arm.extra = p.kind in extra_kinds
        if not arm.extra:
            k = get_kind(kind)
            arm.oracle = k.oracle
            arm.users_independent = k.users_independent
            arm.trainable = k.trainable
            arm.retrains = k.retrains
            if k.trainable:
                arm.penalty_weight = float(p.params.get("penalty_weight", k.penalty_weight))
        out.append(arm)
    return out


@dataclass
class AuditPlan:
    """An audit resolved once from its spec: the scenario, the horizon, every arm with its
    kind, role and properties, the learners to train, the checkpoints, and (on request)
    the cost estimate. The CLI, the service and the driver use it; the workers get the
    :class:`~auditor.measure.ArmJob` s it makes."""

    spec: AuditSpec
    scenario: ScenarioSpec
    steps: int
    arms: list[PlannedArm]
    checkpoints: tuple[int, ...]
    #: the budget estimate (auditor.budget.Cost) when plan_audit(..., estimate=True)
    cost: Cost | None = None

    @property
    def trainings(self) -> list[PlannedArm]:
        """Arms whose learner comes from the cache or is trained before the simulations."""
        return [a for a in self.arms if a.trainable]

    def jobs(self) -> list[ArmJob]:
        """One job per non-natural arm and replicate; each runs beside the natural
        counterfactual in lockstep (common random numbers: the run the natural arm would
        have alone), and one of them per replicate also measures it as the natural arm
        (:func:`~auditor.measure.measure_arms` returns it second), so the natural arm is
        never simulated on its own. Needs the arms' factories."""
        for arm in self.arms:
            if arm.factory is None:
                raise RuntimeError(f"arm {arm.label!r} has no policy factory yet")
        natural = next(a.factory for a in self.arms if a.label == NATURAL)
        others = [a for a in self.arms if a.label != NATURAL]  # the audited arm is first
        # the natural arm rides with a built-in arm where there is one, rather than with a
        # team's own policy (a failure of either fails the audit; a built-in one is the
        # least likely to fail), else with the audited arm
        carrier = next((a for a in others if not a.extra), others[0])
        spec = self.spec
        out = []
        for r in range(spec.replicates):
            for arm in others:
                assert arm.factory is not None
                out.append(
                    ArmJob(
                        scenario=self.scenario,
                        label=arm.label,
                        factory=arm.factory,
                        users=spec.users,
                        steps=self.steps,
                        seed=spec.seed + r,
                        replicate=r,
                        checkpoints=self.checkpoints,
                        extreme_threshold=spec.extreme_threshold,
                        device=spec.device,
                        counterfactual=natural,
                        counterfactual_label=NATURAL if arm is carrier else None,
                    )
                )
        return out


def plan_audit(
    spec: AuditSpec,
    *,
    extra_kinds: Collection[str] = (),
    independent_kinds: Collection[str] = (),
    estimate: bool = False,
) -> AuditPlan:
    """Check ``spec`` (SpecError with one clear line) and resolve it once. Builds no
    catalog: the dimension comes from the scenario's fields or a file's header."""
    check_spec(spec, extra_kinds)
    scenario = spec.scenario_spec()
    steps = spec.steps or scenario.default_steps
    _, dim, _ = budget.catalog_shape(scenario.catalog)
    return AuditPlan(
        spec=spec,
        scenario=scenario,
        steps=steps,
        arms=_arms(spec, scenario, extra_kinds, independent_kinds),
        checkpoints=tuple(checkpoints(steps, spec.users, dim)),
        cost=budget.estimate(spec, extra_kinds=extra_kinds) if estimate else None,
    )
