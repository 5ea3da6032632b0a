"""Record every POST (an Alertmanager notification) as one JSON line with the
time it was received: /var/lib/webhook-receiver/alerts.jsonl."""
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OUT = os.path.join(os.environ.get("STATE_DIRECTORY", "/var/lib/webhook-receiver"), "alerts.jsonl")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(OUT, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"received": time.time(), "path": self.path, "body": json.loads(body)}) + "\n")
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", 5001), Handler).serve_forever()
