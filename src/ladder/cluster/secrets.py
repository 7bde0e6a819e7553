"""Ladder's own credentials: the admin key and the server secret.

- **Admin key**: the ``/admin`` endpoints always need one. With ``server.admin_keys`` empty,
  ``ladder serve`` makes one at start and keeps it in ``<cache_dir>/admin.key`` (mode 0600: only
  the user who runs Ladder can read it); ``ladder policy|shadow`` send ``$LADDER_ADMIN_KEY``,
  else the config's first admin key, else that file of the config's ``cache_dir`` — never a key
  from the command line (argv is visible to every local user).
- **Server secret**: signs what replicas adopt from Redis (routes, the live policy). It is
  ``$LADDER_SECRET`` when set (every app that shares one Redis must share it) and a fresh random
  one per start otherwise.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ladder.cluster.settings import LadderConfig
from ladder.errors import ConfigError

ADMIN_KEY_FILE = "admin.key"


def admin_key_path(cache_dir: Path) -> Path:
    return cache_dir / ADMIN_KEY_FILE


def _read_private(path: Path) -> str | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if st.st_mode & 0o077 or st.st_uid != os.getuid():
        raise ConfigError(f"{path} may be read by other users: delete it (a new one is made) or chmod 600 it")
    return path.read_text().strip() or None


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def with_admin_key(config: LadderConfig) -> LadderConfig:
    """The config with an admin key: the configured ones, else the one kept in the cache dir
    (made now if there is none, so scripts that read it once keep working across restarts)."""
    if config.server.admin_keys:
        return config
    path = admin_key_path(config.cache_path)
    key = _read_private(path)
    if key is None:
        key = secrets.token_urlsafe(32)
        _write_private(path, key)
    return config.model_copy(update={"server": config.server.model_copy(update={"admin_keys": [key]})})


def admin_key(config: LadderConfig) -> str | None:
    """What ``ladder policy|shadow`` send to the app that ``config`` describes."""
    if explicit := os.environ.get("LADDER_ADMIN_KEY"):
        return explicit
    if config.server.admin_keys:
        return config.server.admin_keys[0]
    return _read_private(admin_key_path(config.cache_path))


def server_secret() -> bytes:
    if explicit := os.environ.get("LADDER_SECRET"):
        if len(explicit) < 16:
            raise ConfigError("LADDER_SECRET must be at least 16 characters")
        return explicit.encode()
    return secrets.token_bytes(32)
