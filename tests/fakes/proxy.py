"""A tiny HTTP forward proxy on loopback for tests: it resolves names only it knows.

Point an endpoint at `http://fake.test:<port>/v1` and `HTTP_PROXY` (or `Endpoint.proxy`) at
this proxy: only a request that really went through the proxy can reach the fake server,
because nothing else resolves `fake.test`. `seen` records the hosts it was asked for.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import urlsplit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def _forward(self) -> None:
        target = urlsplit(self.path)  # a proxy gets the absolute URL
        host = (target.hostname or "").lower()
        self.server.proxy.seen.append(host)
        address = self.server.proxy.names.get(host)
        if address is None or not target.port:
            self.send_error(502, f"unknown host {host}")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = target.path + (f"?{target.query}" if target.query else "")
        head = [f"{self.command} {path} HTTP/1.1"]
        head += [f"{k}: {v}" for k, v in self.headers.items()
                 if k.lower() not in ("proxy-connection", "connection", "keep-alive")]
        head.append("Connection: close")  # one request per upstream connection: relay to EOF
        with socket.create_connection((address, target.port), timeout=30) as upstream:
            upstream.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            while data := upstream.recv(65536):  # relayed as it comes, so streams stream
                self.wfile.write(data)
                self.wfile.flush()
        self.close_connection = True

    do_GET = do_POST = do_DELETE = do_HEAD = _forward


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    proxy: FakeProxy


class FakeProxy:
    """An HTTP forward proxy on 127.0.0.1 that maps `names` (host -> address) itself."""

    def __init__(self, names: dict[str, str] | None = None) -> None:
        self.names = names if names is not None else {"fake.test": "127.0.0.1"}
        self.seen: list[str] = []
        self._httpd: _Server | None = None

    @property
    def url(self) -> str:
        """The proxy URL to put in HTTP_PROXY or Endpoint.proxy."""
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> Self:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.proxy = self
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01},
                         daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            with contextlib.suppress(OSError):
                self._httpd.server_close()
