"""Fixtures of the adaptive-depth tests: the small tier's real weights in float32 (the greedy
output every lossless mode is held to) and its layer-by-layer runner (module-scoped: loaded once
per test module that asks)."""

import pytest

from ladder.cluster.compose import materialize
from ladder.cluster.settings import LadderConfig
from ladder.workers.layerwise import LayerwiseModel
from ladder.workers.transformer import DeviceConfig, TransformersWorker


@pytest.fixture(scope="module")
def tier():
    cfg = LadderConfig()
    t = cfg.tier("small")
    return t, materialize(cfg, t)


@pytest.fixture(scope="module")
def reference(tier):
    """The plain transformers path in float32: the greedy output adaptive modes are held to."""
    return TransformersWorker("small", tier[1], DeviceConfig(dtype="float32")).load()


@pytest.fixture(scope="module")
def lw(reference):
    return LayerwiseModel(reference.model)
