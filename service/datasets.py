"""Uploaded interaction logs and the tenant-private scenarios derived from them.

``POST /v1/datasets`` takes a log (CSV or parquet; never unpickled: parquet is read by
pyarrow) and optionally an item table; the files are checked in a staging directory
(type by content, schema, the derivation budget) and refused uploads leave nothing
behind. An accepted upload is kept under ``<datasets_dir>/<tenant>/<dir>/input/`` and a
derivation job is queued in the ``datasets`` table, run by the same durable job
machinery as audits (:mod:`service.jobs`); its scenario directory is written to
``<dir>/scenario/``. A succeeded derivation's scenario is private to its tenant: the
tenant's audits name it by id and ``GET /v1/scenarios`` lists it for that tenant only.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from auditor.budget import FIT_PASSES
from simulator.errors import SpecError
from simulator.specs import ScenarioSpec

from .config import Settings
from .jobs import JobStore
from .runner import Execute, Outcome
from .store import datasets
from .uploads import STAGING, PolicyStore

KIND = "derive"
PREFIX = "d"
ID_RE = re.compile(r"^d[0-9a-f]{16}$")
_DIR_RE = re.compile(r"^u[0-9a-f]{16}$")
#: parquet files start and end with this
_PARQUET_MAGIC = b"PAR1"
_PICKLE = tuple(bytes([0x80, p]) for p in range(2, 6))


class UnsupportedDataset(SpecError):
    """A file that is not CSV or parquet at all (415)."""


class DeriveOverBudget(SpecError):
    """A derivation over the service's budget (422, urn:recaudit:problem:budget)."""


