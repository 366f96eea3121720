"""The job store is versioned with Alembic: a store made before migrations is upgraded
in place with its rows kept, and the migrations build exactly the tables the code uses."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa

from service import store
from service.jobs import JobStore
from service.keys import KeyStore, hash_key

V0_SCHEMA = Path(__file__).with_name("data") / "service_store_v0.sql"
KEY = "ra_" + "k" * 43


def _v0_store(path: Path) -> None:
    """A store exactly as today's released code made it, with a key and a finished audit."""
    con = sqlite3.connect(path)
    con.executescript(V0_SCHEMA.read_text())
    con.execute(
        "INSERT INTO api_keys VALUES ('k1', 'acme', ?, 1700000000.0, NULL)", (hash_key(KEY),)
    )
    con.execute(
        "INSERT INTO audits (id, tenant, status, spec, policy_kind, scenario, request_hash,"
        " progress, phase, created_at, finished_at, verdict, exit_code, attempts,"
        " cancel_requested) VALUES ('a0123456789abcdef', 'acme', 'succeeded', '{}', 'myopic',"
        " 'topics-tiny-v1', 'h', 1.0, 'done', 1700000001.0, 1700000009.0, 'flag', 1, 1, 0)"
    )
    con.commit()
    con.close()


def test_a_store_made_before_migrations_is_upgraded_with_its_rows_kept(tmp_path):
    path = tmp_path / "service.db"
    _v0_store(path)
    engine = store.open_engine(f"sqlite:///{path}")
    try:
        assert store.schema_version(engine) == store.HEAD
        assert KeyStore(engine).tenant_of(KEY) == "acme"
        row = JobStore(engine).get("acme", "a0123456789abcdef")
        assert row is not None
        assert (row["status"], row["verdict"], row["exit_code"]) == ("succeeded", "flag", 1)
        assert row["finished_at"] == 1700000009.0
        # the upgraded store takes new rows
        KeyStore(engine).create("globex")
        assert len(KeyStore(engine).list_keys()) == 2
    finally:
        engine.dispose()
    again = store.open_engine(f"sqlite:///{path}")  # at the head: nothing to do
    assert store.schema_version(again) == store.HEAD
    again.dispose()


def test_the_migrations_build_exactly_the_tables_of_the_code(tmp_path):
    """A new store gets its tables from the revisions alone; they match store.metadata
    (a schema change without a revision fails here)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = store.open_engine(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"version_table": store.VERSION_TABLE, "compare_type": True}
            )
            diff = compare_metadata(context, store.metadata)
        assert diff == []
        names = set(sa.inspect(engine).get_table_names())
        assert names == set(store.metadata.tables) | {store.VERSION_TABLE}
    finally:
        engine.dispose()


def test_the_baseline_revision_equals_the_schema_made_before_migrations(tmp_path):
    """The SQL of a pre-migration store and of a store built by the revisions agree."""

    def schema(path: Path) -> list[tuple[str, str]]:
        con = sqlite3.connect(path)
        rows = con.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name != ? ORDER BY name",
            (store.VERSION_TABLE,),
        ).fetchall()
        con.close()
        return [(n, " ".join(s.split())) for n, s in rows]

    old = tmp_path / "old.db"
    sqlite3.connect(old).executescript(V0_SCHEMA.read_text())
    new = tmp_path / "new.db"
    engine = sa.create_engine(f"sqlite:///{new}")
    store.upgrade(engine, "0001")  # later revisions add tables (0002: datasets)
    engine.dispose()
    assert schema(new) == schema(old)
