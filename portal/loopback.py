"""Serving a WSGI app on this machine's loopback: the API sandboxes' server.

A developer's and the tests' tool, not application logic: both sandboxes use it, in a
background thread (tests, `serve_in_thread`) or in the foreground (their commands). No Django
import, so a sandbox stays usable on its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler


class QuietRequestHandler(WSGIRequestHandler):
    """No access-log line per request: tests and benchmarks make thousands (werkzeug logs them
    whatever the log level says)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class LoopbackServer(ThreadedWSGIServer):
    """werkzeug's threaded server with a deeper listen backlog: it closes the connection after
    every response, so each request is a new connection, and several worker processes bursting
    at once would overflow werkzeug's 128 (the kernel caps this at net.core.somaxconn)."""

    request_queue_size = 1024


class SandboxServer:
    """An app served by a background thread; ``shutdown()`` stops it and frees the port."""

    def __init__(self, sandbox, server: LoopbackServer, thread: threading.Thread) -> None:
        self.sandbox = sandbox
        self._server = server
        self._thread = thread
        self.base_url = f"http://{server.host}:{server.port}"

    def shutdown(self) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()


def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, *, name: str = "sandbox") -> SandboxServer:
    """Serve ``app`` on ``host:port`` (0 = a free port) from a daemon thread."""
    server = LoopbackServer(host, port, app, handler=QuietRequestHandler)
    # A short poll interval makes shutdown() return in ~50 ms instead of werkzeug's 0.5 s.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True)
    thread.start()
    return SandboxServer(app, server, thread)


def serve_forever(
    app, host: str, port: int, *, ready: Callable[[str], None] | None = None, access_log: bool = True
) -> None:
    """Serve ``app`` in this thread until Ctrl-C (werkzeug then closes the socket quietly).

    ``ready`` gets the base URL once the port is bound (werkzeug exits with a message if the
    port is taken), so nothing announces a URL that is not being served."""
    server = LoopbackServer(host, port, app, handler=None if access_log else QuietRequestHandler)
    if ready is not None:
        ready(f"http://{server.host}:{server.port}")
    server.serve_forever()