class FitRequest(BaseModel):
    """A derivation's fit step: ``recaudit fit``'s options (the proxy's slate size is the
    scenario's ``slate_size``; the seed, when not given, the derivation's)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    candidates: list[str] | None = Field(
        None,
        max_length=16,
        description="Families to fit besides static (default: every one: static, trecs, "
        "biased_assimilation, bounded_confidence, anchored_trecs).",
    )
    proxy: Literal["popularity", "sampled"] = Field(
        "popularity", description="Logging-policy proxy for the exposures a log lacks."
    )
    max_events: int = Field(200, ge=1, le=10_000, description="Each user's first N events.")
    replicates: int = Field(200, ge=10, le=2000, description="Bootstrap replicates over users.")
    seed: int | None = Field(None, ge=0, le=2**31)
    sensitivity: bool = Field(False, description="Refit the selected family under the other proxy.")

    def options(self, slate_size: int, seed: int) -> Any:
        from simulator.fitting.run import FitOptions, parse_candidates

        return FitOptions(
            candidates=parse_candidates(self.candidates),
            proxy=self.proxy,
            slate_size=slate_size,
            max_events=self.max_events,
            replicates=self.replicates,
            seed=seed if self.seed is None else self.seed,
            sensitivity=self.sensitivity,
        )


class DeriveRequest(BaseModel):
    """The options of a derivation (the form fields of ``POST /v1/datasets``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    scenario_id: str = Field(..., pattern=r"^[a-z0-9][a-z0-9.-]*-v[0-9]+$", max_length=128)
    user_col: str | None = Field(None, max_length=128)
    item_col: str | None = Field(None, max_length=128)
    timestamp_col: str | None = Field(None, max_length=128)
    rating_col: str | None = Field(None, max_length=128)
    label_col: str | None = Field(None, max_length=128)
    min_rating: float | None = None
    item_id_col: str | None = Field(None, max_length=128)
    category_col: str | None = Field(None, max_length=128)
    polarity_column: str | None = Field(None, max_length=128)
    polarity_labels: str | None = Field(None, max_length=2000)
    model: str = Field("BPR", max_length=32)
    dim: int = Field(16, ge=1, le=256)
    epochs: int = Field(20, ge=1, le=500)
    learning_rate: float = Field(0.005, gt=0, le=1)
    seed: int = Field(0, ge=0, le=2**31)
    steps: int = Field(50, ge=1, le=10_000)
    slate_size: int = Field(10, ge=1, le=1000)
    dynamics: dict[str, Any] = Field(default_factory=lambda: {"kind": "trecs", "delta": 0.05})
    fit: FitRequest | None = None

    def fit_options(self) -> Any:
        """The fit step's options (SpecError: unknown family), or None without one."""
        return None if self.fit is None else self.fit.options(self.slate_size, self.seed)

    def derive_args(self) -> dict[str, Any]:
        from recommenders.derive import Columns, DeriveOptions, ItemColumns, parse_labels

        return {
            "columns": Columns(
                user=self.user_col,
                item=self.item_col,
                timestamp=self.timestamp_col,
                rating=self.rating_col,
                label=self.label_col,
            ),
            "item_columns": ItemColumns(
                id=self.item_id_col, category=self.category_col, polarity=self.polarity_column
            ),
            "options": DeriveOptions(
                scenario_id=self.scenario_id,
                model=self.model,
                dim=self.dim,
                epochs=self.epochs,
                learning_rate=self.learning_rate,
                seed=self.seed,
                steps=self.steps,
                slate_size=self.slate_size,
                min_rating=self.min_rating,
                polarity_labels=parse_labels(self.polarity_labels)
                if self.polarity_labels
                else None,
                dynamics=self.dynamics,
                threads=1,
            ),
        }


def sniff(data: bytes, filename: str | None, what: str) -> str:
    """The file's suffix (``.csv`` or ``.parquet``) after checking its content."""
    suffix = Path(filename or "").suffix.lower()
    if data[:2] in _PICKLE or data[:4] == b"PK\x03\x04":
        raise UnsupportedDataset(f"the {what} is a pickle or zip file; upload CSV or parquet")
    if suffix == ".parquet":
        if len(data) < 12 or data[:4] != _PARQUET_MAGIC or data[-4:] != _PARQUET_MAGIC:
            raise UnsupportedDataset(f"the {what} is named .parquet but is not a parquet file")
        return suffix
    if suffix == ".csv":
        if b"\x00" in data[:65536]:
            raise UnsupportedDataset(f"the {what} is named .csv but holds binary data")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnsupportedDataset(f"the {what} is not UTF-8 text: {exc}") from None
        return suffix
    raise UnsupportedDataset(f"the {what} must be a .csv or .parquet file, not {filename!r}")


class DatasetStore:
    """The datasets' job table and files."""

    def __init__(self, jobs: JobStore, settings: Settings) -> None:
        self.jobs = jobs
        self.settings = settings
        self.root = settings.datasets_root
        self._cache: dict[Path, ScenarioSpec] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, engine: Any, settings: Settings) -> DatasetStore:
        return cls(JobStore(engine, datasets, PREFIX), settings)

    def clean_staging(self) -> list[str]:
        """Remove staging directories of uploads that never finished, by the rule of
        policy uploads (:meth:`service.uploads.PolicyStore.clean_staging`)."""
        return PolicyStore(self.jobs.engine, self.root).clean_staging()

    def directory(self, tenant: str, name: str) -> Path:
        if not _DIR_RE.match(name):
            raise SpecError(f"bad dataset directory {name!r}")
        return self.root / tenant / name

    # ------------------------------------------------------------------ intake
    def submit(
        self,
        tenant: str,
        request: DeriveRequest,
        log: tuple[bytes, str | None],
        items: tuple[bytes, str | None] | None,
    ) -> dict[str, Any]:
        """Check an upload and queue its derivation; SpecError (UnsupportedDataset: 415,
        DeriveOverBudget: 422 budget) otherwise, with nothing kept."""
        from recommenders.derive import parse_dynamics, read_items, read_log
        from simulator.scenarios import SCENARIOS

        if request.scenario_id in SCENARIOS:
            raise SpecError(f"scenario id {request.scenario_id!r} is a registered scenario")
        if self._taken(tenant, request.scenario_id):
            raise SpecError(
                f"this tenant already has a scenario {request.scenario_id!r} (or one being "
                "derived); use a new version"
            )
        parse_dynamics(request.dynamics)
        fit = request.fit_options()
        if fit is not None and "dynamics" in request.model_fields_set:
            raise SpecError("give dynamics or fit, not both: a fit chooses the dynamics")
        if request.polarity_column and request.polarity_labels:
            raise SpecError("give polarity_column or polarity_labels, not both")
        log_suffix = sniff(log[0], log[1], "log")
        items_suffix = sniff(items[0], items[1], "item table") if items is not None else None
        args = request.derive_args()
        self.root.mkdir(parents=True, exist_ok=True)
        owner = f"{STAGING}{socket.gethostname()}.{os.getpid()}."
        staging = Path(tempfile.mkdtemp(prefix=owner, dir=self.root))
        try:
            log_name = f"log{log_suffix}"
            (staging / log_name).write_bytes(log[0])
            read = read_log(staging / log_name, args["columns"], request.min_rating)
            items_name = None
            if items is not None:
                items_name = f"items{items_suffix}"
                (staging / items_name).write_bytes(items[0])
                read_items(staging / items_name, args["item_columns"])
            cost = read.rows_read * request.dim * request.epochs
            if cost > self.settings.max_derive_cost:
                raise DeriveOverBudget(
                    f"this derivation costs {read.rows_read:,} rows x {request.dim} dimensions "
                    f"x {request.epochs} epochs = {cost:,}, over this service's limit of "
                    f"{self.settings.max_derive_cost:,} (RECAUDIT_MAX_DERIVE_COST); use fewer "
                    "epochs, a smaller dimension or a shorter log"
                )
            fit_cost = self._fit_cost(read.log, request, fit, cost) if fit is not None else None
            name = "u" + secrets.token_hex(8)
            final = self.root / tenant / name
            final.mkdir(parents=True)
            os.replace(staging, final / "input")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        body = json.dumps(
            {
                "dir": name,
                "log": log_name,
                "items": items_name,
                "request": request.model_dump(mode="json"),
                "rows": read.rows_read,
                "cost": cost + (fit_cost or 0),
                "fit_cost": fit_cost,
            },
            sort_keys=True,
        )
        try:
            row, _ = self.jobs.create(tenant, body, policy_kind=KIND, scenario=request.scenario_id)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        return row

    def _fit_cost(self, log: Any, request: DeriveRequest, fit: Any, derive_cost: int) -> int:
        """The fit step's work, counted in the derivation's budget (and its memory in the
        audits' array limit); DeriveOverBudget when over either."""
        from auditor.budget import BudgetExceeded, check_fit, estimate_fit
        from simulator.fitting.debias import corrects

        cost = estimate_fit(
            log.groupby("user").size().tolist(),
            max_events=fit.max_events,
            slate=request.slate_size,
            dim=request.dim,
            # a family with a smoothed threshold may be corrected by more fits
            families=len(fit.families) + corrects(fit.families),
        )
        try:
            check_fit(
                cost,
                work_left=self.settings.max_derive_cost - derive_cost,
                work_name="RECAUDIT_MAX_DERIVE_COST",
                cells=self.settings.max_cells,
                cells_name="RECAUDIT_MAX_CELLS",
            )
        except BudgetExceeded as exc:
            raise DeriveOverBudget(str(exc)) from None
        return cost.work

    def _taken(self, tenant: str, scenario_id: str) -> bool:
        t = self.jobs.table
        with self.jobs.engine.connect() as conn:
            found = conn.execute(
                sa.select(t.c.id).where(
                    t.c.tenant == tenant,
                    t.c.scenario == scenario_id,
                    t.c.status.in_(("queued", "running", "succeeded")),
                )
            ).first()
        return found is not None

    # ----------------------------------------------------------------- reading
    def get(self, tenant: str, dataset_id: str) -> dict[str, Any] | None:
        if not ID_RE.match(dataset_id):
            return None
        return self.jobs.get(tenant, dataset_id)

    def scenario_dir(self, row: dict[str, Any]) -> Path:
        return self.directory(row["tenant"], json.loads(row["spec"])["dir"]) / "scenario"

    def derivation(self, row: dict[str, Any]) -> dict[str, Any] | None:
        from simulator.derived import DERIVATION_FILE

        if row["status"] != "succeeded":
            return None
        path = self.scenario_dir(row) / DERIVATION_FILE
        try:
            out: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return out

    def _load(self, row: dict[str, Any]) -> ScenarioSpec | None:
        from simulator.derived import load_scenario_dir

        d = self.scenario_dir(row)
        with self._lock:
            hit = self._cache.get(d)
        if hit is not None:
            return hit
        try:
            spec = load_scenario_dir(d)
        except SpecError:
            return None
        with self._lock:
            self._cache[d] = spec
        return spec

    def scenarios(self, tenant: str) -> list[ScenarioSpec]:
        """The tenant's derived scenarios, oldest first."""
        t = self.jobs.table
        with self.jobs.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t)
                .where(t.c.tenant == tenant, t.c.status == "succeeded")
                .order_by(t.c.created_at, t.c.id)
            ).mappings()
            found = [dict(r) for r in rows]
        out: list[ScenarioSpec] = []
        seen: set[str] = set()
        for row in found:
            spec = self._load(row)
            if spec is not None and spec.id not in seen:
                seen.add(spec.id)
                out.append(spec)
        return out

    def scenario(self, tenant: str, scenario_id: str) -> ScenarioSpec | None:
        """The tenant's derived scenario with this id, or None."""
        for spec in self.scenarios(tenant):
            if spec.id == scenario_id:
                return spec
        return None


