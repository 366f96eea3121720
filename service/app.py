"""The app factory: ``create_app(settings)`` builds the FastAPI app; its lifespan opens
the job store, Ray and the MLflow client once per process and starts the job runner.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from . import problems
from .config import Settings
from .datasets import DatasetStore, derive_execute, with_tenant_scenario
from .deps import Services
from .jobs import JobStore
from .keys import KeyStore
from .runner import Execute, JobRunner, Outcome
from .store import open_engine
from .uploads import PolicyStore

log = logging.getLogger("recaudit.service")

DESCRIPTION = """\
Audit recommender policies for the preference shifts and polarization they induce, over
HTTP. Submit an audit spec (the same fields as `recaudit audit --spec FILE`) to
`POST /v1/audits`, poll `GET /v1/audits/{id}`, then fetch `/report`, `/report.html` and
the figures. Every `/v1` request needs `Authorization: Bearer KEY` (keys come from
`recaudit keys create --tenant NAME`); a tenant sees only its own audits and policies.
Errors are RFC 9457 problem details (`application/problem+json`).
"""


def real_execute(
    settings: Settings, uploads: PolicyStore, datasets: DatasetStore | None = None
) -> Execute:
    """Run an audit job with the auditor (Ray and MLflow as configured)."""

    def execute(row: dict[str, Any], progress: Any, cancel: threading.Event) -> Outcome:
        from auditor.audit import run_audit
        from auditor.executor import Cancelled, run_jobs, stop_when
        from auditor.spec import AuditSpec
        from dashboards.figures import make_figures
        from dashboards.report import write_report
        from recommenders.remote import stop_calls_when

        from .intake import EXTRA_KINDS, INDEPENDENT_KINDS, resolver

        spec = AuditSpec.model_validate_json(row["spec"])
        _, own = with_tenant_scenario(spec, row["tenant"], datasets)
        if own is not None:  # the tenant's derived scenario, named by id
            spec = spec.model_copy(update={"scenario": own})
        out = settings.reports_dir / row["tenant"] / row["id"]

        def render(report: Any, directory: Any) -> None:
            # Drawn on the executor, like the simulations: matplotlib holds this
            # process's GIL for seconds otherwise, and status reads would wait on it.
            figures = run_jobs(make_figures, [report], ray_address=settings.ray_address)[0]
            write_report(report, directory, figures)

        # the cancel reaches every task: trainings and simulations (Ray tasks cancelled,
        # or, in this process, stopped at their next iteration or step) and remote calls
        # in flight
        with stop_when(cancel.is_set), stop_calls_when(cancel.is_set, Cancelled):
            result = run_audit(
                spec,
                ray_address=settings.ray_address,
                progress=progress,
                cancel=cancel,
                track=settings.track,
                render=render,
                out_dir=out,
                resolve_policy=resolver(settings, row["tenant"], uploads),
                audit_id=row["id"],
                extra_kinds=EXTRA_KINDS,
                independent_kinds=INDEPENDENT_KINDS,
            )
        prov = result.report.provenance
        return Outcome(
            verdict=result.report.verdict,
            exit_code=result.exit_code,
            run_id=result.run_id,
            experiment_id=prov.mlflow_experiment_id,
        )

    return execute


def create_app(settings: Settings | None = None, *, execute: Execute | None = None) -> FastAPI:
    """The service. ``execute`` replaces the auditor (tests); with the real one, Ray is
    started (or connected) and MLflow checked in the lifespan."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import os

        os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
        engine = open_engine(settings.db_url)
        jobs = JobStore(engine)
        uploads = PolicyStore(engine, settings.policies_dir)
        datasets = DatasetStore.open(engine, settings)
        if uploads.clean_staging() + datasets.clean_staging():
            log.warning("removed the staging files of uploads a stopped process left")
        real = execute is None
        run = real_execute(settings, uploads, datasets) if real else execute
        assert run is not None
        runner = JobRunner(
            jobs,
            run,
            concurrency=settings.concurrency,
            per_tenant=settings.per_tenant,
            max_attempts=settings.max_attempts,
            stale_after_s=settings.stale_after_s,
        )
        dataset_runner = JobRunner(
            datasets.jobs,
            derive_execute(datasets),
            concurrency=1,
            max_attempts=settings.max_attempts,
            stale_after_s=settings.stale_after_s,
        )
        svc = Services(settings, engine, KeyStore(engine), jobs, uploads, runner)
        svc.datasets, svc.dataset_runner = datasets, dataset_runner
        started_ray = False
        ray_pids = settings.home / "ray.pids"
        if real:
            _warm_up()
        if real and settings.ray_address is not None:
            from auditor.executor import ensure_ray

            try:
                if settings.ray_address == "local":
                    _end_orphans(ray_pids)
                ensure_ray(settings.ray_address)
                started_ray = True
                if settings.ray_address == "local":
                    _keep_recording(ray_pids)
            except Exception as exc:
                svc.ray_error = str(exc)
                log.error("Ray is not usable: %s", exc)
        if settings.track:
            from auditor import tracking

            try:  # links go to the public address only, never the internal URI
                svc.mlflow_ui = tracking.public_url()
            except Exception as exc:
                svc.mlflow_error = str(exc)
                log.error("%s", exc)
        if real and settings.track:
            try:
                tracking.check_reachable()
            except Exception as exc:
                svc.mlflow_error = str(exc)
                log.error("MLflow is not usable: %s", exc)
        app.state.services = svc
        runner.start()
        dataset_runner.start()
        try:
            yield
        finally:
            dataset_runner.stop(timeout=settings.stop_timeout_s / 4)
            runner.stop(timeout=settings.stop_timeout_s / 2)
            if started_ray:
                from auditor.executor import kill_embedded_ray, shutdown

                shutdown()
                if settings.ray_address == "local":
                    kill_embedded_ray()  # what Ray's shutdown left behind
                    ray_pids.unlink(missing_ok=True)
            engine.dispose()

    # Swagger UI and ReDoc served from the installed fastapi-offline package, not a CDN
    app = FastAPIOffline(
        title="recaudit",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "audits", "description": "Audit jobs and their reports."},
            {"name": "scenarios", "description": "The scenario registry."},
            {"name": "policies", "description": "Policy kinds and uploaded policies."},
            {"name": "datasets", "description": "Interaction logs and derived scenarios."},
            {"name": "health", "description": "Liveness and readiness (no key needed)."},
        ],
    )
    app.state.settings = settings
    problems.install(app)
    app.add_middleware(
        problems.BodyLimit,
        limit=settings.max_body_bytes,
        upload_limit=settings.max_upload_bytes,
        upload_paths=("/v1/policies", "/v1/datasets"),
    )
    from .guards import AuthBeforeBody
    from .routes import audits, catalog, health
    from .routes import datasets as dataset_routes

    app.add_middleware(
        AuthBeforeBody,
        upload_paths=("/v1/policies", "/v1/datasets"),
        max_uploads=settings.max_uploads,
    )  # before the body limit reads a byte
    app.add_middleware(audits.CachedStatusReads)  # outermost

    app.include_router(audits.router)
    app.include_router(catalog.scenarios)
    app.include_router(catalog.policies)
    app.include_router(dataset_routes.router)
    app.include_router(health.router)
    return app


