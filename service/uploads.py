"""Uploaded RecBole models: validated, then kept per tenant under
``<policies_dir>/<tenant>/<id>/`` (``model.json`` + ``model.safetensors``).

Refused uploads leave nothing behind: files are checked in a staging directory next to
the store and moved into place only after every check passed.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from simulator.errors import SpecError

from .jobs import _pid_alive
from .store import first_row, policies

STAGING = ".upload-"  # staging directories: .upload-<host>.<pid>.<random>
ID_RE = re.compile(r"^p[0-9a-f]{16}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PolicyStore:
    def __init__(self, engine: Engine, root: Path) -> None:
        self.engine = engine
        self.root = root

    def directory(self, tenant: str, policy_id: str) -> Path:
        if not ID_RE.match(policy_id):
            raise SpecError(f"bad policy id {policy_id!r}")
        return self.root / tenant / policy_id

    def add(
        self,
        tenant: str,
        name: str | None,
        config: bytes,
        weights: bytes,
        *,
        max_params: int | None = None,
    ) -> dict[str, Any]:
        """Validate and keep an upload; SpecError (UnsupportedUpload for 415,
        BudgetExceeded for a model over ``max_params`` parameters) otherwise."""
        from recommenders.recbole import validate_upload

        if name is not None and not NAME_RE.match(name):
            raise SpecError("name must be 1-64 letters, digits, '_', '.', '-'")
        if max_params is not None:
            check_model_size(config, weights, max_params)
        policy_id = "p" + secrets.token_hex(8)
        tenant_dir = self.root / tenant
        self.root.mkdir(parents=True, exist_ok=True)
        owner = f"{STAGING}{socket.gethostname()}.{os.getpid()}."
        staging = Path(tempfile.mkdtemp(prefix=owner, dir=self.root))
        try:
            summary = validate_upload(config, weights, staging)
            tenant_dir.mkdir(parents=True, exist_ok=True)
            final = tenant_dir / policy_id
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        row = {
            "id": policy_id,
            "tenant": tenant,
            "name": name or f"{summary['model'].lower()}-{policy_id[1:7]}",
            "model": summary["model"],
            "model_type": summary["model_type"],
            "num_items": summary["num_items"],
            "num_users": summary["num_users"],
            "sha256": summary["sha256"],
            "size_bytes": summary["size_bytes"],
            "created_at": time.time(),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(policies).values(**row))
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        return row

    def clean_staging(self, older_than_s: float = 600.0) -> list[str]:
        """Remove staging directories left by uploads that never finished (the process
        validating them was killed): those of dead processes on this host at once, any
        other after ``older_than_s``. Returns the names removed."""
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        now = time.time()
        for d in self.root.glob(f"{STAGING}*"):
            host, pid = _staging_owner(d.name)
            dead = host == socket.gethostname() and pid is not None and not _pid_alive(pid)
            try:
                old = now - d.stat().st_mtime > older_than_s
            except FileNotFoundError:
                continue
            if dead or old:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
        return removed

    def get(self, tenant: str, policy_id: str) -> dict[str, Any] | None:
        return first_row(
            self.engine,
            sa.select(policies).where(policies.c.id == policy_id, policies.c.tenant == tenant),
        )

    def list_policies(self, tenant: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(policies)
                .where(policies.c.tenant == tenant)
                .order_by(policies.c.created_at)
            ).mappings()
            return [dict(r) for r in rows]

    def files(self, tenant: str, policy_id: str) -> tuple[bytes, bytes]:
        """(config, weights) bytes of a kept upload."""
        from recommenders.recbole import CONFIG_FILE, WEIGHTS_FILE

        d = self.directory(tenant, policy_id)
        try:
            return (d / CONFIG_FILE).read_bytes(), (d / WEIGHTS_FILE).read_bytes()
        except FileNotFoundError:
            raise SpecError(f"the files of uploaded policy {policy_id} are missing") from None


def _staging_owner(name: str) -> tuple[str | None, int | None]:
    parts = name[len(STAGING) :].rsplit(".", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return None, None


def check_model_size(config: bytes, weights: bytes, max_params: int) -> None:
    """Refuse (BudgetExceeded) an upload whose config implies more than ``max_params``
    parameters, from the config alone, before any model is built. Malformed bytes are
    left to the full validation (which answers 415/422)."""
    from auditor.budget import BudgetExceeded
    from recommenders.recbole import (
        SUPPORTED_MODELS,
        model_params,
        sniff_config,
        sniff_weights,
    )

    sniff_weights(weights)
    meta = sniff_config(config)
    if meta.get("model") not in SUPPORTED_MODELS:
        return
    need = model_params(meta)
    if need > max_params:
        raise BudgetExceeded(
            f"the config's settings imply a {meta['model']} model of at least {need:,} "
            f"parameters, over this service's limit of {max_params:,} "
            "(RECAUDIT_MAX_MODEL_PARAMS)"
        )
