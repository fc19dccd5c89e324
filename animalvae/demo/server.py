"""A loopback HTTP server for the demo: serves a folder on 127.0.0.1 while a block runs.

It stands in for YouTube during the demo's stage 1, so yt-dlp runs its real code path.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["serve"]

log = logging.getLogger(__name__)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base's signature)
        log.debug("server: " + format, *args)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # yt-dlp's ffmpeg hangs up once it has read its 10 s: normal, not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("server: %s closed the connection early", client_address)
            return
        super().handle_error(request, client_address)


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 at a free port while the block runs; yields the base URL.

    The server is shut down when the block exits, whether it finishes, fails or is
    interrupted with Ctrl-C.
    """
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="demo-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
