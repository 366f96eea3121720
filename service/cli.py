"""``recaudit serve`` and ``recaudit keys``: the service's commands.

:func:`register` adds them to the CLI's subparsers and returns their handlers. Handlers
raise :class:`~simulator.errors.SpecError` for bad input (the CLI prints one line and
exits with status 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from simulator.errors import SpecError


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 1..65535, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    serve = sub.add_parser(
        "serve",
        help="run the REST service (audits as durable jobs on Ray)",
        description=(
            "Serve the REST API under uvicorn (one process): audits as durable background "
            "jobs on Ray, tracked in MLflow. State lives in RECAUDIT_HOME (default ~/.recaudit): "
            "the job store service.db, uploaded policies, reports and the default MLflow store. "
            "Settings come from RECAUDIT_* variables (see docs/service.md). OpenAPI at /docs."
        ),
    )
    serve.add_argument("--host", help="address to bind (default 127.0.0.1 or RECAUDIT_HOST)")
    serve.add_argument("--port", type=_port, help="port (default 8000 or RECAUDIT_PORT)")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn log level (default info)",
    )

    keys = sub.add_parser(
        "keys",
        help="create, list and revoke the service's API keys",
        description="API keys of the REST service, one tenant per key, stored hashed in the "
        "job store (RECAUDIT_DB_URL, default RECAUDIT_HOME/service.db).",
    )
    ks = keys.add_subparsers(dest="keys_command", metavar="{create,list,revoke}")
    create = ks.add_parser(
        "create",
        help="create a key for a tenant; prints it once, alone on the last line",
    )
    create.add_argument("--tenant", required=True, help="tenant name (lower-case, 1-64 chars)")
    ls = ks.add_parser("list", help="list keys (ids and tenants; never the keys)")
    ls.add_argument("--tenant", help="only this tenant's keys")
    rv = ks.add_parser("revoke", help="revoke a key by its id")
    rv.add_argument("key_id", help="the key's id (from 'keys list')")
    return {"serve": cmd_serve, "keys": cmd_keys}


def check_port(host: str, port: int) -> None:
    """Fail early, with one line, when ``host:port`` cannot be bound. SO_REUSEADDR as
    uvicorn sets it: a port whose last connections linger in TIME_WAIT after a stop or a
    crash is free to serve again at once."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise SpecError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def server_config(app: Any, settings: Any, log_level: str = "info") -> Any:
    """uvicorn's configuration for the service: one process; the h11 parser, which caps
    a request's head (line and headers) at RECAUDIT_MAX_HEADER_BYTES while it arrives
    (a larger one is answered 400 and the connection closed)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=log_level,
        http="h11",
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_graceful_shutdown=max(1, int(settings.stop_timeout_s / 2)),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .config import Settings

    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    settings = Settings.from_env(**overrides)
    check_port(settings.host, settings.port)
    print(
        f"recaudit service on http://{settings.host}:{settings.port} (OpenAPI: /docs; state in "
        f"{settings.home}; Ray: {settings.ray_address or 'in process'})",
        file=sys.stderr,
        flush=True,
    )

    class Server(uvicorn.Server):
        """uvicorn's server with a bounded stop: the first SIGTERM (or Ctrl-C) starts a
        watchdog that ends the process after RECAUDIT_STOP_TIMEOUT_S even if the
        graceful shutdown (re-queueing running audits, stopping Ray) hangs."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit:
                _watchdog(settings.stop_timeout_s)
            super().handle_exit(sig, frame)

    Server(server_config(create_app(settings), settings, args.log_level)).run()
    return 0


def _watchdog(seconds: float) -> None:
    import os
    import threading
    import time

    def expire() -> None:
        time.sleep(seconds)
        print(
            f"recaudit: the graceful stop took over {seconds:g} s; exiting now "
            "(unfinished audits are re-queued by the next start)",
            file=sys.stderr,
            flush=True,
        )
        from auditor.executor import kill_embedded_ray

        kill_embedded_ray()
        os._exit(1)

    threading.Thread(target=expire, name="recaudit-stop-watchdog", daemon=True).start()


def cmd_keys(args: argparse.Namespace) -> int:
    from .config import Settings
    from .keys import KeyStore
    from .store import open_engine

    if not args.keys_command:
        raise SpecError("say what to do: recaudit keys create|list|revoke (see --help)")
    settings = Settings.from_env()
    engine = open_engine(settings.db_url)
    try:
        store = KeyStore(engine)
        if args.keys_command == "create":
            info, key = store.create(args.tenant)
            print(f"created key {info.id} for tenant {info.tenant}")
            print(
                "store it now: it is shown only this once (send it as 'Authorization: Bearer KEY')"
            )
            print(key)
        elif args.keys_command == "list":
            for k in store.list_keys(args.tenant):
                created = datetime.fromtimestamp(k.created_at, UTC).isoformat(timespec="seconds")
                state = "revoked" if k.revoked_at else "active"
                print(f"{k.id}  {k.tenant:<24} {state:<8} created {created}")
        else:
            if not store.revoke(args.key_id):
                raise SpecError(f"no active key with id {args.key_id!r} (see 'keys list')")
            print(f"revoked key {args.key_id}")
    finally:
        engine.dispose()
    return 0
