"""The in-process HTTP app on a real socket (uvicorn in a thread): for what ASGITransport cannot
show (a stream in flight, a real browser)."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from ladder.cluster.redis_server import free_port
from ladder.serving.gateway import Gateway, build_api


@contextmanager
def running(gw: Gateway) -> Iterator[str]:
    """The base URL of ``gw``'s app, served until the block ends."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_api(lambda: gw), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            threading.Event().wait(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
