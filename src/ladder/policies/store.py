"""Policy files: a JSON document (versioned, human-readable) beside a safetensors file of arrays.

Never pickle. The JSON records the format version, the rungs, the featurizer, thresholds, the
training-data hash, the calibration target and its Pareto table, and the SHA-256 of the tensor
file; a newer format or a checksum mismatch is refused with ``PolicyFileError``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ladder.errors import PolicyFileError
from ladder.policies.answer_cost import AnswerCost
from ladder.policies.features import FeaturizerKind, make_featurizer
from ladder.policies.hybrid import HybridRouterPolicy
from ladder.policies.idk import SIGNALS, IdkModel
from ladder.policies.linear import LinearScorer
from ladder.policies.prefix import PrefixGate

FORMAT = "ladder-policy"
FORMAT_VERSION = 1


def _scorer_arrays(prefix: str, s: LinearScorer) -> dict[str, np.ndarray]:
    # Hashed TF-IDF weights are mostly zero (a feature no training row had keeps weight 0): stored
    # as index + value they take a tenth of the room, which matters for the copy every push puts in
    # Redis beside the route cache.
    w = np.asarray(s.weights, np.float32)
    nz = np.flatnonzero(w)
    if len(nz) * 2 < len(w):
        out = {
            f"{prefix}.index": nz.astype(np.int64),
            f"{prefix}.values": w[nz],
            f"{prefix}.dim": np.array([len(w)], np.int64),
        }
    else:
        out = {f"{prefix}.weights": w}
    out[f"{prefix}.bias"] = np.array([s.bias], np.float64)
    if s.mean is not None:
        out[f"{prefix}.mean"] = np.asarray(s.mean, np.float64)
        out[f"{prefix}.scale"] = np.asarray(s.scale, np.float64)
    return out


def _scorer(prefix: str, t: dict[str, np.ndarray]) -> LinearScorer:
    try:
        if f"{prefix}.index" in t:
            weights = np.zeros(int(t[f"{prefix}.dim"][0]), np.float32)
            weights[t[f"{prefix}.index"]] = t[f"{prefix}.values"]
        else:
            weights = t[f"{prefix}.weights"]
        return LinearScorer(weights, float(t[f"{prefix}.bias"][0]), t.get(f"{prefix}.mean"), t.get(f"{prefix}.scale"))
    except KeyError as exc:
        raise PolicyFileError(f"policy tensors lack {exc.args[0]}") from None
    except IndexError:
        raise PolicyFileError(f"policy tensors of {prefix}: an index past the weights' length") from None


def save_policy(policy: HybridRouterPolicy, path: Path) -> Path:
    from safetensors.numpy import save_file

    path = Path(path)
    tensors_path = path.with_suffix(".safetensors")
    tensors: dict[str, np.ndarray] = {f"featurizer.{k}": v for k, v in policy.featurizer.state().items()}
    for b, s in enumerate(policy.boundaries):
        tensors.update(_scorer_arrays(f"boundary.{b}", s))
    for rung, m in policy.idk.items():
        tensors.update(_scorer_arrays(f"idk.{rung}", m.scorer))
    for rung, gates in policy.prefix.items():
        for g in gates:
            tensors.update(_scorer_arrays(f"prefix.{rung}.{g.tokens}", g.model.scorer))
    if policy.cost is not None:
        for j, s in enumerate(policy.cost.tokens):
            tensors.update(_scorer_arrays(f"cost.tokens.{j}", s))
    save_file(tensors, str(tensors_path))
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": policy.name,
        "version": policy.version,
        "rungs": list(policy.rungs),
        "featurizer": policy.featurizer.kind.value,
        "thresholds": list(policy.thresholds),
        "idk": {
            str(r): {"signals": list(m.signals), "threshold": policy.idk_thresholds.get(r, 0.0)}
            for r, m in policy.idk.items()
        },
        "prefix": {
            str(r): [
                {
                    "tokens": g.tokens,
                    "signals": list(g.model.signals),
                    "accept_at": g.accept_at,
                    "escalate_below": g.escalate_below,
                }
                for g in gates
            ]
            for r, gates in policy.prefix.items()
        },
        **(
            {"cost": {"prices": [list(p) for p in policy.cost.prices], "reference": list(policy.cost.reference)}}
            if policy.cost is not None
            else {}
        ),
        "meta": policy.meta,
        "tensors_file": tensors_path.name,
        "tensors_sha256": hashlib.sha256(tensors_path.read_bytes()).hexdigest(),
    }
    path.write_text(json.dumps(doc, indent=1, default=float))
    return path


def load_policy(path: Path, tier_names: list[str] | None = None) -> HybridRouterPolicy:
    raw_doc, doc, raw = _read(Path(path))
    return _policy(doc, raw, str(path), tier_names)


def policy_files(path: Path) -> tuple[bytes, bytes]:
    """A policy file's two parts as bytes (what ``ladder policy push`` sends)."""
    raw_doc, _, raw = _read(Path(path))
    return raw_doc, raw


