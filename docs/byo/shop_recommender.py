"""A stand-in for the team's production recommender behind HTTP, speaking
recaudit.remote-policy/v2: it knows its own article ids and its own click counts, and
recommends each user the most-clicked articles they have not clicked yet."""

import json
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd

clicks = Counter(pd.read_csv("shop/log.csv")["item_id"])
ranked = [item for item, _ in clicks.most_common()]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        k = body["slate_size"]
        slates = []
        for user in body["users"]:  # {"id": "sim-...", "history": ["art-0125", ...]}
            seen = set(user["history"])
            slates.append([item for item in ranked if item not in seen][:k])
        data = json.dumps({"slates": slates}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", 8765), Handler).serve_forever()
