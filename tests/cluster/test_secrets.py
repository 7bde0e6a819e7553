"""The admin key the CLI sends and the one `ladder serve` keeps: same file, private, per config."""

import os

import pytest

from ladder.cluster.secrets import admin_key, admin_key_path, with_admin_key
from ladder.cluster.settings import LadderConfig
from ladder.errors import ConfigError


def config(cache_dir, admin_keys=()) -> LadderConfig:
    return LadderConfig(cache_dir=str(cache_dir), server={"admin_keys": list(admin_keys)})


def test_the_cli_finds_the_key_serve_made_in_the_configs_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("LADDER_ADMIN_KEY", raising=False)
    cfg = config(tmp_path / "elsewhere")
    assert admin_key(cfg) is None  # nothing made yet
    served = with_admin_key(cfg)  # what `ladder serve` does at start
    path = admin_key_path(cfg.cache_path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert admin_key(cfg) == served.server.admin_keys[0]
    assert with_admin_key(cfg).server.admin_keys == served.server.admin_keys  # kept across restarts
    assert admin_key(config(tmp_path / "another")) is None  # another app's cache, another key


def test_the_environment_then_the_configs_own_keys_come_first(tmp_path, monkeypatch):
    monkeypatch.delenv("LADDER_ADMIN_KEY", raising=False)
    with_admin_key(config(tmp_path))
    assert admin_key(config(tmp_path, ["configured"])) == "configured"
    monkeypatch.setenv("LADDER_ADMIN_KEY", "from-env")
    assert admin_key(config(tmp_path, ["configured"])) == "from-env"


def test_a_key_file_others_may_read_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("LADDER_ADMIN_KEY", raising=False)
    cfg = config(tmp_path)
    with_admin_key(cfg)
    os.chmod(admin_key_path(cfg.cache_path), 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        admin_key(cfg)
