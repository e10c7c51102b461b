#!/usr/bin/env python3
"""An AWS instance metadata service (IMDSv2) of the kind many emulators are: Python's http.server.

It behaves like most servers written on http.server and the frameworks built on it, and unlike
coder-agent-auth-sim:
  - HTTP/1.1 keep-alive: a connection serves request after request until the client closes it;
  - each answer goes out in two writes, the header block (at end_headers) and then the body;
  - TCP_NODELAY is left off, so Nagle's algorithm holds the small body back until the header
    segment is acknowledged.

At start-up it reads the instance identity document and signature once from a running
coder-agent-auth-sim's AWS metadata service (--from), so the identity it serves is one the
simulator's Coder accepts. Then it serves:
  PUT /latest/api/token                                (X-aws-ec2-metadata-token-ttl-seconds needed)
  GET /latest/dynamic/instance-identity/{document,signature}  (X-aws-ec2-metadata-token needed)

  two-segment-imds.py --from http://127.0.0.1:PORT [--listen 127.0.0.1:0]
                      [--ready-file F] [--request-log F]

The ready file gets {"metadata_url": ...} once listening. The request log gets one JSON line per
request: method, path, status and the client's address and port; every distinct client port is one
TCP connection.
"""

import argparse
import http.server
import json
import os
import secrets
import sys
import threading
import urllib.request

TOKEN = "/latest/api/token"
DOCUMENT = "/latest/dynamic/instance-identity/document"
SIGNATURE = "/latest/dynamic/instance-identity/signature"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


def fetch_identity(base, timeout=5):
    """The document and signature from a real IMDSv2 flow against `base`."""
    base = base.rstrip("/")
    req = urllib.request.Request(base + TOKEN, method="PUT", headers={TTL_HEADER: "60"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        token = r.read().decode().strip()
    out = {}
    for path in (DOCUMENT, SIGNATURE):
        req = urllib.request.Request(base + path, headers={TOKEN_HEADER: token})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            out[path] = r.read()
    return out


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = 30  # an idle kept-alive connection is closed after 30 s
    # The class attributes below are set by main().
    identity = {}
    tokens = set()
    lock = threading.Lock()
    log_file = None

    def answer(self, status, body, content_type="text/plain"):
        body = body if isinstance(body, bytes) else body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()  # first write: the header block
        if self.command != "HEAD":
            self.wfile.write(body)  # second write: the body
        if self.log_file:
            line = json.dumps({"method": self.command, "path": self.path, "status": status,
                               "peer": "%s:%d" % self.client_address[:2]})
            with self.lock:
                self.log_file.write(line + "\n")
                self.log_file.flush()

    def do_PUT(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(min(n, 4096))
        if self.path != TOKEN:
            return self.answer(404, "not found")
        ttl = self.headers.get(TTL_HEADER, "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return self.answer(400, "missing or invalid " + TTL_HEADER)
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.tokens.add(token)
        self.answer(200, token)

    def do_GET(self):
        if self.path not in (DOCUMENT, SIGNATURE):
            return self.answer(404, "not found")
        with self.lock:
            ok = self.headers.get(TOKEN_HEADER) in self.tokens
        if not ok:
            return self.answer(401, "unauthorized")
        ctype = "application/json" if self.path == DOCUMENT else "text/plain"
        self.answer(200, self.identity[self.path], ctype)

    def log_message(self, *args):
        pass  # quiet; --request-log records requests


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from", dest="source", required=True,
                    help="a coder-agent-auth-sim AWS metadata URL to take the identity from")
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    ap.add_argument("--ready-file")
    ap.add_argument("--request-log")
    a = ap.parse_args()

    try:
        Handler.identity = fetch_identity(a.source)
    except Exception as e:  # noqa: BLE001 - report any failure with its fix
        sys.exit(f"two-segment-imds: reading the identity from {a.source} failed: {e}; "
                 "start `coder-agent-auth-sim serve --cloud aws` and pass its metadata_url")
    if a.request_log:
        Handler.log_file = open(a.request_log, "a")
    host, _, port = a.listen.rpartition(":")
    # One thread per connection: the client may hold a kept-alive connection open while it
    # opens another (the document and signature are fetched concurrently).
    srv = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    srv.daemon_threads = True
    url = "http://%s:%d" % srv.server_address[:2]
    if a.ready_file:
        tmp = a.ready_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"metadata_url": url}, f)
        os.replace(tmp, a.ready_file)
    print(json.dumps({"metadata_url": url}), flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
