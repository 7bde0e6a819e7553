"""What ``ladder models`` shows for a tier: source, presence, checksum state, parameters, size."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ladder.cluster.compose import materialize, weight_store
from ladder.cluster.settings import LadderConfig, TierConfig
from ladder.errors import ChecksumMismatch, WeightsUnavailable
from ladder.workers.recurrent_worker import weights_sha256
from ladder.workers.weights import PackageSource, package_chunks


@dataclass(frozen=True)
class TierRow:
    source: str
    present: str
    sha256: str
    converted: str
    params: str
    size: str


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def safetensors_params(folder: Path) -> int:
    """Parameter count from safetensors headers alone (no tensor is read)."""
    total = 0
    for f in folder.glob("*.safetensors"):
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                count = 1
                for d in meta["shape"]:
                    count *= d
                total += count
    return total


def _describe_checkpoint(config: LadderConfig, tier: TierConfig) -> TierRow:
    """A recurrent-depth rung: its checkpoint folder, checked against the SHA-256 in its config.json."""
    try:
        folder = materialize(config, tier)
    except WeightsUnavailable as exc:
        return TierRow(str(tier.source.kind), f"no ({exc})", "n/a", "n/a", "?", "?")
    weights = folder / "model.safetensors"
    expected = json.loads((folder / "config.json").read_text()).get("sha256", "")
    if not weights.is_file():  # a sharded Huginn folder: shown, not hashed
        return TierRow(
            f"{tier.source.kind}:{folder}",
            "yes",
            "n/a",
            "n/a (native)",
            f"{safetensors_params(folder) / 1e6:.0f}M",
            "?",
        )
    sha = (
        "not recorded"
        if not expected
        else f"ok {expected[:12]}…"
        if weights_sha256(weights) == expected
        else "MISMATCH"
    )
    d = tier.depth
    budget = f" r≤{d.max_iterations} {d.exit}" if d else ""
    return TierRow(
        f"{tier.source.kind}:{folder.name}{budget}",
        "yes",
        sha,
        "n/a (native)",
        f"{safetensors_params(folder) / 1e6:.2f}M",
        _human(weights.stat().st_size),
    )


def describe_tier(config: LadderConfig, tier: TierConfig, force_verify: bool = False) -> TierRow:
    if tier.backend in ("recurrent", "huginn"):
        return _describe_checkpoint(config, tier)
    source = tier.source.build()
    store = weight_store(config, tier)
    present, sha, size = "yes", "n/a", "?"
    if isinstance(source, PackageSource):
        try:
            chunks = package_chunks(source)
            size = _human(sum(c.stat().st_size for c in chunks))
            store.verify(source, force=force_verify)
            sha = f"ok {source.sha256[:12]}…"
        except ChecksumMismatch as exc:
            sha = f"MISMATCH: {exc}"
        except WeightsUnavailable:
            present = "no (run scripts/setup.sh)"
    converted = store.is_converted(tier.name, source)
    params = "?"
    if converted:
        params = f"{safetensors_params(store.converted_dir(tier.name, source)) / 1e6:.0f}M"
    return TierRow(source.describe(), present, sha, "yes" if converted else "no (ladder prepare)", params, size)
