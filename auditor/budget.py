"""What an audit will cost, estimated from its spec alone, and the limits it must fit.

:func:`estimate` is the one place that sizes an audit before anything runs: it computes
the catalog's size and dimension from the scenario's fields (reading no more than a
file's header, building nothing), the simulations (users x steps x replicates x arms),
the largest array any simulation or training will hold, every training the references
imply (iterations x users x horizon) and the calls to remote policies. :func:`check`
refuses a cost over its :class:`Limits` with :class:`BudgetExceeded`, which states the
estimate and the limit. The service calls both on every submission; the CLI may too.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from simulator.errors import SpecError
from simulator.specs import (
    CatalogSpec,
    FileCatalog,
    FilePopulation,
    MixturePopulation,
    OneHotTopicsCatalog,
    PolarityCatalog,
    ScenarioSpec,
    TopicClustersCatalog,
)

from .spec import NATURAL, AuditSpec, PolicySpec

#: users whose consumed-item sets are kept for the Jaccard metric (auditor.measure)
_JACCARD_USERS = 4096
#: users of the evaluation run after a training (auditor.train.TrainJob.eval_users)
_EVAL_USERS = 2000


class BudgetExceeded(SpecError):
    """An audit (or upload) over a limit (the service answers 422, type
    urn:recaudit:problem:budget)."""


@dataclass(frozen=True)
class Limits:
    """The most one audit may cost. Defaults are the service's (docs/service.md)."""

    user_steps: int = 20_000_000
    cells: int = 100_000_000
    train_steps: int = 100_000_000
    remote_calls: int = 100_000
    #: where each limit comes from, named in refusals
    names: dict[str, str] = field(
        default_factory=lambda: {
            "user_steps": "RECAUDIT_MAX_USER_STEPS",
            "cells": "RECAUDIT_MAX_CELLS",
            "train_steps": "RECAUDIT_MAX_TRAIN_STEPS",
            "remote_calls": "RECAUDIT_MAX_REMOTE_CALLS",
        }
    )


@dataclass(frozen=True)
class Cost:
    """An audit's estimated cost (see :func:`estimate`)."""

    users: int
    steps: int
    replicates: int
    arms: int
    n_items: int
    dim: int
    user_steps: int  # users x steps x replicates x arm runs
    cells: int  # elements of the largest array one simulation or training holds
    cells_what: str  # what that array is
    train_steps: int  # environment steps of every training the references imply
    trainings: int
    remote_calls: int


def catalog_shape(spec: CatalogSpec) -> tuple[int, int, int]:
    """(items, dimension, topics) of a catalog from its fields; a file catalog's from the
    file's header. Builds nothing."""
    if isinstance(spec, TopicClustersCatalog):
        return spec.n_topics * spec.items_per_topic, spec.dim, spec.n_topics
    if isinstance(spec, PolarityCatalog):
        return spec.n_items, 1 + spec.n_topic_dims, 10
    if isinstance(spec, OneHotTopicsCatalog):
        return spec.n_topics * spec.items_per_topic, spec.n_topics, spec.n_topics
    if isinstance(spec, FileCatalog):
        from simulator.io import matrix_shape

        rows, dim = matrix_shape(spec.path, what="catalog")
        return rows, dim, dim
    raise SpecError(f"unknown catalog kind {spec!r}")  # pragma: no cover - closed union


def _trainable(kind: str) -> bool:
    from recommenders.registry import POLICIES

    k = POLICIES.get(kind)
    return bool(k is not None and k.trainable)


def _train_shape(p: PolicySpec, scenario: ScenarioSpec) -> tuple[int, int, int]:
    """(iterations, users, horizon) of the training a trainable reference implies."""
    from .train import default_config

    cfg = default_config(p.kind, **dict(p.params))
    return cfg.iterations, cfg.users, cfg.steps or scenario.default_steps


