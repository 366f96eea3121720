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


def cmd_serve(args: argparse.Namespace) -> int:
    import socket

    import uvicorn

    from .app import create_app
    from .config import Settings

    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    settings = Settings.from_env(**overrides)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((settings.host, settings.port))
        except OSError as exc:
            raise SpecError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from None
    print(
        f"recaudit service on http://{settings.host}:{settings.port} (OpenAPI: /docs; state in "
        f"{settings.home}; Ray: {settings.ray_address or 'in process'})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=args.log_level,
        timeout_graceful_shutdown=30,
    )
    return 0


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
