"""``recaudit ui``: the MLflow UI on this machine against recaudit's store."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .args import CliError, Command, port


def register(sub: Any) -> dict[str, Command]:
    ui = sub.add_parser(
        "ui",
        help="start the MLflow UI on this machine against recaudit's store",
        description="Start the MLflow UI (loopback only by default) on the default SQLite store "
        "in RECAUDIT_HOME, or on MLFLOW_TRACKING_URI, and print a link to the latest audit's "
        "run. Ctrl-C or SIGTERM stops it and the server it started.",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ui.add_argument("--port", type=port, default=5000, help="port (default 5000)")

    return {"ui": cmd_ui}


def cmd_ui(args: argparse.Namespace) -> int:
    import signal
    import socket
    import subprocess

    from auditor import tracking

    with socket.socket() as s:
        # as the server will: a port left in TIME_WAIT by a stopped UI is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((args.host, args.port))
        except OSError as exc:
            raise CliError(
                f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
            ) from None
    cmd = tracking.ui_command(args.host, args.port)
    tracking.mark_experiments()  # open on the runs view, not MLflow 3's GenAI view
    url = f"http://{args.host}:{args.port}"
    print(
        f"MLflow UI for {tracking.redact(tracking.tracking_uri())} at {url} (Ctrl-C stops it)",
        flush=True,
    )
    latest = tracking.latest_audit()
    if latest is not None:
        print(f"latest audit: {tracking.run_link(*latest, base=url)}", flush=True)
    # its own process group, so that stopping this command stops the server's workers too
    server = subprocess.Popen(cmd, start_new_session=True)

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
