"""A scenario from a team's data: ``recaudit scenario derive``.

From an interaction log (CSV, parquet or RecBole atomic ``.inter``; columns user, item,
timestamp, optional rating or label) and optionally an item table (id, category, a
numeric attribute), :func:`derive` writes a scenario directory (see
:mod:`simulator.derived`):

1. **Embeddings.** User and item embeddings are learned with RecBole
   (:func:`recommenders.recbole.train_embeddings`) and scaled to unit norm; the
   catalog's ``item_id`` and the population's ``user_id`` are the data's own ids.
2. **Horizon.** The log's time span is cut into ``steps`` equal steps. The log's
   consumption rate is the share of (user, step) cells in which the user consumed at
   least one item: the quantity a simulated step measures (at most one click per user
   and step).
3. **Choice calibration.** MNL with an outside option. The temperature ``T`` is the
   maximum-likelihood temperature of the log's choices among all catalog items (a sample
   of interactions); the no-click utility ``c0`` is solved so that the expected click
   rate of the logging-policy proxy (every user shown the log's ``slate_size`` most
   consumed items) equals the log's rate at the first step. The derived scenario is then
   simulated under that proxy over the whole horizon with its dynamics (the first
   ``CHECK_USERS`` users, the derivation's seed); while the simulated rate misses the
   log's by more than 2%, c0 is moved by ``T`` times the log-odds gap (at most 3 rounds,
   kept only when closer). The final simulated rate and its error are reported.
4. **Polarity axis.** From an item attribute the team names: a numeric column, or a
   mapping of category labels to numbers; the axis is the least-squares direction in
   embedding space that predicts the attribute (R^2 reported). Without one the scenario
   is marked ``axis_free`` and audits default to axis-free criteria.
5. **Dynamics.** Chosen by the team (kind and parameters), or fitted from the log. The
   seam is :data:`DynamicsFitter`: a function of the :class:`DerivedLog`, the derived
   catalog and users and the calibrated choice model that returns the dynamics, natural
   drift and a ``fit`` section for the scenario; :func:`chosen_dynamics` is the one that
   fits nothing, :func:`recommenders.fit_step.fitted_dynamics` the one that runs
   ``recaudit fit``'s fitter (:mod:`simulator.fitting.run`).

The log and the item table are read by :mod:`simulator.logs` (the reader of
``recaudit fit`` too): bad input raises :class:`~simulator.errors.SpecError` naming the
first offending rows.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import TypeAdapter, ValidationError

from simulator.derived import (
    DERIVATION_FILE,
    ITEMS_FILE,
    USERS_FILE,
    write_scenario_json,
)
from simulator.errors import SpecError
from simulator.io import file_sha256
from simulator.logs import (  # noqa: F401  (the readers, re-exported for the derivation's users)
    ITEM_SUFFIXES,
    LOG_SUFFIXES,
    SHOW_ROWS,
    Columns,
    ItemColumns,
    ItemTable,
    ReadLog,
    read_items,
    read_log,
)
from simulator.specs import (
    DynamicsSpec,
    FileCatalog,
    FilePopulation,
    MNLChoice,
    NaturalDrift,
    ScenarioSpec,
)

FORMAT = "recaudit-derivation"
FORMAT_VERSION = 1
#: interactions sampled for the temperature's likelihood, users for the rate calibration
CALIBRATION_SAMPLE = 5000
#: users simulated to check the calibration; rounds and relative tolerance of the
#: correction of c0 on the simulated rate
CHECK_USERS = 2000
CALIBRATION_ROUNDS = 3
CALIBRATION_TOLERANCE = 0.02
#: the temperature's search stops when its bracket is this narrow in log T (each step
#: scores the whole sample against every item)
TEMPERATURE_TOLERANCE = 1e-6


# ================================================================== options and inputs
@dataclass(frozen=True)
class DeriveOptions:
    """Everything that shapes a derived scenario besides the input files."""

    scenario_id: str = "derived-v1"
    model: str = "BPR"
    dim: int = 16
    epochs: int = 20
    seed: int = 0
    learning_rate: float = 0.005
    steps: int = 50
    slate_size: int = 10
    min_rating: float | None = None
    polarity_labels: Mapping[str, float] | None = None
    dynamics: Mapping[str, Any] = field(default_factory=lambda: {"kind": "trecs", "delta": 0.05})
    threads: int | None = 1


def parse_labels(text: str) -> dict[str, float]:
    """``left=-1,right=1`` -> {"left": -1.0, "right": 1.0}."""
    out: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not key.strip() or not math.isfinite(number):
            raise SpecError(f"cannot read {part!r} in {text!r}; write label=number,label=number")
        out[key.strip()] = number
    if len(set(out.values())) < 2:
        raise SpecError("polarity labels need at least two different values")
    return out


# ============================================================================ the log
@dataclass(frozen=True)
class DerivedLog:
    """The log in the derived scenario's terms: simulator user and item indices, the step
    of each interaction (equal-width bins of the log's time span), in time order."""

    user: np.ndarray  # [N] int64 index into user_ids
    item: np.ndarray  # [N] int64 index into item_ids
    step: np.ndarray  # [N] int64 in 0..steps-1
    timestamp: np.ndarray  # [N] float64 seconds
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    steps: int
    step_seconds: float

    @property
    def rate(self) -> float:
        """Share of (user, step) cells with at least one interaction."""
        cells = np.unique(self.user * self.steps + self.step).size
        return cells / (len(self.user_ids) * self.steps)


def _natural_order(tokens: list[str]) -> list[int]:
    """Positions of ``tokens`` in increasing id: numerically when every id is an integer."""
    if all(t.lstrip("-").isdigit() for t in tokens):
        return sorted(range(len(tokens)), key=lambda j: (int(tokens[j]), tokens[j]))
    return sorted(range(len(tokens)), key=lambda j: tokens[j])


def make_derived_log(
    log: pd.DataFrame, user_ids: tuple[str, ...], item_ids: tuple[str, ...], steps: int
) -> DerivedLog:
    uix = pd.Index(user_ids).get_indexer(log["user"])
    iix = pd.Index(item_ids).get_indexer(log["item"])
    ts = log["timestamp"].to_numpy(np.float64)
    lo, hi = float(ts.min()), float(ts.max())
    span = hi - lo
    step = np.zeros(len(ts), dtype=np.int64)
    if span > 0:
        step = np.minimum(((ts - lo) / span * steps).astype(np.int64), steps - 1)
    order = np.argsort(ts, kind="stable")
    return DerivedLog(
        user=uix[order].astype(np.int64),
        item=iix[order].astype(np.int64),
        step=step[order],
        timestamp=ts[order],
        user_ids=user_ids,
        item_ids=item_ids,
        steps=steps,
        step_seconds=span / steps,
    )


# ========================================================================== calibration
def fit_temperature(
    users: torch.Tensor, items: torch.Tensor, log: DerivedLog, seed: int
) -> dict[str, float]:
    """Maximum-likelihood temperature of the logged choices among all catalog items
    (``P(i | u) = softmax_i(<u, x_i> / T)``), on a seeded sample of interactions."""
    rng = np.random.default_rng(seed)
    n = len(log.user)
    pick = rng.choice(n, size=min(n, CALIBRATION_SAMPLE), replace=False)
    u = users[torch.from_numpy(log.user[pick])].float()
    chosen = torch.from_numpy(log.item[pick])
    scores = u @ items.float().T  # [S, K]
    s_chosen = scores.gather(1, chosen[:, None]).squeeze(1)

    def nll(log_t: float) -> float:
        t = math.exp(log_t)
        return float((torch.logsumexp(scores / t, dim=1) - s_chosen / t).mean())

    lo, hi = math.log(1e-3), math.log(10.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):  # stops at a relative precision of TEMPERATURE_TOLERANCE in T
        if hi - lo < TEMPERATURE_TOLERANCE:
            break
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    t = math.exp((lo + hi) / 2)
    k = items.shape[0]
    return {
        "temperature": t,
        "log_likelihood_per_choice": -nll(math.log(t)),
        "uniform_log_likelihood_per_choice": -math.log(k),
        "sample": len(pick),
    }


def popular_slate(log: DerivedLog, k: int) -> torch.Tensor:
    """The log's k most consumed items (ties: lower index), the logging-policy proxy."""
    counts = np.bincount(log.item, minlength=len(log.item_ids)).astype(np.float64)
    order = np.lexsort((np.arange(counts.size), -counts))
    return torch.from_numpy(order[:k].copy())


def solve_no_click(
    users: torch.Tensor, items: torch.Tensor, slate: torch.Tensor, temperature: float, rate: float
) -> float:
    """The no-click utility c0 at which the mean MNL click probability of ``slate`` over
    ``users`` equals ``rate`` (bisection; the probability falls as c0 grows)."""
    s = (users.float() @ items[slate].float().T) / temperature  # [B, k]
    lse = torch.logsumexp(s, dim=1)

    def p(c0: float) -> float:
        return float(torch.sigmoid(lse - c0 / temperature).mean())

    lo, hi = -50.0, 50.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if p(mid) > rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


class FixedSlate:
    """Shows every user the same slate (the logging-policy proxy of the calibration)."""

    oracle = False

    def __init__(self, slate: torch.Tensor) -> None:
        self.slate = slate
        self.name = "log-popularity"

    def reset(self, ctx: Any) -> None:
        self.device = ctx.device

    def act(self, obs: Any) -> torch.Tensor:
        return self.slate.to(self.device)[None, :].expand(obs.num_users, -1)

    def update(self, feedback: Any) -> None:
        return None


def check_calibration(spec: ScenarioSpec, slate: torch.Tensor, seed: int) -> float:
    """Simulated click rate of the derived scenario under the logging-policy proxy over
    its whole horizon (the first ``CHECK_USERS`` users)."""
    from simulator.engine import build_environment, run_arms

    env = build_environment(spec)
    users = min(spec.default_users, CHECK_USERS)
    res = run_arms(
        env, {"proxy": FixedSlate(slate)}, users=users, steps=spec.default_steps, seed=seed
    )
    return float(np.mean(res.arms["proxy"].summaries["engagement"]))


# ========================================================================== polarity
def polarity_axis(items: torch.Tensor, values: np.ndarray) -> tuple[tuple[float, ...], float, int]:
    """The unit direction w minimizing ||(X - mean) w' - (p - mean)|| over items with a
    value, its R^2 and the number of items used."""
    ok = np.isfinite(values)
    if ok.sum() < 2 or np.unique(values[ok]).size < 2:
        raise SpecError("the polarity attribute needs at least two items with different values")
    x = items.double().numpy()[ok]
    p = values[ok]
    xc, pc = x - x.mean(axis=0), p - p.mean()
    w, *_ = np.linalg.lstsq(xc, pc, rcond=None)
    resid = pc - xc @ w
    r2 = 1.0 - float(resid @ resid) / float(pc @ pc)
    norm = float(np.linalg.norm(w))
    if norm == 0:
        raise SpecError("the polarity attribute is unrelated to the learned embeddings")
    return tuple(float(v) for v in w / norm), r2, int(ok.sum())


# ========================================================================== dynamics
@dataclass(frozen=True)
class DynamicsChoice:
    """What a :data:`DynamicsFitter` returns: the scenario's dynamics and natural drift,
    and the ``fit`` section it carries (None when the dynamics are chosen, not fitted)."""

    dynamics: Any  # a DynamicsSpec variant
    drift: NaturalDrift
    fit: dict[str, Any] | None
    summary: dict[str, Any]


#: the seam for fitting dynamics from the log: (log in scenario terms, the derived
#: catalog's unit item vectors [K, d], the users' unit vectors [B, d], the calibrated
#: choice model) -> DynamicsChoice
DynamicsFitter = Callable[[DerivedLog, torch.Tensor, torch.Tensor, MNLChoice], DynamicsChoice]

_DYNAMICS = TypeAdapter(DynamicsSpec)


def parse_dynamics(spec: Mapping[str, Any]) -> Any:
    try:
        return _DYNAMICS.validate_python(dict(spec))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SpecError(f"dynamics {dict(spec)}: invalid {where}: {first['msg']}") from None


def chosen_dynamics(spec: Mapping[str, Any], drift: NaturalDrift | None = None) -> DynamicsFitter:
    """A fitter that fits nothing: the team's chosen dynamics, stated as assumed."""
    dyn = parse_dynamics(spec)

    def fitter(
        log: DerivedLog, items: torch.Tensor, users: torch.Tensor, choice: MNLChoice
    ) -> DynamicsChoice:
        return DynamicsChoice(
            dynamics=dyn,
            drift=drift or NaturalDrift(),
            fit=None,
            summary={"by": "chosen", "fitted": False, **dyn.model_dump(mode="json")},
        )

    return fitter


# ========================================================================== derivation
def _unit_table(weights: torch.Tensor, tokens: list[str], id_col: str) -> pd.DataFrame:
    order = _natural_order(tokens)
    w = weights[order]
    w = (w / w.norm(dim=1, keepdim=True)).float().numpy()
    table = pd.DataFrame({f"f{d}": w[:, d] for d in range(w.shape[1])})
    table[id_col] = [tokens[j] for j in order]
    return table


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {"torch": str(torch.__version__)}
    for name in ("recaudit", "recbole"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # pragma: no cover - a source tree without install
            out[name] = "unknown"
    return out


def derive(
    log_path: str | Path,
    out_dir: str | Path,
    *,
    items_path: str | Path | None = None,
    columns: Columns | None = None,
    item_columns: ItemColumns | None = None,
    options: DeriveOptions = DeriveOptions(),
    dynamics_fitter: DynamicsFitter | None = None,
    force: bool = False,
    check: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Derive a scenario directory from a log (see the module docstring); returns the
    provenance written to ``derivation.json``. ``out_dir`` must not exist or be empty
    (``force``: replaced); it is written whole or not at all. ``check()`` is called
    before every batch of the embeddings' training and between the steps after it; it
    raises to stop the derivation (a cancelled job), which then writes nothing."""
    check = check or (lambda: None)
    from recommenders.recbole import EMBEDDING_MODELS, train_embeddings

    if options.model not in EMBEDDING_MODELS:
        raise SpecError(
            f"cannot derive embeddings with {options.model!r}; supported: "
            f"{', '.join(EMBEDDING_MODELS)} (RecBole's matrix factorization with the BPR loss)"
        )
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        raise SpecError(f"{out} exists and is not an empty directory (use --force to replace it)")
    if options.steps < 1 or options.slate_size < 1 or options.dim < 1 or options.epochs < 1:
        raise SpecError("steps, slate size, dimension and epochs must be positive")
    if not re.match(ScenarioSpec.model_fields["id"].metadata[0].pattern, options.scenario_id):
        raise SpecError(
            f"scenario id {options.scenario_id!r} must look like name-v1 (lower case, digits, "
            "dots and dashes, ending in -v<version>)"
        )
    fitter = dynamics_fitter or chosen_dynamics(options.dynamics)

    read = read_log(log_path, columns or Columns(), options.min_rating)
    table = read_items(items_path, item_columns or ItemColumns()) if items_path else None
    log = read.log
    if options.polarity_labels is not None and (table is None or table.category is None):
        raise SpecError("--polarity-labels needs an item table with a category column")

    n_items = len(set(log["item"]) | (set(table.ids) if table is not None else set()))
    per_user = log.groupby("user")["item"].nunique()
    full = per_user[per_user >= n_items]
    if len(full):
        raise SpecError(
            f"{len(full)} user(s) consumed every one of the {n_items} items (first: "
            f"{', '.join(map(repr, full.index[:SHOW_ROWS]))}); BPR needs items a user did "
            "not consume: drop these users or give the full catalog with --items"
        )
    emb = train_embeddings(
        log,
        item_genres=table.genres if table is not None else None,
        model=options.model,
        dim=options.dim,
        epochs=options.epochs,
        seed=options.seed,
        learning_rate=options.learning_rate,
        threads=options.threads,
        check=check,
    )
    check()
    items = _unit_table(emb.items, emb.item_tokens, "item_id")
    users = _unit_table(emb.users, emb.user_tokens, "user_id")
    item_ids = tuple(items["item_id"])
    user_ids = tuple(users["user_id"])
    x = torch.from_numpy(items[[f"f{d}" for d in range(options.dim)]].to_numpy())
    u = torch.from_numpy(users[[f"f{d}" for d in range(options.dim)]].to_numpy())
    if options.slate_size > len(item_ids):
        raise SpecError(f"slate size {options.slate_size} exceeds the {len(item_ids)} items")

    polarity: dict[str, Any] = {"axis": None}
    axis: tuple[float, ...] | None = None
    if table is not None and table.category is not None:
        label = table.category.reindex(items["item_id"]).fillna("unknown").astype(str)
        names = sorted(set(label))
        items["category"] = label.to_numpy()
        items["topic"] = np.array([names.index(g) for g in label], dtype=np.int64)
    values: np.ndarray | None = None
    if table is not None and table.polarity is not None:
        values = table.polarity.reindex(items["item_id"]).to_numpy(np.float64)
        polarity["source"] = f"item attribute {table.columns['polarity']!r}"
    elif options.polarity_labels is not None:
        values = items["category"].map(dict(options.polarity_labels)).to_numpy(np.float64)
        polarity["source"] = f"category labels {dict(options.polarity_labels)}"
    if values is not None:
        axis, r2, used = polarity_axis(x, values)
        items["polarity"] = values
        polarity.update({"axis": list(axis), "r2": r2, "items_with_value": used})
    else:
        polarity["source"] = None
        polarity["note"] = (
            "no polarity attribute named: the scenario is axis-free; audits default to "
            "axis-free criteria (induced shift, dispersion)"
        )
    items["appeal"] = np.zeros(len(items), dtype=np.float32)
    items["quality"] = np.zeros(len(items), dtype=np.float32)

    dlog = make_derived_log(log, user_ids, item_ids, options.steps)
    rate = dlog.rate
    temp = fit_temperature(u, x, dlog, options.seed)
    slate = popular_slate(dlog, options.slate_size)
    rng = np.random.default_rng(options.seed)
    sample = rng.choice(len(user_ids), size=min(len(user_ids), CALIBRATION_SAMPLE), replace=False)
    c0 = solve_no_click(u[torch.from_numpy(np.sort(sample))], x, slate, temp["temperature"], rate)
    check()
    dyn = fitter(dlog, x, u, MNLChoice(temperature=temp["temperature"], no_click_utility=c0))
    check()

    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".derive-", dir=parent))
    try:
        items.to_parquet(work / ITEMS_FILE, index=False)
        users.to_parquet(work / USERS_FILE, index=False)
        log_name = Path(log_path).name
        spec = ScenarioSpec(
            id=options.scenario_id,
            title=f"Derived from {log_name}: {len(item_ids)} items, {len(user_ids)} users",
            source=(
                f"recaudit scenario derive from {log_name} (sha256 "
                f"{file_sha256(log_path)[:12]}); {options.model} embeddings "
                f"(dim {options.dim}, {options.epochs} epochs, seed {options.seed}); see "
                f"{DERIVATION_FILE}"
            ),
            shows=(
                "A team's own catalog and users: learned embeddings, choice calibrated to "
                f"the log's consumption rate ({rate:.4f} per user-step), "
                f"{dyn.dynamics.kind} dynamics ({'fitted' if dyn.fit else 'assumed'})."
            ),
            catalog=FileCatalog(path=str(work / ITEMS_FILE), sha256=file_sha256(work / ITEMS_FILE)),
            population=FilePopulation(
                path=str(work / USERS_FILE), sha256=file_sha256(work / USERS_FILE)
            ),
            choice=MNLChoice(temperature=temp["temperature"], no_click_utility=c0),
            dynamics=dyn.dynamics,
            drift=dyn.drift,
            slate_size=options.slate_size,
            polarity_axis=axis,
            axis_free=axis is None,
            default_users=len(user_ids),
            default_steps=options.steps,
            fit=dyn.fit,
        )
        # c0 solved at step 0; the dynamics move the rate over the horizon, so c0 is
        # corrected on the simulated rate (a log-odds step), keeping the closest
        simulated = check_calibration(spec, slate, options.seed)
        step0_c0, rounds = c0, 0
        for _ in range(CALIBRATION_ROUNDS):
            check()
            if abs(simulated - rate) <= CALIBRATION_TOLERANCE * rate or not 0 < simulated < 1:
                break
            odds = math.log(simulated / (1 - simulated)) - math.log(rate / (1 - rate))
            trial_c0 = c0 + temp["temperature"] * odds
            trial = spec.model_copy(
                update={
                    "choice": MNLChoice(temperature=temp["temperature"], no_click_utility=trial_c0)
                }
            )
            trial_rate = check_calibration(trial, slate, options.seed)
            rounds += 1
            if abs(trial_rate - rate) >= abs(simulated - rate):
                break
            spec, c0, simulated = trial, trial_c0, trial_rate
        calibration = {
            "rate_definition": (
                "share of (user, step) cells with at least one interaction; steps are "
                f"{options.steps} equal parts of the log's time span"
            ),
            "log_rate": rate,
            "log_interactions_per_user_step": len(log) / (len(user_ids) * options.steps),
            "proxy_policy": f"every user shown the log's {options.slate_size} most consumed items",
            **temp,
            "no_click_utility": c0,
            "no_click_utility_step0": step0_c0,
            "correction_rounds": rounds,
            "simulated_rate": simulated,
            "simulated_users": min(len(user_ids), CHECK_USERS),
            "error": simulated - rate,
            "relative_error": (simulated - rate) / rate,
        }
        provenance = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "scenario": spec.id,
            "fingerprint": spec.fingerprint(),
            "inputs": {
                "log": {"name": log_name, "sha256": file_sha256(log_path), "columns": read.columns},
                "items": None
                if table is None or items_path is None
                else {
                    "name": Path(items_path).name,
                    "sha256": file_sha256(items_path),
                    "columns": table.columns,
                },
            },
            "rows": {"read": read.rows_read, "kept": len(log), "dropped": read.dropped},
            "items": {
                "catalog": len(item_ids),
                "in_log": int(log["item"].nunique()),
                "only_in_table": 0 if table is None else int((~table.ids.isin(log["item"])).sum()),
                "in_log_not_in_table": 0
                if table is None
                else int((~pd.Index(log["item"].unique()).isin(table.ids)).sum()),
            },
            "users": len(user_ids),
            "embeddings": emb.summary,
            "horizon": {
                "steps": options.steps,
                "step_seconds": dlog.step_seconds,
                "t_min": float(dlog.timestamp.min()),
                "t_max": float(dlog.timestamp.max()),
            },
            "calibration": calibration,
            "polarity": polarity,
            "dynamics": dyn.summary,
            "versions": _versions(),
        }
        write_scenario_json(spec, work)
        (work / DERIVATION_FILE).write_text(
            json.dumps(provenance, indent=1, sort_keys=True, allow_nan=False) + "\n",
            encoding="utf-8",
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return provenance


# ========================================================================== test data
def synthetic_log(
    n_users: int, n_items: int, n_interactions: int, *, seed: int = 0, n_groups: int = 4
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A plausible log with known structure, for tests and benchmarks: users and items
    fall in ``n_groups`` taste groups; an interaction is an item of the user's group with
    probability 0.8 (Zipf-like popularity within the group), otherwise any item; activity
    per user is skewed; timestamps span 100 days in seconds. Returns (log with
    ``user_id``, ``item_id``, ``timestamp``, ``rating``; item table with ``item_id``,
    ``genre``, ``leaning`` in [-1, 1] by group)."""
    rng = np.random.default_rng(seed)
    item_group = np.arange(n_items) % n_groups
    user_group = rng.integers(0, n_groups, n_users)
    activity = rng.pareto(1.5, n_users) + 1.0
    user = rng.choice(n_users, size=n_interactions, p=activity / activity.sum())
    own = rng.random(n_interactions) < 0.8
    per_group = [np.flatnonzero(item_group == g) for g in range(n_groups)]
    rank = np.minimum(rng.zipf(1.3, n_interactions) - 1, n_items // n_groups - 1)
    in_group = np.array([per_group[g][0] for g in range(n_groups)])[user_group[user]]
    item = np.where(own, in_group + rank * n_groups, rng.integers(0, n_items, n_interactions))
    item = np.minimum(item, n_items - 1)
    ts = np.sort(rng.uniform(1.6e9, 1.6e9 + 100 * 86400, n_interactions)).round(0)
    log = pd.DataFrame(
        {
            "user_id": [f"u{x}" for x in user],
            "item_id": [f"i{x}" for x in item],
            "timestamp": ts,
            "rating": rng.integers(1, 6, n_interactions).astype(np.float64),
        }
    )
    table = pd.DataFrame(
        {
            "item_id": [f"i{x}" for x in range(n_items)],
            "genre": [f"g{g}" for g in item_group],
            "leaning": np.linspace(-1.0, 1.0, n_groups)[item_group],
        }
    )
    return log, table


# ====================================================================== movielens-100k-v1
MOVIELENS_DIR = "movielens-100k-v1"


def derive_movielens(
    out_dir: str | Path, *, epochs: int = 40, seed: int = 2020, threads: int | None = 1
) -> dict[str, Any]:
    """The ``movielens-100k-v1`` catalog and population as one output of :func:`derive`:
    RecBole's bundled ml-100k log and item table (category: each movie's genres, topic its
    first genre), BPR with 16 dimensions, Adam at 0.005. Writes ``items.parquet`` (the
    category column keeps its published name ``genre``) and ``users.parquet`` into
    ``out_dir``; returns the derivation's provenance. The published preset keeps its own
    choice model and dynamics; the calibration in the provenance is for reference."""
    from recommenders.ml100k import ml100k_dir

    src = ml100k_dir()
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="recaudit-ml100k-") as tmp:
        prov = derive(
            src / "ml-100k.inter",
            Path(tmp) / "derived",
            items_path=src / "ml-100k.item",
            item_columns=ItemColumns(category="class"),
            options=DeriveOptions(
                scenario_id=MOVIELENS_DIR,
                dim=16,
                epochs=epochs,
                seed=seed,
                learning_rate=0.005,
                threads=threads,
            ),
        )
        items = pd.read_parquet(Path(tmp) / "derived" / ITEMS_FILE)
        out.mkdir(parents=True, exist_ok=True)
        items.rename(columns={"category": "genre"}).to_parquet(out / ITEMS_FILE, index=False)
        shutil.copyfile(Path(tmp) / "derived" / USERS_FILE, out / USERS_FILE)
    return prov
