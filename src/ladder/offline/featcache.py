"""Cache of featurized query sets on disk (MiniLM over 14k prompts takes minutes on 2 cores).

Keyed by the featurizer kind and a hash of the texts; stored as .npy (dense only) under the
Ladder cache directory. Sparse TF-IDF features are cheap and never cached.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ladder.policies.features import Featurizer, FeaturizerKind


def cache_dir() -> Path:
    return Path(os.path.expanduser(os.environ.get("LADDER_CACHE_DIR", "~/.cache/ladder"))) / "features"


def featurize(featurizer: Featurizer, texts: list[str]):  # noqa: ANN201
    if featurizer.kind is not FeaturizerKind.MINILM:
        return featurizer.transform(texts)
    h = hashlib.blake2b(digest_size=16)
    for t in texts:
        h.update(t.encode() + b"\x1e")
    path = cache_dir() / f"{featurizer.kind.value}-{h.hexdigest()}.npy"
    if path.is_file():
        return np.load(path)
    x = featurizer.transform(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x