def _read(path: Path) -> tuple[bytes, dict, bytes]:
    """The document's bytes, the document, and its tensor file's bytes."""
    try:
        raw_doc = path.read_bytes()
    except FileNotFoundError:
        raise PolicyFileError(f"policy file not found: {path}") from None
    doc = _document(raw_doc, str(path))
    tensors_path = path.parent / str(doc.get("tensors_file"))
    try:
        return raw_doc, doc, tensors_path.read_bytes()
    except FileNotFoundError:
        raise PolicyFileError(f"policy tensors not found: {tensors_path}") from None


def load_policy_bytes(
    raw_doc: bytes, tensors: bytes, tier_names: list[str] | None = None, label: str = "pushed policy"
) -> HybridRouterPolicy:
    """The same checks as ``load_policy`` (format, checksum, rungs, version) on bytes."""
    try:
        return _policy(_document(raw_doc, label), tensors, label, tier_names)
    except PolicyFileError:
        raise
    except (KeyError, TypeError, ValueError) as exc:  # a document missing a part, or a bad value
        raise PolicyFileError(f"{label} is malformed: {type(exc).__name__}: {exc}") from None


def _document(raw_doc: bytes, label: str) -> dict:
    try:
        doc = json.loads(raw_doc)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"policy file {label} is not JSON: {getattr(exc, 'msg', exc)}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PolicyFileError(f"{label} is not a Ladder policy file")
    if int(doc.get("format_version", 0)) > FORMAT_VERSION:
        raise PolicyFileError(
            f"{label} has format version {doc['format_version']}; this Ladder reads up to "
            f"{FORMAT_VERSION} (upgrade Ladder)"
        )
    return doc


def _policy(doc: dict, raw: bytes, path: str, tier_names: list[str] | None) -> HybridRouterPolicy:
    from safetensors.numpy import load

    if hashlib.sha256(raw).hexdigest() != doc.get("tensors_sha256"):
        raise PolicyFileError(f"checksum mismatch for {path}'s tensors: the file was altered or corrupted")
    t = load(raw)
    rungs = tuple(doc["rungs"])
    if tier_names is not None and list(rungs) != list(tier_names):
        raise PolicyFileError(f"policy {path} was fitted for rungs {list(rungs)}, the config has {tier_names}")
    state = {k.removeprefix("featurizer."): v for k, v in t.items() if k.startswith("featurizer.")}
    idk, idk_thresholds = {}, {}
    for key, spec in doc.get("idk", {}).items():
        unknown = [s for s in spec["signals"] if s not in SIGNALS]
        if unknown:
            raise PolicyFileError(f"policy {path} uses unknown IDK signals {unknown}")
        idk[int(key)] = IdkModel(tuple(spec["signals"]), _scorer(f"idk.{key}", t))
        idk_thresholds[int(key)] = float(spec["threshold"])
    prefix = {}
    for key, specs in doc.get("prefix", {}).items():
        gates = []
        for spec in specs:
            if unknown := [s for s in spec["signals"] if s not in SIGNALS]:
                raise PolicyFileError(f"policy {path} uses unknown prefix signals {unknown}")
            model = IdkModel(tuple(spec["signals"]), _scorer(f"prefix.{key}.{int(spec['tokens'])}", t))
            gates.append(
                PrefixGate(int(spec["tokens"]), model, float(spec["accept_at"]), float(spec["escalate_below"]))
            )
        prefix[int(key)] = tuple(gates)
    cost = None
    if (spec := doc.get("cost")) is not None:
        prices, reference = spec.get("prices", []), spec.get("reference", [])
        if (prices and len(prices) != len(rungs)) or (reference and len(reference) != len(rungs) - 1):
            raise PolicyFileError(f"policy {path}: its answer-cost model does not match its {len(rungs)} rungs")
        cost = AnswerCost(
            tuple(_scorer(f"cost.tokens.{j}", t) for j in range(len(rungs))),
            tuple((float(a), float(b)) for a, b in prices),
            tuple(float(r) for r in reference),
        )
    policy = HybridRouterPolicy(
        rungs=rungs,
        featurizer=make_featurizer(FeaturizerKind(doc["featurizer"]), state),
        boundaries=tuple(_scorer(f"boundary.{b}", t) for b in range(len(rungs) - 1)),
        thresholds=tuple(float(x) for x in doc["thresholds"]),
        idk=idk,
        idk_thresholds=idk_thresholds,
        prefix=prefix,
        name=doc.get("name", "hybrid"),
        meta=doc.get("meta", {}),
        cost=cost,
    )
    if doc.get("version") and doc["version"] != policy.version:
        raise PolicyFileError(f"policy {path}: recorded version {doc['version']} does not match its content")
    return policy
