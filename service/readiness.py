"""The checks behind /readyz."""

from __future__ import annotations

import socket

from simulator.errors import SpecError

from .deps import Services
from .store import touch


def _tcp(address: str, timeout: float = 1.0) -> str:
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return "ok"
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return "ok"
    except OSError as exc:
        return f"cannot reach Ray at {address}: {exc.strerror or exc}"


def check(svc: Services) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        touch(svc.engine)
        out["job_store"] = "ok"
    except Exception as exc:
        out["job_store"] = f"cannot write the job store: {type(exc).__name__}: {exc}"
    out["workers"] = "ok" if svc.runner.alive else "the job dispatcher is not running"
    address = svc.settings.ray_address
    if svc.ray_error:
        out["ray"] = svc.ray_error
    elif address is None or address == "local":
        out["ray"] = "ok"
    else:
        out["ray"] = _tcp(address)
    if svc.settings.track:
        from auditor import tracking

        try:
            tracking.check_reachable()
            out["mlflow"] = "ok"
        except SpecError as exc:
            out["mlflow"] = str(exc)
    return out
