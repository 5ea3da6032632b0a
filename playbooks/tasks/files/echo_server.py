"""Echo upstream: a stand-in for the tenants' application in tests and the demo.

Answers every request with JSON: the service name, method, path and request
headers, with status 200, or with the code a path /status/<code> asks for (a
failing application, for the monitoring tests). A websocket upgrade request
gets a real 101 handshake answer.
Usage: echo_server.py NAME-PORT (the systemd instance name).
"""

import base64
import hashlib
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
NAME, PORT = sys.argv[1].rsplit("-", 1)


class Handler(BaseHTTPRequestHandler):
    """Echo the request; keep-alive (HTTP/1.1) so that nginx can reuse connections."""

    protocol_version = "HTTP/1.1"
    server_version = "echo"
    # Headers and body are two writes: without TCP_NODELAY, Nagle and delayed
    # ACKs stall every keep-alive response by 40 ms.
    disable_nagle_algorithm = True

    def do_GET(self):  # pylint: disable=invalid-name
        """Answer GET (and the other methods below)."""
        self._answer()

    do_POST = do_GET
    do_PUT = do_GET
    do_DELETE = do_GET

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.headers.get("Upgrade", "").lower() == "websocket":
            key = self.headers.get("Sec-WebSocket-Key", "")
            digest = hashlib.sha1((key + WS_GUID).encode()).digest()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", base64.b64encode(digest).decode())
            self.send_header("X-Echo-Service", NAME)
            self.end_headers()
            self.close_connection = True
            return
        headers = {}
        for key in self.headers.keys():
            headers[key.lower()] = self.headers.get_all(key)
        body = json.dumps({"service": NAME, "method": self.command, "path": self.path,
                           "headers": headers}).encode()
        status = re.fullmatch(r"/status/([2-5][0-9][0-9])", self.path)
        self.send_response(int(status.group(1)) if status else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Echo-Service", NAME)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        """Stay quiet: the benchmark sends many requests."""


class Server(ThreadingHTTPServer):
    """Threaded, with a deep accept queue for the benchmark."""

    daemon_threads = True
    request_queue_size = 1024


if __name__ == "__main__":
    Server(("0.0.0.0", int(PORT)), Handler).serve_forever()