def derive_execute(store: DatasetStore) -> Execute:
    """Run a derivation job (recommenders.derive)."""

    def execute(row: dict[str, Any], progress: Any, cancel: threading.Event) -> Outcome:
        from auditor.executor import Cancelled
        from recommenders.derive import derive

        job = json.loads(row["spec"])
        base = store.directory(row["tenant"], job["dir"])
        request = DeriveRequest.model_validate(job["request"])
        fitter = None
        fit = request.fit_options()
        if fit is not None:
            from recommenders.fit_step import fitted_dynamics
            from simulator.fitting.debias import corrects

            phases = len(fit.families) + 1 + corrects(fit.families) + int(fit.sensitivity)
            seen: list[str] = []

            def fit_progress(msg: str) -> None:
                if not seen or msg != seen[-1]:
                    seen.append(msg)
                done = min(len(seen) - 1, phases) / phases
                progress(0.5 + 0.45 * done, f"fitting dynamics: {msg}")

            # named as an upload's staging directory: a fit whose service process was
            # killed leaves its files where the next start's clean_staging removes them
            staging = (store.root, f"{STAGING}{socket.gethostname()}.{os.getpid()}.")
            fitter = fitted_dynamics(
                fit, progress=fit_progress, isolated=True, threads=1, workdir=staging
            )

        def check() -> None:  # DELETE stops the embeddings' training within a batch
            if cancel.is_set():
                raise Cancelled(f"derivation {row['id']} was cancelled")

        progress(0.05, "deriving: training embeddings, calibrating")
        derive(
            base / "input" / job["log"],
            base / "scenario",
            items_path=base / "input" / job["items"] if job["items"] else None,
            force=True,
            dynamics_fitter=fitter,
            check=check,
            **request.derive_args(),
        )
        progress(1.0, "derived")
        return Outcome(verdict="derived", exit_code=0)

    return execute


