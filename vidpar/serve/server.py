"""uvicorn in a thread of rank 0, so the main thread stays free for the rank loop (and receives the signals)."""

from __future__ import annotations

import threading
import time


class HttpServer:
    """Serve ``app`` on ``host:port`` from a daemon thread; ``start`` returns once it accepts connections."""

    def __init__(self, app, host: str, port: int, verbose: bool = False) -> None:
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="info" if verbose else "warning",
                                access_log=verbose, lifespan="off", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    def start(self, timeout: float = 60.0) -> None:
        """Start listening; ``OSError`` if it could not (e.g. the port is taken)."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the HTTP server did not start on {self.server.config.host}:"
                              f"{self.server.config.port} (is the port in use?)")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


__all__ = ["HttpServer"]
