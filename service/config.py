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
RECAUDIT_CONCURRENCY               audits run at once by this process             1
RECAUDIT_MAX_ATTEMPTS              runs of a job interrupted by restarts          3
RECAUDIT_REMOTE_ALLOWLIST          comma-separated hosts (or host:port) a         (empty: none)
                                   remote policy may live on
RECAUDIT_REMOTE_TIMEOUT_S          total time of one remote call attempt          10
RECAUDIT_REMOTE_RETRIES            retries of a failed remote call                2
RECAUDIT_REMOTE_MAX_BYTES          largest remote response                        8 MiB
RECAUDIT_REMOTE_BATCH              users per remote call                          1024
RECAUDIT_REMOTE_AUDIT_S            an audit's remote calls end within this        3600
RECAUDIT_TRACK                     log audits to MLflow (0/1)                     1
RAY_ADDRESS                        Ray cluster address; ``local``: embedded Ray;  ``local``
                                   ``none``: run audits in the service process
=================================  =============================================  ==========================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, ValidationError

from simulator.errors import SpecError
from simulator.specs import Frozen

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
    max_body_bytes: int = Field(MiB, ge=1024, description="Largest JSON request body.")
    max_upload_bytes: int = Field(64 * MiB, ge=1024, description="Largest policy upload.")
    max_user_steps: int = Field(
        20_000_000, ge=1, description="Budget per audit: users x steps x replicates x arms."
    )
    concurrency: int = Field(1, ge=1, le=64, description="Audits this process runs at once.")
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
            ("concurrency", "RECAUDIT_CONCURRENCY"),
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
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")