def with_tenant_scenario(
    spec: Any, tenant: str, store: DatasetStore | None
) -> tuple[Any, ScenarioSpec | None]:
    """(spec, the tenant's derived scenario it names or None). An axis-free scenario's
    audit without explicit criteria gets the axis-free default criteria, written into
    the spec so the stored audit says what it judged."""
    from auditor.spec import axis_free_criteria
    from simulator.scenarios import SCENARIOS

    if store is None or not isinstance(spec.scenario, str) or spec.scenario in SCENARIOS:
        return spec, None
    found = store.scenario(tenant, spec.scenario)
    if found is None:
        return spec, None
    if found.axis_free and "criteria" not in spec.model_fields_set:
        spec = spec.model_copy(update={"criteria": axis_free_criteria()})
    return spec, found


class Dataset(BaseModel):
    """A dataset upload and its derivation."""

    id: str = Field(description="Dataset id (d + 16 hex digits).")
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    scenario: str = Field(description="The derived scenario's id (tenant-private).")
    progress: float = Field(description="Fraction done, 0..1.")
    phase: str = Field(description="What the derivation is doing.")
    error: str | None = Field(None, description="Why it failed.")
    rows: int = Field(description="Rows of the uploaded log.")
    cost: int = Field(
        description="Budget used: log rows x dimension x epochs, plus the fit's work."
    )
    fit_cost: int | None = Field(
        None,
        description="The fit step's work: events x slate size x dimension x families x "
        f"{FIT_PASSES} passes; candidates that include one with a smoothed threshold "
        "(bounded confidence, anchored or not) count four families more, for its correction and one "
        "retry of it (None: no fit; "
        "the dynamics are the chosen ones).",
    )
    created: str | None = Field(None, description="Submitted at (ISO 8601, UTC).")
    finished: str | None = Field(None, description="Finished at (ISO 8601, UTC).")
    derivation: dict[str, Any] | None = Field(
        None, description="derivation.json once succeeded: provenance, calibration, polarity."
    )


def public_spec(spec: ScenarioSpec) -> dict[str, Any]:
    """A scenario spec as a tenant sees it: data files by file name, not server path."""
    data = spec.model_dump(mode="json")
    for part in ("catalog", "population"):
        if data[part].get("kind") == "file" and not data[part]["path"].startswith("data:"):
            data[part]["path"] = Path(data[part]["path"]).name
    return data
