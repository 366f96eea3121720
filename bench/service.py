"""Load benchmark of the REST service on loopback.

Starts ``recaudit serve`` on a free 127.0.0.1 port with a fresh RECAUDIT_HOME (embedded
Ray, MLflow on SQLite), creates a key, starts a background audit (8000 users x 100 steps
x 8 replicates x 3 arms by default, which outlasts the reads; ``--users 3000 --steps 50``
makes it finish during them, so that its report is made while clients read), then:

1. **status reads**: ``--clients`` concurrent clients (default 100) each GET
   ``/v1/audits/{id}`` of the running audit for ``--seconds`` (default 10): as fast as
   they can (``--interval 0``, a saturation test) or each once per ``--interval``
   seconds (pollers);
2. **submissions**: ``--posts`` sequential ``POST /v1/audits`` (tiny specs, queued behind
   the running audit), timed from send to the 202.

Prints one JSON line: requests/s, p50/p99/max latency of the reads, and the POST times.
Everything is cancelled and the server stopped at the end. Loopback only.

    python bench/service.py --clients 100 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# As ``python bench/service.py`` this folder is sys.path[0] and this file would shadow the
# ``service`` package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import httpx  # noqa: E402

BACKGROUND = {
    "scenario": "polarity-1d-v1",
    "policy": {"kind": "myopic"},
    "references": [{"kind": "natural"}, {"kind": "popularity"}],
    "users": 8000,
    "steps": 100,
    "replicates": 8,
}  # 19.2 M user-steps (the default budget is 20 M): it outlasts the reads
TINY = {**BACKGROUND, "users": 50, "steps": 5, "replicates": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_cmd(port: int) -> list[str]:
    exe = Path(sys.executable).parent / "recaudit"
    return [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def _get_loop(
    host: str,
    port: int,
    request: bytes,
    stop: float,
    interval: float,
    delay: float,
    lat: list[float],
) -> int:
    """One client: a keep-alive HTTP/1.1 connection (a minimal client, so that the load
    generator costs little CPU next to the server); returns its non-200 count."""
    await asyncio.sleep(delay)
    reader, writer = await asyncio.open_connection(host, port)
    errors = 0
    try:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            dt = time.perf_counter() - t0
            lat.append(dt)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
            if interval:
                await asyncio.sleep(max(0.0, interval - dt))
    finally:
        writer.close()
    return errors


async def _reads(
    port: int, key: str, path: str, clients: int, seconds: float, interval: float
) -> dict[str, Any]:
    lat: list[float] = []
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nAccept: application/json\r\n\r\n"
    ).encode()
    t0 = time.perf_counter()
    stop = t0 + seconds
    errors = await asyncio.gather(
        *(
            _get_loop("127.0.0.1", port, request, stop, interval, interval * i / clients, lat)
            for i in range(clients)
        )
    )
    wall = time.perf_counter() - t0
    return {
        "requests": len(lat),
        "errors": sum(errors),
        "rps": round(len(lat) / wall, 1),
        "p50_ms": round(1000 * _pct(lat, 0.50), 2),
        "p99_ms": round(1000 * _pct(lat, 0.99), 2),
        "max_ms": round(1000 * max(lat), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=0.0, help="seconds between a client's reads")
    ap.add_argument(
        "--users", type=int, default=BACKGROUND["users"], help="users of the background audit"
    )
    ap.add_argument(
        "--steps", type=int, default=BACKGROUND["steps"], help="steps of the background audit"
    )
    ap.add_argument("--posts", type=int, default=30)
    ap.add_argument("--ray-address", default="local", help="'local' (embedded) or 'none'")
    ap.add_argument(
        "--idle", action="store_true", help="read a finished audit (no background work)"
    )
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="recaudit-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    env.update(RECAUDIT_HOME=str(home), RAY_ADDRESS=args.ray_address)
    key = subprocess.run(
        [sys.executable, "-m", "service", "keys", "create", "--tenant", "bench"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()[-1]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (home / "serve.log").open("wb")
    proc = subprocess.Popen(
        _serve_cmd(port), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {home / 'serve.log'}")
            time.sleep(0.2)
        h = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url, headers=h, timeout=30) as c:
            background = {**BACKGROUND, "users": args.users, "steps": args.steps}
            aid = c.post("/v1/audits", json=TINY if args.idle else background).json()["id"]
            want = "succeeded" if args.idle else "running"
            while c.get(f"/v1/audits/{aid}").json()["status"] != want:
                time.sleep(0.1)
            if not args.idle:
                time.sleep(2.0)  # well into the simulation
            reads = asyncio.run(
                _reads(port, key, f"/v1/audits/{aid}", args.clients, args.seconds, args.interval)
            )
            status = c.get(f"/v1/audits/{aid}").json()
            posts: list[float] = []
            ids = []
            for i in range(args.posts):
                t0 = time.perf_counter()
                r = c.post("/v1/audits", json={**TINY, "seed": i})
                posts.append(time.perf_counter() - t0)
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            for job in [aid, *ids]:
                c.delete(f"/v1/audits/{job}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)
    out = {
        "bench": "service",
        "clients": args.clients,
        "seconds": args.seconds,
        "interval_s": args.interval,
        "ray": args.ray_address,
        "status_reads": reads,
        "audit_running_during_reads": status["status"] == "running",
        "background": "none"
        if args.idle
        else f"audit of {args.users} users x {args.steps} steps x 8 replicates x 3 arms",
        "audit_progress_after_reads": round(status["progress"], 3),
        "post_accept": {
            "n": len(posts),
            "p50_ms": round(1000 * _pct(posts, 0.5), 2),
            "p99_ms": round(1000 * _pct(posts, 0.99), 2),
            "max_ms": round(1000 * max(posts), 2),
        },
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