def _end_orphans(path: Path) -> None:
    """End what the embedded Ray of a killed earlier start left running."""
    from auditor.executor import kill_recorded_ray

    ended = kill_recorded_ray(path)
    if ended:
        log.warning("ended %d process(es) left by an earlier embedded Ray", ended)


def _keep_recording(path: Path) -> None:
    """Record embedded Ray's processes now and again over its first minute (its agents
    start after ``ray.init`` returns), so that a kill -9 of this process leaves the next
    start a complete list."""
    import time

    from auditor.executor import record_embedded_ray

    path.parent.mkdir(parents=True, exist_ok=True)
    record_embedded_ray(path)

    def again() -> None:
        for delay in (1, 2, 5, 10, 20, 30):
            time.sleep(delay)
            try:
                if not record_embedded_ray(path):
                    return
            except Exception:  # pragma: no cover - best effort
                log.exception("cannot record embedded Ray's processes")

    threading.Thread(target=again, name="recaudit-ray-pids", daemon=True).start()


def _warm_up() -> None:
    """Import the auditor now rather than in the first request, which would wait seconds
    for torch and scipy."""
    import auditor.audit  # noqa: F401
    import dashboards.report  # noqa: F401
    import recommenders.remote  # noqa: F401


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recaudit")
    except PackageNotFoundError:  # pragma: no cover - not installed
        return "0+unknown"
