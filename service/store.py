"""The service's tables (SQLAlchemy Core): API keys, audit jobs, dataset derivations,
uploaded policies.

One schema for SQLite (the default, ``$RECAUDIT_HOME/service.db``) and PostgreSQL (a
deployment with several service processes sharing one store). Times are UNIX seconds.
The schema is versioned with Alembic (``service/migrations``): a change to these tables
comes with a new revision there, and :func:`open_engine` upgrades every store it opens.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

metadata = sa.MetaData()
#: Alembic's version table for this store (apart from MLflow's ``alembic_version``)
VERSION_TABLE = "recaudit_schema_version"
#: the newest revision in service/migrations/versions
HEAD = "0002"
#: the revision equal to the schema of stores made before migrations (by create_all)
BASELINE = "0001"

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False, index=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

audits = sa.Table(
    "audits",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("policy_kind", sa.String(64), nullable=False),
    sa.Column("scenario", sa.String(128), nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("phase", sa.String(200), nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("verdict", sa.String(16), nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("mlflow_run_id", sa.String(64), nullable=True),
    sa.Column("mlflow_experiment_id", sa.String(64), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("owner", sa.String(200), nullable=True),
    sa.Column("heartbeat", sa.Float, nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.UniqueConstraint("tenant", "idempotency_key", name="uq_audits_tenant_idem"),
    sa.Index("ix_audits_tenant_created", "tenant", "created_at"),
    sa.Index("ix_audits_status_created", "status", "created_at"),
)

#: dataset derivations: durable jobs like audits (the same columns; ``spec`` holds the
#: derivation request, ``scenario`` the derived scenario's id)
datasets = sa.Table(
    "datasets",
    metadata,
    *(c._copy() for c in audits.columns),
    sa.UniqueConstraint("tenant", "idempotency_key", name="uq_datasets_tenant_idem"),
    sa.Index("ix_datasets_tenant_created", "tenant", "created_at"),
    sa.Index("ix_datasets_status_created", "status", "created_at"),
)

policies = sa.Table(
    "policies",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("model", sa.String(32), nullable=False),
    sa.Column("model_type", sa.String(16), nullable=False),
    sa.Column("num_items", sa.Integer, nullable=False),
    sa.Column("num_users", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size_bytes", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

service_meta = sa.Table(
    "service_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def open_engine(url: str) -> Engine:
    """An engine on ``url`` with the tables created (SQLite: WAL, busy timeout)."""
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 10},
            pool_size=20,
            max_overflow=40,
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    upgrade(engine)
    return engine


def schema_version(engine: Engine) -> str | None:
    """The store's Alembic revision, or None when it has no version table."""
    if not sa.inspect(engine).has_table(VERSION_TABLE):
        return None
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the store to ``revision``: a new store gets every revision, one made before
    migrations (its tables, no version table) is stamped at the baseline first, so its
    rows are kept. Already at the head: one query, no Alembic."""
    if revision == "head" and schema_version(engine) == HEAD:
        return
    from pathlib import Path

    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        inspector = sa.inspect(conn)
        if not inspector.has_table(VERSION_TABLE) and inspector.has_table("audits"):
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, revision)


def first_row(engine: Engine, query: Any) -> dict[str, Any] | None:
    """The first row of ``query`` as a dict, or None."""
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return dict(row) if row else None


def touch(engine: Engine) -> None:
    """Write one row: proves the store is writable (for /readyz)."""
    now = repr(time.time())
    with engine.begin() as conn:
        stmt = sa.update(service_meta).where(service_meta.c.key == "readyz").values(value=now)
        if conn.execute(stmt).rowcount:
            return
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(service_meta).values(key="readyz", value=now))
    except sa.exc.IntegrityError:  # inserted concurrently
        pass