def estimate(
    spec: AuditSpec,
    *,
    remote_kind: str = "remote",
    remote_batch: int = 1024,
    extra_kinds: Collection[str] = (),
) -> Cost:
    """The whole cost of ``spec``, from its fields alone (call after the spec's own
    checks: unknown kinds and bad training parameters raise SpecError here too)."""
    scenario = spec.scenario_spec()
    steps = spec.steps or scenario.default_steps
    arms = spec.arms()
    n_items, dim, topics = catalog_shape(scenario.catalog)
    if isinstance(scenario.population, FilePopulation):
        from simulator.io import matrix_shape

        matrix_shape(scenario.population.path, what="population")
    users = spec.users
    terms: dict[str, int] = {
        f"the catalog ({n_items:,} items x {dim} dimensions)": n_items * dim,
        f"the users' preferences ({users:,} users x {dim} dimensions)": users * dim,
        f"consumed-item sets ({min(users, _JACCARD_USERS):,} users x {n_items:,} items)": min(
            users, _JACCARD_USERS
        )
        * n_items,
        f"topic counts ({users:,} users x {topics:,} topics)": users * topics,
    }
    if isinstance(scenario.catalog, TopicClustersCatalog):
        c = scenario.catalog
        terms[f"topic centres ({c.n_topics:,} x {dim})"] = c.n_topics * dim
    if isinstance(scenario.population, MixturePopulation):
        m = scenario.population
        terms[f"mixture centres ({m.n_components:,} x {dim})"] = m.n_components * dim
    train_steps = trainings = remote_calls = 0
    seen: set[str] = set()
    for _label, p in arms:
        kind = scenario.natural_policy if p.kind == NATURAL else p.kind
        if p.kind == remote_kind:
            batches = -(-users // max(1, remote_batch))
            remote_calls += spec.replicates * steps * batches
            continue
        if kind in extra_kinds or not _trainable(kind):
            continue
        # a learned policy scores every item for every user at each step
        terms[f"a learned policy's scores ({users:,} users x {n_items:,} items)"] = users * n_items
        key = f"{kind}:{sorted(p.params.items())}"
        if key in seen:  # the same configuration is trained once
            continue
        seen.add(key)
        iterations, t_users, horizon = _train_shape(p, scenario)
        trainings += 1
        train_steps += iterations * t_users * horizon + 2 * _EVAL_USERS * horizon
        obs = 3 * dim + 2 + len(getattr(scenario.population, "types", ()))
        terms[f"training buffers ({horizon:,} steps x {t_users:,} users x {obs} features)"] = (
            horizon * t_users * obs
        )
        terms[f"training scores ({t_users:,} users x {n_items:,} items)"] = t_users * n_items
    what, cells = max(terms.items(), key=lambda kv: kv[1])
    return Cost(
        users=users,
        steps=steps,
        replicates=spec.replicates,
        arms=len(arms),
        n_items=n_items,
        dim=dim,
        user_steps=users * steps * spec.replicates * arm_runs(len(arms)),
        cells=cells,
        cells_what=what,
        train_steps=train_steps,
        trainings=trainings,
        remote_calls=remote_calls,
    )


def arm_runs(arms: int) -> int:
    """Arm simulations per replicate: every arm but the natural one runs beside the
    natural counterfactual in lockstep (auditor.measure, for mediated engagement), and
    the natural arm is measured from one of those runs (auditor.plan.AuditPlan.jobs)."""
    return 2 * (arms - 1) if arms > 1 else 1


def check(cost: Cost, limits: Limits) -> None:
    """Refuse (BudgetExceeded) a cost over any limit, stating the estimate and the limit."""
    n = limits.names
    if cost.user_steps > limits.user_steps:
        raise BudgetExceeded(
            f"this audit costs {cost.users} users x {cost.steps} steps x {cost.replicates} "
            f"replicates x {cost.arms} arms ({arm_runs(cost.arms)} arm runs: each arm but "
            f"the natural one, beside the natural counterfactual) = {cost.user_steps:,} "
            "user-steps, over this "
            f"service's limit of {limits.user_steps:,} ({n['user_steps']}); use fewer users, "
            "steps, replicates or references"
        )
    if cost.cells > limits.cells:
        raise BudgetExceeded(
            f"this audit would hold {_cells(cost.cells)} in one array, {cost.cells_what}, "
            f"over this service's limit of {limits.cells:,} values ({n['cells']}); use a "
            "smaller catalog, fewer users or smaller training settings"
        )
    if cost.train_steps > limits.train_steps:
        raise BudgetExceeded(
            f"the {cost.trainings} training(s) this audit's references imply cost "
            f"{cost.train_steps:,} environment steps (iterations x users x horizon, plus "
            f"evaluation), over this service's limit of {limits.train_steps:,} "
            f"({n['train_steps']}); lower the references' iterations, users or steps"
        )
    if cost.remote_calls > limits.remote_calls:
        raise BudgetExceeded(
            f"this audit makes {cost.remote_calls:,} calls to remote policies (replicates x "
            f"steps x user batches), over this service's limit of {limits.remote_calls:,} "
            f"({n['remote_calls']}); use fewer users, steps or replicates"
        )


def _cells(n: int) -> str:
    return f"{n:,} values (about {_bytes(4 * n)} as float32)"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


#: a dynamics fit's work per (event x slate item x dimension x family): the likelihood
#: passes of one family's search, in the units of the derivation's budget (log rows x
#: dimension x epochs). Measured with docs/derive.md's REST example (400 users, 8,000
#: rows): its fit did 1,760,960 such units in 56 to 60 s, its derivation 2,560,000 units
#: in 5.8 s, so one unit of fit costs about 15 units of derivation.
FIT_PASSES = 16


@dataclass(frozen=True)
class FitCost:
    """A dynamics fit's estimated cost (see :func:`estimate_fit`)."""

    users: int
    events: int  # each user's first max_events events, summed
    longest: int  # the longest user's events (the padded horizon of the event tensors)
    families: int  # static and every candidate
    slate: int
    dim: int
    work: int  # events x slate x dimension x families x FIT_PASSES
    cells: int  # rows x longest x slate x dimension, plus the kept curvature (below)
    rows: int
    curvature: int  # of cells: the users' curvature (see fit_curvature_cells)


def fit_rows(users: int) -> int:
    """Rows (users times parameter points) the fitter evaluates at once: it stacks copies
    of the users up to its evaluator's ``max_rows`` (simulator.fitting.fit.Evaluator)."""
    import inspect

    from simulator.fitting.fit import Evaluator

    limit = inspect.signature(Evaluator).parameters["max_rows"].default
    per = max(1, int(limit) // max(users, 1))
    return per * users


#: d x d float64 matrices per row that the users' initial-preference fit holds while it
#: runs (simulator.fitting.fit._sphere_bfgs: the starts' curvature, the inverse-Hessian
#: approximations, the projections and the update's products), besides those it keeps
FIT_CURVATURE_WORK = 8


def fit_curvature_cells(rows: int, dim: int, users: int = 0, families: int = 0) -> int:
    """The values (float32 units) of the users' curvature: a d x d float64 matrix per row
    of each batch that one of the ``CURVATURE_KEPT`` newest points or the best belongs to
    (kept for warm starts; a point's matrices are a view of its whole batch's, so a kept
    point keeps its batch's), plus :data:`FIT_CURVATURE_WORK` per row of the batch being
    fitted; and the selection's warm start of the whole-log fit: one per user each of the
    ``families`` candidates was fitted on (at most ``SELECTION_USERS`` of the ``users``)
    and one per user for the whole-log fit's first point."""
    from simulator.fitting.fit import CURVATURE_KEPT
    from simulator.fitting.select import SELECTION_USERS

    warm = (families * min(users, SELECTION_USERS) + users) if families else 0
    return ((CURVATURE_KEPT + 1 + FIT_CURVATURE_WORK) * rows + warm) * dim * dim * 2


def estimate_fit(
    events_per_user: Collection[int], *, max_events: int, slate: int, dim: int, families: int
) -> FitCost:
    """The cost of fitting ``families`` dynamics families to a log whose users have
    ``events_per_user`` events, each cut to its first ``max_events``. The work counts
    what one likelihood pass touches per family (event x slate item x dimension) times
    :data:`FIT_PASSES`, in the units of the derivation's budget; the
    memory is the largest array, the slate items' features of every event of the rows
    evaluated at once (which the gradient of the users' initial preferences holds), plus
    the users' curvature kept for warm starts (:func:`fit_curvature_cells`)."""
    kept = [min(int(n), max_events) for n in events_per_user]
    users, events, longest = len(kept), sum(kept), max(kept, default=0)
    rows = fit_rows(users)
    curvature = fit_curvature_cells(rows, dim, users, families)
    return FitCost(
        users=users,
        events=events,
        longest=longest,
        families=families,
        slate=slate,
        dim=dim,
        work=events * slate * dim * families * FIT_PASSES,
        cells=rows * longest * slate * dim + curvature,
        rows=rows,
        curvature=curvature,
    )


def check_fit(
    cost: FitCost, *, work_left: int, work_name: str, cells: int, cells_name: str
) -> None:
    """Refuse (BudgetExceeded) a fit whose work exceeds what the budget has left or whose
    largest memory exceeds ``cells`` values, stating the estimate and the limit."""
    if cost.work > work_left:
        raise BudgetExceeded(
            f"the dynamics fit costs {cost.events:,} events x {cost.slate} slate items x "
            f"{cost.dim} dimensions x {cost.families} families x {FIT_PASSES} passes = "
            f"{cost.work:,}, over the "
            f"{max(work_left, 0):,} this service's limit ({work_name}) leaves after the "
            "derivation; use fewer candidates, a smaller max_events or a shorter log"
        )
    if cost.cells > cells:
        raise BudgetExceeded(
            f"the dynamics fit would hold {_cells(cost.cells)}: the slate items' features of "
            f"{cost.rows:,} user rows x {cost.longest:,} events x {cost.slate} items x "
            f"{cost.dim} dimensions, plus {cost.curvature:,} for the users' curvature (kept "
            f"for warm starts and in the fit), over this service's limit of {cells:,} values "
            f"({cells_name}); use a smaller max_events or dim"
        )
