"""Deployment settings of the REST service, read once from ``RECAUDIT_*`` environment
variables (and ``RAY_ADDRESS`` / ``MLFLOW_TRACKING_URI``). Kept apart from the audit spec:
a request can never change them.

=================================  =============================================  ==========================
variable                           meaning                                        default
=================================  =============================================  ==========================
RECAUDIT_HOME                      job store, keys, uploads, reports, MLflow      ``~/.recaudit``
RECAUDIT_HOST / RECAUDIT_PORT      address ``recaudit serve`` binds               ``127.0.0.1`` / ``8000``
RECAUDIT_DB_URL                    SQLAlchemy URL of the job store                ``sqlite:///$HOME/service.db``
RECAUDIT_REPORTS_DIR               where finished reports are kept                ``$RECAUDIT_HOME/reports``
RECAUDIT_POLICIES_DIR              where validated uploads are kept               ``$RECAUDIT_HOME/policies``
RECAUDIT_MAX_BODY_BYTES            largest JSON request body                      1 MiB
RECAUDIT_MAX_UPLOAD_BYTES          largest policy upload (multipart)              64 MiB
RECAUDIT_MAX_USER_STEPS            budget: users x steps x replicates x arms      20 000 000
RECAUDIT_DATASETS_DIR              uploaded logs and their derived scenarios      ``$RECAUDIT_HOME/datasets``
RECAUDIT_MAX_DERIVE_COST           budget: log rows x dimension x epochs, plus    500 000 000
                                   the dynamics fit's work (auditor.budget)
RECAUDIT_MAX_CELLS                 budget: values in the largest array one        100 000 000
                                   simulation or training holds
RECAUDIT_MAX_TRAIN_STEPS           budget: environment steps of the trainings     100 000 000
                                   an audit's references imply
RECAUDIT_MAX_REMOTE_CALLS          budget: remote policy calls per audit          100 000
RECAUDIT_MAX_MODEL_PARAMS          largest uploaded model (parameters)            20 000 000
RECAUDIT_MAX_UPLOADS               uploads validated at once (503 above)          2
RECAUDIT_MAX_HEADER_BYTES          largest request head (status line+headers)     16 KiB
RECAUDIT_CONCURRENCY               audits run at once by this process             1
RECAUDIT_TENANT_CONCURRENCY        audits one tenant runs at once here            concurrency - 1 (min 1)
RECAUDIT_STOP_TIMEOUT_S            a stop (SIGTERM) ends the process within       20
RECAUDIT_MAX_ATTEMPTS              runs of a job interrupted by restarts          3
RECAUDIT_REMOTE_ALLOWLIST          comma-separated hosts (or host:port) a         (empty: none)
                                   remote policy may live on
RECAUDIT_REMOTE_TIMEOUT_S          total time of one remote call attempt          10
RECAUDIT_REMOTE_RETRIES            retries of a failed remote call                2
RECAUDIT_REMOTE_MAX_BYTES          largest remote response                        8 MiB
RECAUDIT_REMOTE_BATCH              users per remote call                          1024
RECAUDIT_REMOTE_AUDIT_S            an audit's remote calls end within this        3600
RECAUDIT_TRACK                     log audits to MLflow (0/1)                     1
RECAUDIT_PUBLIC_MLFLOW_URL         the MLflow UI as tenants reach it (links;      (unset: no links)
                                   read by auditor.tracking.public_url)
RAY_ADDRESS                        Ray cluster address; ``local``: embedded Ray;  ``local``
                                   ``none``: run audits in the service process
=================================  =============================================  ==========================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, ValidationError

from simulator.errors import SpecError
from simulator.specs import Frozen

if TYPE_CHECKING:
    from auditor.budget import Limits

MiB = 1 << 20


def default_home() -> Path:
    return Path(os.environ.get("RECAUDIT_HOME") or Path.home() / ".recaudit").expanduser()


class Settings(Frozen):
    """Everything an operator decides about a running service."""

    home: Path = Field(description="State directory (RECAUDIT_HOME).")
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=1, le=65535, description="Port to bind.")
    db_url: str = Field(description="SQLAlchemy URL of the job store (sqlite or postgresql).")
    reports_dir: Path = Field(description="Directory of finished reports (per tenant).")
    policies_dir: Path = Field(description="Directory of validated uploaded policies.")
    datasets_dir: Path | None = Field(
        None, description="Directory of uploaded logs and derived scenarios (None: home/datasets)."
    )
    max_body_bytes: int = Field(MiB, ge=1024, description="Largest JSON request body.")
    max_upload_bytes: int = Field(64 * MiB, ge=1024, description="Largest policy upload.")
    max_user_steps: int = Field(
        20_000_000,
        ge=1,
        description="Budget per audit: users x steps x replicates x arm runs (each arm "
        "but the natural one, beside the natural counterfactual: 2 x (arms - 1)).",
    )
    max_derive_cost: int = Field(
        500_000_000,
        ge=1,
        description="Budget per derivation: log rows x dimension x epochs, plus the dynamics "
        "fit's work (auditor.budget.estimate_fit).",
    )
    max_cells: int = Field(
        100_000_000, ge=1, description="Budget: values in the largest array of an audit."
    )
    max_train_steps: int = Field(
        100_000_000, ge=1, description="Budget: environment steps of an audit's trainings."
    )
    max_remote_calls: int = Field(
        100_000, ge=1, description="Budget: remote policy calls per audit."
    )
    max_model_params: int = Field(
        20_000_000, ge=1, description="Largest uploaded model, in parameters."
    )
    max_uploads: int = Field(2, ge=1, le=64, description="Uploads validated at once.")
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, le=1 << 20, description="Largest request head (line + headers)."
    )
    concurrency: int = Field(1, ge=1, le=64, description="Audits this process runs at once.")
    tenant_concurrency: int | None = Field(
        None, ge=1, le=64, description="Audits one tenant runs at once (default concurrency-1)."
    )
    stop_timeout_s: float = Field(
        20.0, gt=0, le=600, description="A graceful stop ends the process within this time."
    )
    max_attempts: int = Field(3, ge=1, le=100, description="Runs of a job across restarts.")
    stale_after_s: float = Field(
        60.0, gt=0, description="A running job whose heartbeat is older is re-queued."
    )
    remote_allowlist: tuple[str, ...] = Field(
        (), description="Hosts (or host:port) remote policies may live on."
    )
    remote_timeout_s: float = Field(10.0, gt=0, le=600, description="Remote call timeout.")
    remote_retries: int = Field(2, ge=0, le=10, description="Retries of a failed remote call.")
    remote_max_bytes: int = Field(8 * MiB, ge=1024, description="Largest remote response.")
    remote_batch: int = Field(1024, ge=1, le=1_000_000, description="Users per remote call.")
    remote_audit_s: float = Field(
        3600.0, gt=0, le=7 * 86400, description="All of an audit's remote calls end by then."
    )
    ray_address: str | None = Field(
        "local", description="Ray address; 'local' embedded; None: in the service process."
    )
    track: bool = Field(True, description="Log audits to MLflow.")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, /, **overrides: object) -> Settings:
        """Read the settings; a bad value raises SpecError naming the variable."""
        e = os.environ if env is None else env
        home = Path(e.get("RECAUDIT_HOME") or Path.home() / ".recaudit").expanduser()
        ray = e.get("RAY_ADDRESS") or "local"
        values: dict[str, object] = {
            "home": home,
            "host": e.get("RECAUDIT_HOST", "127.0.0.1"),
            "port": e.get("RECAUDIT_PORT", "8000"),
            "db_url": e.get("RECAUDIT_DB_URL") or f"sqlite:///{home / 'service.db'}",
            "reports_dir": e.get("RECAUDIT_REPORTS_DIR") or home / "reports",
            "policies_dir": e.get("RECAUDIT_POLICIES_DIR") or home / "policies",
            "datasets_dir": e.get("RECAUDIT_DATASETS_DIR") or home / "datasets",
            "remote_allowlist": tuple(
                h.strip().lower()
                for h in e.get("RECAUDIT_REMOTE_ALLOWLIST", "").split(",")
                if h.strip()
            ),
            "ray_address": None if ray.lower() in ("none", "in-process") else ray,
        }
        for field, var in (
            ("max_body_bytes", "RECAUDIT_MAX_BODY_BYTES"),
            ("max_upload_bytes", "RECAUDIT_MAX_UPLOAD_BYTES"),
            ("max_user_steps", "RECAUDIT_MAX_USER_STEPS"),
            ("max_derive_cost", "RECAUDIT_MAX_DERIVE_COST"),
            ("max_cells", "RECAUDIT_MAX_CELLS"),
            ("max_train_steps", "RECAUDIT_MAX_TRAIN_STEPS"),
            ("max_remote_calls", "RECAUDIT_MAX_REMOTE_CALLS"),
            ("max_model_params", "RECAUDIT_MAX_MODEL_PARAMS"),
            ("max_uploads", "RECAUDIT_MAX_UPLOADS"),
            ("max_header_bytes", "RECAUDIT_MAX_HEADER_BYTES"),
            ("concurrency", "RECAUDIT_CONCURRENCY"),
            ("tenant_concurrency", "RECAUDIT_TENANT_CONCURRENCY"),
            ("stop_timeout_s", "RECAUDIT_STOP_TIMEOUT_S"),
            ("max_attempts", "RECAUDIT_MAX_ATTEMPTS"),
            ("stale_after_s", "RECAUDIT_STALE_AFTER_S"),
            ("remote_timeout_s", "RECAUDIT_REMOTE_TIMEOUT_S"),
            ("remote_retries", "RECAUDIT_REMOTE_RETRIES"),
            ("remote_max_bytes", "RECAUDIT_REMOTE_MAX_BYTES"),
            ("remote_batch", "RECAUDIT_REMOTE_BATCH"),
            ("remote_audit_s", "RECAUDIT_REMOTE_AUDIT_S"),
            ("track", "RECAUDIT_TRACK"),
        ):
            if e.get(var):
                values[field] = e[var]
        values.update(overrides)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else "?"
            var = "RAY_ADDRESS" if field == "ray_address" else f"RECAUDIT_{field.upper()}"
            raise SpecError(f"bad setting {var}: {first['msg']}") from None

    @property
    def datasets_root(self) -> Path:
        return self.datasets_dir or self.home / "datasets"

    @property
    def per_tenant(self) -> int:
        """Audits one tenant may run at once in this process: by default all workers but
        one, so that another tenant's audit can start while one tenant's queue drains."""
        if self.tenant_concurrency is not None:
            return min(self.tenant_concurrency, self.concurrency)
        return max(1, self.concurrency - 1)

    def limits(self) -> Limits:
        """The per-audit budget."""
        from auditor.budget import Limits

        return Limits(
            user_steps=self.max_user_steps,
            cells=self.max_cells,
            train_steps=self.max_train_steps,
            remote_calls=self.max_remote_calls,
        )

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")
