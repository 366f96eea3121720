"""Bounded soak test of the REST service on loopback: several tenants, many tiny audits,
random cancels, one SIGKILL restart and one SIGTERM restart.

Starts ``recaudit serve`` on a free 127.0.0.1 port with a fresh RECAUDIT_HOME (embedded
Ray; MLflow off unless ``--track``), creates one key per tenant, then:

1. each tenant submits ``--audits`` tiny audits (with an Idempotency-Key each) while one
   poller per tenant reads the status of its audits in a loop (every read timed);
2. a random ``--cancel`` share of the audits is cancelled at random moments;
3. once a third of the audits have ended, the server is killed (SIGKILL of the server
   process alone, as a crash does) and started again at once on the same port; once two
   thirds have ended, it is stopped with SIGTERM and started again;
4. every audit is waited for.

Checks (the exit status is 1 when one fails): every audit ended ``succeeded`` or
``cancelled``; none is lost (each tenant lists exactly its audits); after the final
SIGTERM nothing of the server or its embedded Ray is left running, the SIGKILLed
server's Ray processes included. Prints one JSON line with the counts, the restarts and
the status-read latency (p50/p99/max over the reads that got an answer).

    python bench/soak.py --tenants 3 --audits 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

TINY = {
    "scenario": "topics-tiny-v1",
    "policy": {"kind": "myopic"},
    "references": [{"kind": "natural"}, {"kind": "popularity"}],
    "users": 20,
    "steps": 3,
    "replicates": 2,
}
DONE = ("succeeded", "failed", "cancelled")
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else float("nan")


class Server:
    """``recaudit serve`` in its own session; every process it ever had is remembered."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, float] = {}  # pid -> start time, of the server and its tree

    def start(self) -> float:
        t0 = time.monotonic()
        cmd = [str(BIN / "recaudit"), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [*cmd, "--log-level", "warning"],
                env=self.env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return time.monotonic() - t0

    def remember(self) -> None:
        if self.proc is None:
            return
        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                self.seen[p.pid] = p.create_time()
        except psutil.Error:
            pass

    def stop(self, sig: int) -> float:
        assert self.proc is not None
        self.remember()
        t0 = time.monotonic()
        self.proc.send_signal(sig)  # the server process alone, as a supervisor or a crash
        self.proc.wait(120)
        return time.monotonic() - t0

    def leftovers(self) -> list[int]:
        alive = []
        for pid, started in self.seen.items():
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - started) < 0.01 and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.Error:
                continue
        return alive

    def kill_group(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tenants", type=int, default=3)
    ap.add_argument("--audits", type=int, default=30, help="audits per tenant")
    ap.add_argument("--cancel", type=float, default=0.15, help="share of audits cancelled")
    ap.add_argument("--concurrency", type=int, default=2, help="RECAUDIT_CONCURRENCY")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--track", action="store_true", help="log the audits to MLflow")
    ap.add_argument("--timeout", type=float, default=1800, help="give up after this (s)")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    home = Path(tempfile.mkdtemp(prefix="recaudit-soak-"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(
        RECAUDIT_HOME=str(home),
        RECAUDIT_CONCURRENCY=str(args.concurrency),
        RECAUDIT_TRACK="1" if args.track else "0",
    )
    keys = {}
    for i in range(args.tenants):
        out = subprocess.run(
            [str(BIN / "recaudit"), "keys", "create", "--tenant", f"tenant{i}"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        keys[f"tenant{i}"] = out.stdout.strip().splitlines()[-1]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = Server(env, port, home / "serve.log")
    starts = [server.start()]

    ids: dict[str, list[str]] = {t: [] for t in keys}
    status: dict[str, str] = {}
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = threading.Event()
    cancels = {
        t: set(rng.sample(range(args.audits), round(args.cancel * args.audits))) for t in keys
    }

    def request(c: httpx.Client, method: str, path: str, **kw: Any) -> httpx.Response | None:
        for _ in range(600):  # across a restart: retry until the server answers
            try:
                return c.request(method, path, **kw)
            except httpx.HTTPError:
                with lock:
                    errors[0] += 1
                time.sleep(0.2)
        return None

    def tenant(name: str) -> None:
        r = random.Random(f"{args.seed}-{name}")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys[name]}"}) as c:
            for i in range(args.audits):
                resp = request(
                    c, "POST", "/v1/audits", json=TINY, headers={"Idempotency-Key": f"{name}-{i}"}
                )
                assert resp is not None and resp.status_code == 202, resp and resp.text
                with lock:
                    ids[name].append(resp.json()["id"])
                time.sleep(r.uniform(0, 0.5))
                for j in sorted(cancels[name]):
                    if j <= i and r.random() < 0.3 and ids[name][j] not in status:
                        request(c, "DELETE", f"/v1/audits/{ids[name][j]}")
                        cancels[name].discard(j)
            for j in sorted(cancels[name]):  # the rest of this tenant's cancels
                request(c, "DELETE", f"/v1/audits/{ids[name][j]}")

    def poller(name: str) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys[name]}"}) as c:
            while not stop.is_set():
                with lock:
                    mine = [a for a in ids[name] if a not in status]
                for aid in mine:
                    t0 = time.perf_counter()
                    try:
                        resp = c.get(f"/v1/audits/{aid}")
                    except httpx.HTTPError:
                        with lock:
                            errors[0] += 1
                        time.sleep(0.2)
                        continue
                    dt = time.perf_counter() - t0
                    body = resp.json()
                    with lock:
                        lat.append(dt)
                        if body["status"] in DONE:
                            status[aid] = body["status"]
                time.sleep(0.05)

    t_start = time.monotonic()
    threads = [threading.Thread(target=tenant, args=(t,)) for t in keys]
    threads += [threading.Thread(target=poller, args=(t,), daemon=True) for t in keys]
    for th in threads:
        th.start()
    total = args.tenants * args.audits
    restarts: list[dict[str, Any]] = []
    for share, sig in ((1 / 3, signal.SIGKILL), (2 / 3, signal.SIGTERM)):
        while len(status) < share * total:
            if time.monotonic() - t_start > args.timeout:
                break
            time.sleep(0.2)
        stopped = server.stop(sig)
        started = server.start()
        starts.append(started)
        restarts.append(
            {
                "signal": signal.Signals(sig).name,
                "stop_s": round(stopped, 2),
                "start_s": round(started, 2),
            }
        )
    for th in threads[: args.tenants]:
        th.join()
    while len(status) < total and time.monotonic() - t_start > 0:
        if time.monotonic() - t_start > args.timeout:
            break
        time.sleep(0.2)
    stop.set()
    elapsed = time.monotonic() - t_start

    # nothing lost: each tenant lists exactly its audits, each one ended
    listed: dict[str, dict[str, str]] = {}
    for name, key in keys.items():
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
            seen: dict[str, str] = {}
            offset = 0
            while True:
                page = c.get(f"/v1/audits?limit=100&offset={offset}").json()
                seen.update({a["id"]: a["status"] for a in page["items"]})
                if not page["next"]:
                    break
                offset += 100
            listed[name] = seen
    final_stop = server.stop(signal.SIGTERM)
    time.sleep(1)
    left = server.leftovers()
    server.kill_group()

    outcomes: dict[str, int] = {}
    for name in keys:
        for aid in ids[name]:
            s = listed[name].get(aid, "lost")
            outcomes[s] = outcomes.get(s, 0) + 1
    lost = sum(len(set(ids[n]) ^ set(listed[n])) for n in keys)
    ok = (
        set(outcomes) <= {"succeeded", "cancelled"}
        and lost == 0
        and sum(outcomes.values()) == total
        and not left
    )
    print(
        json.dumps(
            {
                "bench": "soak",
                "ok": ok,
                "tenants": args.tenants,
                "audits": total,
                "outcomes": outcomes,
                "lost": lost,
                "left_running_pids": left,
                "restarts": restarts,
                "final_stop_s": round(final_stop, 2),
                "seconds": round(elapsed, 1),
                "status_reads": len(lat),
                "read_errors_during_restarts": errors[0],
                "read_p50_ms": round(1000 * _pct(lat, 0.5), 1),
                "read_p99_ms": round(1000 * _pct(lat, 0.99), 1),
                "read_max_ms": round(1000 * max(lat), 1) if lat else None,
                "concurrency": args.concurrency,
                "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                "python": platform.python_version(),
            }
        )
    )
    shutil.rmtree(home, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
