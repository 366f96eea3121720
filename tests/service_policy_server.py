"""A small remote policy server for tests (protocols recaudit.remote-policy/v1 and v2),
on loopback in a thread, with misbehaving paths to test the client's safety rules.

For v2 the server knows only item ids: its own list (``item_ids``) or, without one, the
catalog ids sent at t == 0 of each session. It shows each user the ids it knows in
order, starting at an offset taken from the user's id and the step, skipping what the
user clicked."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class PolicyServer:
    def __init__(self, item_ids: list[str] | None = None) -> None:
        self.hits: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.item_ids = item_ids
        self.catalogs: dict[str, list[str]] = {}
        #: trickled answers: (bytes sent, finished) per request, once the handler ends
        self.trickles: list[tuple[int, bool]] = []
        self.trickle_done = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n) or b"{}")
                with server.lock:
                    server.hits[self.path] += 1
                    hits = server.hits[self.path]
                    if self.path == "/act":
                        server.requests.append(body)
                    if isinstance(body.get("catalog"), dict):
                        server.catalogs[body["session"]] = body["catalog"]["item_ids"]
                server.answer(self, self.path, body, hits)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str = "/act") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> PolicyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def slates(body: dict[str, Any], shift: int = 0) -> list[list[int]]:
        k, n_items = body.get("slate_size", 1), body.get("num_items", 1)
        off, t = body.get("user_offset", 0), body.get("t", 0)
        return [
            [(off + j + t + i + shift) % n_items for i in range(k)]
            for j in range(len(body.get("last_items", [])))
        ]

    def id_slates(self, body: dict[str, Any]) -> list[list[str]]:
        """Protocol v2: slates of the item ids this server knows."""
        known = self.item_ids or self.catalogs[body["session"]]
        k, t = body["slate_size"], body["t"]
        out = []
        for user in body["users"]:
            seen = set(user["history"])
            start = (int(user["id"][4:], 16) + t) % len(known)
            order = known[start:] + known[:start]
            out.append([x for x in order if x not in seen][:k])
        return out

    def trickle(self, h: BaseHTTPRequestHandler, data: bytes, every_s: float) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        sent, finished = 0, False
        try:
            for i in range(len(data)):
                h.wfile.write(data[i : i + 1])
                h.wfile.flush()
                sent += 1
                time.sleep(every_s)
            finished = True
        except OSError:  # the client hung up
            pass
        finally:
            with self.lock:
                self.trickles.append((sent, finished))
            self.trickle_done.set()

    def answer(self, h: BaseHTTPRequestHandler, path: str, body: dict[str, Any], hits: int) -> None:
        def send(status: int, data: bytes, ctype: str = "application/json", **headers: str) -> None:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)

        v2 = body.get("protocol") == "recaudit.remote-policy/v2"
        ok = json.dumps({"slates": self.id_slates(body) if v2 else self.slates(body)}).encode()
        if path == "/act":
            send(200, ok)
        elif path == "/trickle":  # a valid answer, one byte every 0.1 s (about 10 s)
            self.trickle(h, ok + b" " * max(0, 100 - len(ok)), 0.1)
        elif path == "/nested":
            send(200, b'{"slates": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        elif path == "/huge-index":
            k = body.get("slate_size", 1)
            bad = [[10**30, *range(k - 1)] for _ in body.get("last_items", [])]
            send(200, json.dumps({"slates": bad}).encode())
        elif path == "/float-index":
            send(200, b'{"slates": [[1e30]]}')
        elif path == "/repeat":
            slates = self.id_slates(body) if v2 else self.slates(body)
            bad = [[s[0]] * len(s) for s in slates]
            send(200, json.dumps({"slates": bad}).encode())
        elif path == "/unknown-ids":
            slates = self.id_slates(body)
            bad = [["nope-1", *s[1:]] for s in slates]
            bad[-1][-1] = "nope-2"
            send(200, json.dumps({"slates": bad}).encode())
        elif path == "/redirect":
            send(302, b"", Location="/act")
        elif path == "/big":
            send(200, b'{"slates": [' + b"[0]," * 400_000 + b"[0]]}")
        elif path == "/big-chunked":  # no Content-Length: the cap applies while reading
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.end_headers()
            h.wfile.write(b'{"slates": [' + b"[0]," * 400_000 + b"[0]]}")
            h.close_connection = True
        elif path == "/flaky":
            send(503, b"{}") if hits <= 2 else send(200, ok)
        elif path == "/down":
            send(500, b"{}")
        elif path == "/short":
            bad = [s[:-1] for s in (self.id_slates(body) if v2 else self.slates(body))]
            send(200, json.dumps({"slates": bad}).encode())
        elif path == "/range":
            n, k = body.get("num_items", 1), body.get("slate_size", 1)
            bad = [[n] * k for _ in body.get("last_items", [])]
            send(200, json.dumps({"slates": bad}).encode())
        elif path == "/floats":
            bad = [[float(x) for x in s] for s in self.slates(body)]
            send(200, json.dumps({"slates": bad}).encode())
        elif path == "/html":
            send(200, b"<html></html>", "text/html")
        elif path == "/slow":
            time.sleep(1.5)
            send(200, ok)
        else:
            send(404, b"{}")
