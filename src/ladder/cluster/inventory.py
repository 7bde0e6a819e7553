"""What ``ladder models`` shows for a tier: source, presence, checksum state, parameters, size."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ladder.cluster.compose import weight_store
from ladder.cluster.settings import LadderConfig, TierConfig
from ladder.errors import ChecksumMismatch, WeightsUnavailable
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


def describe_tier(config: LadderConfig, tier: TierConfig, force_verify: bool = False) -> TierRow:
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
