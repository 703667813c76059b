"""A local HTTP server for the media metadata tests: serves images and edge cases, and records every connection and
how many body bytes it sent for each path (in 16 KiB writes into a 32 KiB send buffer, so that what it counts is
close to what the client took: a client that stops reading stops the count within a few hundred KiB).

Use it in pytest as a context manager (`with MediaServer("127.0.0.1") as server: server.url("/photo.png")`), or run
it as a script (for the busted specs and the benchmark):
`python3 tests/media_server.py [HOST [URLPATH=FILE=TYPE ...]]` prints "PID PORT" and serves until killed. Binding
another loopback address (127.0.0.2) gives a server that the module must never reach, and `connections` proves it.

Paths:
  /photo.png /photo.jpg /photo.gif /photo.webp   the 76x52 photo fixtures of tests/data
  /progressive.jpg                               the progressive JPEG fixture
  /notes.txt                                     text/plain
  /missing.png                                   404
  /bomb.png                                      a PNG claiming 100000x100000 pixels over a few KiB
  /big.bin, /big.png                             BIG_BYTES bytes with Content-Length (.png starts like a PNG)
  /big-chunked.png                               BIG_BYTES bytes chunked, without Content-Length
  /stall.png                                     headers and a few bytes, then nothing until the server stops
  /etag.png                                      photo.png with an ETag, 304 to a matching If-None-Match
  /redirect/photo                                302 to /photo.png
  /redirect/loop                                 302 to itself
  /reset/<n>.png                                 reads the request, then resets the connection (RST, no answer)
  /drip/<n>.png                                  image/png headers claiming 100000 bytes, then the PNG signature one
                                                 byte per second, for as long as the client reads
  /slow/<n>.png                                  photo.png, held until `release_slow()`; sets `slow_requested`
  /tarpit/<n>.png                                reads the request and never answers; closes the connection without
                                                 a response at `release_tarpit()`; sets `tarpit_requested`
  /_sent?<path>                                  body bytes sent so far for <path> (for the benchmark's process)
  anything added with `redirect(path, target)` or `serve(path, body, content_type, declared_length=, chunked=)`
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
BIG_BYTES = 2 * 1024 * 1024
PHOTO_SIZE = (76, 52)
BOMB_SIZE = (100_000, 100_000)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

FIXTURES = {
    "/photo.png": ("photo.png", "image/png"),
    "/photo.jpg": ("photo_420.jpg", "image/jpeg"),
    "/progressive.jpg": ("photo_progressive.jpg", "image/jpeg"),
    "/photo.gif": ("photo.gif", "image/gif"),
    "/photo.webp": ("photo_lossy.webp", "image/webp"),
    "/bomb.png": ("bomb.png", "image/png"),
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog (default 5): a burst of probes on a busy machine must not lose SYNs

    def __init__(self, owner: MediaServer, address):
        self.owner = owner
        super().__init__(address, _Handler)

    def verify_request(self, request, client_address) -> bool:
        with self.owner.lock:
            self.owner.connections.append(client_address[0])
        return True


SEND_BUFFER = 32 * 1024
WRITE_SIZE = 16 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms Nagle/delayed-ACK stall
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        owner = self.server.owner
        with owner.lock:
            owner.requests.append(self.path)
        self.path, _, query = self.path.partition("?")  # a query only makes a URL distinct (for the cache)
        if self.path == "/_sent":
            return self._send(200, str(owner.bytes_sent(query)).encode(), "text/plain", count=False)
        routed = owner.routes.get(self.path)
        if routed is not None:
            kind, value, content_type, declared, chunked = routed
            if kind == "redirect":
                return self._send(302, b"", headers={"Location": value})
            if chunked:
                return self._send_chunked(value, content_type)
            return self._send(200, value, content_type, declared_length=declared)
        if self.path in FIXTURES:
            name, content_type = FIXTURES[self.path]
            return self._send(200, (DATA / name).read_bytes(), content_type)
        if self.path == "/notes.txt":
            return self._send(200, b"Meeting notes: bring snacks.\n", "text/plain; charset=utf-8")
        if self.path in ("/big.bin", "/big.png"):
            prefix = PNG_MAGIC if self.path.endswith(".png") else b""
            return self._send(200, prefix + b"\0" * (BIG_BYTES - len(prefix)), "application/octet-stream")
        if self.path == "/big-chunked.png":
            return self._send_chunked(PNG_MAGIC + b"\0" * (BIG_BYTES - len(PNG_MAGIC)), "image/png")
        if self.path == "/stall.png":
            return self._stall()
        if self.path == "/etag.png":
            if self.headers.get("If-None-Match") == '"photo-v1"':
                with owner.lock:
                    owner.not_modified += 1
                return self._send(304, b"", headers={"ETag": '"photo-v1"'}, body_allowed=False)
            return self._send(200, (DATA / "photo.png").read_bytes(), "image/png", headers={"ETag": '"photo-v1"'})
        if self.path == "/redirect/photo":
            return self._send(302, b"", headers={"Location": "/photo.png"})
        if self.path == "/redirect/loop":
            return self._send(302, b"", headers={"Location": "/redirect/loop"})
        if self.path.startswith("/reset/"):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True  # closing with a zero linger sends RST instead of FIN
            return None
        if self.path.startswith("/drip/"):
            return self._drip()
        if self.path.startswith("/tarpit/"):
            owner.tarpit_requested.set()
            owner.tarpit_released.wait()
            self.close_connection = True
            return None
        if self.path.startswith("/slow/"):
            owner.slow_requested.set()
            owner.slow_released.wait()
            return self._send(200, (DATA / "photo.png").read_bytes(), "image/png")
        return self._send(404, b"not found\n", "text/plain")

    def _send(self, status, body, content_type=None, headers=None, body_allowed=True, declared_length=None,
              count=True) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body_allowed:
            self.send_header("Content-Length", str(len(body) if declared_length is None else declared_length))
        if declared_length is not None:
            self.send_header("Connection", "close")  # what follows a lie cannot be read as a next answer
            self.close_connection = True
        self.end_headers()
        if body_allowed:
            self._write(body, count)

    def _write(self, body, count=True, frame=None) -> None:
        """Writes `body` in small pieces, counting what the socket took, until the client stops reading."""
        owner = self.server.owner
        try:
            for i in range(0, len(body), WRITE_SIZE):
                part = body[i : i + WRITE_SIZE]
                self.wfile.write(frame(part) if frame else part)
                if count:
                    with owner.lock:
                        owner.sent[self.path] = owner.sent.get(self.path, 0) + len(part)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client stopped reading: it has what it needs, or its limit

    def _send_chunked(self, body, content_type) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._write(body, frame=lambda part: b"%x\r\n%s\r\n" % (len(part), part))
        if not self.close_connection:
            try:
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    def _drip(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.flush()
        body = PNG_MAGIC * 12500
        try:
            for i in range(len(body)):
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
                if self.server.owner.stopping.wait(1):  # one byte per second until the server stops
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _stall(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(PNG_MAGIC)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return  # the prober gave up before the first bytes went out
        self.server.owner.stopping.wait()


class MediaServer:
    """The server on `host` (a loopback address), on a free port, in a background thread."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.lock = threading.Lock()
        self.connections: list[str] = []  # peer address of every accepted connection
        self.requests: list[str] = []  # path of every request
        self.routes: dict[str, tuple[str, object, str | None, int | None, bool]] = {}
        self.sent: dict[str, int] = {}  # body bytes the socket took, per path
        self.stopping = threading.Event()
        self.slow_requested = threading.Event()  # a /slow/ request has arrived
        self.slow_released = threading.Event()
        self.tarpit_requested = threading.Event()  # a /tarpit/ request has arrived
        self.tarpit_released = threading.Event()
        self.not_modified = 0  # 304 answers given
        self._server = _Server(self, (host, 0))
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"media-server-{host}", daemon=True)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def redirect(self, path: str, target: str) -> None:
        """Answers `path` with a 302 to `target` (absolute or relative)."""
        self.routes[path] = ("redirect", target, None, None, False)

    def serve(self, path: str, body: bytes, content_type: str, declared_length: int | None = None,
              chunked: bool = False) -> None:
        """Answers `path` with `body`: with a Content-Length of `declared_length` (a lie) instead of its own, or
        chunked without any."""
        self.routes[path] = ("body", body, content_type, declared_length, chunked)

    def bytes_sent(self, path: str) -> int:
        """Body bytes the sockets took for `path` so far."""
        with self.lock:
            return self.sent.get(path, 0)

    def release_slow(self) -> None:
        self.slow_released.set()

    def release_tarpit(self) -> None:
        """Every /tarpit/ connection, now and later, is closed without an answer."""
        self.tarpit_released.set()

    def count(self, path: str) -> int:
        with self.lock:
            return self.requests.count(path)

    def start(self) -> MediaServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.slow_released.set()
        self.tarpit_released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> MediaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    # media_server.py [HOST [URLPATH=FILE=CONTENT_TYPE ...]]
    server = MediaServer(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1")
    for spec in sys.argv[2:]:
        path, file, content_type = spec.split("=", 2)
        server.serve(path, Path(file).read_bytes(), content_type)
    print(os.getpid(), server.port, flush=True)
    server._server.serve_forever()
