"""A small remote policy server for tests (protocol recaudit.remote-policy/v1), on
loopback in a thread, with misbehaving paths to test the client's safety rules."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class PolicyServer:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
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

    def answer(self, h: BaseHTTPRequestHandler, path: str, body: dict[str, Any], hits: int) -> None:
        def send(status: int, data: bytes, ctype: str = "application/json", **headers: str) -> None:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)

        ok = json.dumps({"slates": self.slates(body)}).encode()
        if path == "/act":
            send(200, ok)
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
            bad = [s[:-1] for s in self.slates(body)]
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
