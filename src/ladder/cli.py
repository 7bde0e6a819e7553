"""The ``ladder`` command line: a thin layer over ``ladder.cluster``.

Every expected failure (bad config, unknown tier, empty prompt, missing weights) is one line on
stderr and exit code 2, never a traceback. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import os
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ladder.errors import LadderError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Ladder: route each query to the cheapest model rung that is good enough.",
)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (default: embedded)")]
CollectedWithOpt = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="the config the outcomes were collected with (default: embedded)"),
]


def _config(path: Path | None):  # noqa: ANN202
    from ladder.cluster.settings import load_config

    return load_config(path or os.environ.get("LADDER_CONFIG"))


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def models(
    config: ConfigOpt = None,
    verify: Annotated[bool, typer.Option(help="re-hash the GGUF bytes even if verified before")] = False,
) -> None:
    """List the configured tiers: weight source, presence, SHA-256 check, parameters, size."""
    from rich.console import Console
    from rich.table import Table

    from ladder.cluster.inventory import describe_tier

    cfg = _config(config)
    table = Table("tier", "source", "present", "sha256", "converted", "params", "size")
    for tier in cfg.tiers:
        row = describe_tier(cfg, tier, force_verify=verify)
        table.add_row(tier.name, row.source, row.present, row.sha256, row.converted, row.params, row.size)
    Console(width=160).print(table)


@app.command()
def prepare(
    tier: Annotated[Optional[list[str]], typer.Option("--tier", "-t", help="tier(s); default all")] = None,
    config: ConfigOpt = None,
) -> None:
    """Verify and convert tier weights once (GGUF -> cached safetensors) so serving starts fast."""
    import time

    from ladder.cluster.compose import materialize

    cfg = _config(config)
    for name in tier or cfg.tier_names:
        t0 = time.perf_counter()
        path = materialize(cfg, cfg.tier(name))
        typer.echo(f"{name}: ready at {path} ({time.perf_counter() - t0:.1f}s)", err=True)


@app.command()
def generate(
    prompt: str,
    tier: Annotated[str, typer.Option("--tier", "-t")] = "small",
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", min=1)] = 128,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0)] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    seed: Optional[int] = None,
    stop: Annotated[Optional[list[str]], typer.Option(help="stop sequence (repeatable)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Generate with one tier in this process (no Ray, no Redis)."""
    from ladder.cluster.compose import build_worker, materialize
    from ladder.types import Query

    cfg = _config(config)
    tier_cfg = cfg.tier(tier)
    if not prompt.strip():
        _fail("the prompt is empty")
    query = Query.of(
        prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=tuple(stop or ())
    )
    worker = build_worker(tier_cfg, materialize(cfg, tier_cfg)).load()
    try:
        gen = worker.generate_sync(query)
    finally:
        if close := getattr(worker, "close", None):  # an engine process is stopped here, not at exit
            close()
    typer.echo(gen.text)
    rate = gen.completion_tokens / gen.decode_s if gen.decode_s > 0 else 0.0
    typer.echo(
        f"[{gen.tier}] {gen.prompt_tokens} prompt + {gen.completion_tokens} completion tokens, "
        f"{rate:.1f} tok/s, finish={gen.finish_reason}",
        err=True,
    )


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Optional[str] = None,
    port: Optional[int] = None,
    tiers: Annotated[Optional[str], typer.Option(help="comma-separated subset of tiers to deploy")] = None,
) -> None:
    """Serve the OpenAI-compatible API on Ray Serve (local Ray + embedded Redis by default)."""
    from ladder.serving.launch import serve_forever

    cfg = _config(config)
    serve_forever(cfg, host=host, port=port, tiers=tiers.split(",") if tiers else None)


@app.command()
def score(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT.jsonl")],
    out: Annotated[Path, typer.Option("--out", "-o")],
    config: ConfigOpt = None,
    tiers: Annotated[Optional[str], typer.Option(help="comma-separated subset of tiers")] = None,
    actors: Annotated[int, typer.Option(min=1, help="actors in the Ray Data pool")] = 1,
    batch_size: Annotated[
        Optional[int],
        typer.Option(min=1, help="rows in flight together per actor (default: the largest engine's max_num_seqs)"),
    ] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", min=1, help="default per row")] = 64,
    actor_cpus: Annotated[
        Optional[float],
        typer.Option(min=0.01, help="CPUs each actor reserves (default: the free CPUs shared out, at most one node's)"),
    ] = None,
    layout: Annotated[
        str,
        typer.Option(
            help="whole: each actor holds every tier; pools: each tier in actors of its own (its placement), "
            "called by light cascade actors (the default: 1.14x whole's tokens/s, benchmarks/batch.py)"
        ),
    ] = "pools",
) -> None:
    """Route and answer every row with Ray Data (resumable: ids already in OUT are skipped)."""
    from rich.console import Console
    from rich.table import Table

    from ladder.cluster.runtime import Runtime
    from ladder.jobs.batch import score as run
    from ladder.serving.launch import restrict

    if layout not in ("whole", "pools"):
        _fail(f"--layout must be whole or pools, got {layout!r}")
    cfg = restrict(_config(config), tiers.split(",") if tiers else None, None, None)
    cfg = cfg.model_copy(update={"cache": cfg.cache.model_copy(update={"enabled": False})})
    # A batch is what one actor holds in flight: at least a full engine batch keeps vLLM busy.
    batch_size = batch_size or max(t.engine.max_num_seqs if t.backend == "vllm" else 8 for t in cfg.tiers)
    with Runtime.start(cfg):
        s = run(cfg, input_path, out, actors, batch_size, max_tokens, actor_cpus, layout)  # type: ignore[arg-type]
    table = Table(
        "rows",
        "skipped (done before)",
        "errors",
        "rung mix",
        "escalations",
        "tokens",
        "cost USD",
        "wall s",
        "rows/s",
        "tokens/s",
    )
    mix = ", ".join(f"{k}:{v}" for k, v in sorted((s.mix or {}).items()))
    table.add_row(
        str(s.rows),
        str(s.skipped),
        str(s.errors),
        mix or "-",
        str(s.escalations),
        str(s.completion_tokens),
        f"{s.cost_usd:.6f}",
        f"{s.wall_s:.1f}",
        f"{s.rows / s.wall_s:.2f}" if s.wall_s > 0 else "-",
        f"{s.completion_tokens / s.wall_s:.1f}" if s.wall_s > 0 else "-",
    )
    Console(width=160).print(table)


@app.command()
def collect(
    dataset: Annotated[
        str,
        typer.Argument(
            help="gsm8k, gsm8k-train, mmlu-pro, humaneval, or a PROMPTS.jsonl "
            "of your own ({id?, prompt | messages, reference?, tests?})"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o")],
    data: Annotated[Optional[Path], typer.Option("--data", help="the shared data folder (not for humaneval)")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="first N items by a stable id hash")] = None,
    skip: Annotated[
        int, typer.Option(min=0, help="leave out the first N by that hash first (e.g. a benchmark's questions)")
    ] = 0,
    config: ConfigOpt = None,
    tiers: Annotated[Optional[str], typer.Option(help="comma-separated subset of tiers (rungs)")] = None,
    actors: Annotated[int, typer.Option(min=1, help="actors in the Ray Data pool")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="queries sent to a rung together (vLLM batches them)")] = 16,
    max_tokens: Annotated[
        Optional[int], typer.Option("--max-tokens", "-n", min=1, help="default: the dataset's")
    ] = None,
) -> None:
    """Run every rung on a labelled dataset; write outcomes JSONL (resumable: done ids are skipped)."""
    from rich.console import Console
    from rich.table import Table

    from ladder.cluster.runtime import Runtime
    from ladder.jobs.collect import collect as run
    from ladder.offline.datasets import load_dataset
    from ladder.serving.launch import restrict

    cfg = restrict(_config(config), tiers.split(",") if tiers else None, None, None)
    cfg = cfg.model_copy(update={"cache": cfg.cache.model_copy(update={"enabled": False})})
    data = data or Path("../shared/data")
    if dataset.endswith(".jsonl") or Path(dataset).is_file():
        dataset = str(Path(dataset).resolve())  # Ray's workers run elsewhere
    ds = load_dataset(dataset, data, limit, skip)
    for line, why in ds.rejected:
        print(f"{dataset}:{line}: skipped: {why}", file=sys.stderr)
    if not ds.items:
        _fail(f"{dataset}: no usable rows")
    with Runtime.start(cfg):
        s = run(cfg, ds, data, out, actors, batch_size, max_tokens)
    if s.unlabelled:
        print(f"{s.unlabelled} rows have no reference or tests: grade them with `ladder judge {out}`", file=sys.stderr)
    table = Table("rung", "accuracy (this run)", "mean latency s", "errors")
    for rung in s.correct:
        table.add_row(
            rung, f"{s.correct[rung] / s.rows:.3f}", f"{s.latency_s[rung] / s.rows:.2f}", str(s.errors.get(rung, 0))
        )
    Console(width=160).print(table)
    print(f"{s.rows} queries collected, {s.skipped} already in {out}, {s.wall_s:.0f} s")


@app.command()
def judge(
    outcomes: Annotated[Path, typer.Argument(metavar="OUTCOMES.jsonl", help="from ladder collect PROMPTS.jsonl")],
    out: Annotated[Path, typer.Option("--out", "-o")],
    judge_url: Annotated[str, typer.Option(help="an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")],
    judge_model: Annotated[str, typer.Option(help="the judge's model id, e.g. large (Ladder's own top tier)")],
    key_env: Annotated[str, typer.Option(help="environment variable holding the judge's API key")] = "LADDER_JUDGE_KEY",
    scale: Annotated[int, typer.Option(min=2, max=100, help="ratings 1..SCALE")] = 10,
    also_labelled: Annotated[bool, typer.Option(help="judge answers with a gold grade too; report agreement")] = False,
    concurrency: Annotated[int, typer.Option(min=1)] = 8,
    timeout: Annotated[float, typer.Option(min=1, help="seconds per judge call")] = 120,
    retries: Annotated[int, typer.Option(min=0)] = 2,
    judge_price: Annotated[Optional[str], typer.Option(help="IN:OUT USD per 1M tokens, to count its cost")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="judge answer cache (default: OUT.judge-cache.jsonl)")] = None,
) -> None:
    """Grade answers that have no reference or tests with an LLM judge; write graded outcomes."""
    import os

    from ladder.offline.judge import Judge, judge_outcomes

    price = (0.0, 0.0)
    if judge_price:
        try:
            p_in, p_out = (float(x) for x in judge_price.split(":", 1))
        except ValueError:  # not two numbers
            _fail(f"bad --judge-price {judge_price!r}; expected IN:OUT, e.g. 0.24:0.48")
        price = (p_in, p_out)
    spec = Judge(
        judge_url, judge_model, os.environ.get(key_env, "unused"), scale, timeout, retries, concurrency, price=price
    )
    s = judge_outcomes(outcomes, out, spec, also_labelled, cache)
    _print_json({k: v for k, v in s.__dict__.items()})
    if s.failed:
        print(f"{s.failed} answers could not be graded (left ungraded, see judge_errors in {out})", file=sys.stderr)


DataOpt = Annotated[Optional[Path], typer.Option("--data", help="shared data folder (for routellm:* sources)")]
SourceArg = Annotated[str, typer.Argument(help="outcomes: routellm:mmlu, routellm:gsm8k, or a Ladder JSONL file")]
CrossFitOpt = Annotated[
    int,
    typer.Option(
        "--cross-fit",
        min=0,
        help="K: choose thresholds on out-of-fold scores of the fit+validation parts (the recipe refitted "
        "K times), then refit on all of them; 0 = on the validation part only",
    ),
]
CostWeightedOpt = Annotated[
    bool,
    typer.Option(
        "--cost-weighted",
        help="weigh each query's router odds by its predicted saving at --price (short answers climb cheaply)",
    ),
]


def _print_json(obj: dict) -> None:
    import json

    typer.echo(json.dumps(obj, indent=1, default=float))


@app.command()
def train(
    source: SourceArg,
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("policy.json"),
    data: DataOpt = None,
    featurizer: Annotated[str, typer.Option(help="tfidf | minilm")] = "tfidf",
    scheme: Annotated[str, typer.Option(help="deterministic | probabilistic | transformed")] = "deterministic",
    c: Annotated[float, typer.Option(min=1e-6, help="inverse L2 strength of the logistic routers")] = 1.0,
    idk: Annotated[bool, typer.Option(help="fit IDK models where responses are recorded")] = True,
    all_rows: Annotated[
        bool,
        typer.Option("--all-rows", help="fit on every row (calibrate on another file then, with calibrate --all-rows)"),
    ] = False,
) -> None:
    """Fit a router (+ IDK) policy on the fit part of an outcomes file (thresholds uncalibrated)."""
    from ladder.offline.commands import train as run
    from ladder.offline.training import TrainSpec
    from ladder.policies.features import FeaturizerKind
    from ladder.policies.labels import LabelScheme

    try:
        spec = TrainSpec(FeaturizerKind(featurizer), LabelScheme(scheme), c, idk)
    except ValueError as exc:
        _fail(str(exc))
    _print_json(run(source, data, spec, out, all_rows))


@app.command()
def calibrate(
    policy: Path,
    source: SourceArg,
    target: Annotated[str, typer.Option("--target", "-t", help="e.g. strong<=0.3 | cost<=1.5 | quality>=0.8")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="default: overwrite POLICY")] = None,
    data: DataOpt = None,
    price: Annotated[Optional[list[str]], typer.Option(help="RUNG=IN:OUT USD per 1M tokens")] = None,
    all_rows: Annotated[
        bool,
        typer.Option(
            "--all-rows",
            help="calibrate on every row of SOURCE (a file the policy was not fitted on), not its validation part",
        ),
    ] = False,
    cross_fit: CrossFitOpt = 0,
    cost_weighted: CostWeightedOpt = False,
    config: CollectedWithOpt = None,
) -> None:
    """Choose thresholds on the validation part to meet a target; saves a new policy version, which
    records the weights of the config's tiers (a served tier with other weights is skipped)."""
    from ladder.offline.commands import calibrate_policy

    weights = _fitted_weights(config, policy)
    _print_json(
        calibrate_policy(
            policy,
            source,
            data,
            target,
            price,
            out or policy,
            all_rows=all_rows,
            cross_fit=cross_fit,
            tier_weights=weights,
            cost_weighted=cost_weighted,
        )
    )


def _fitted_weights(config: Path | None, policy: Path) -> dict[str, str] | None:
    """What a calibrated policy records as the weights it was fitted on: the config's tiers'. None
    when no config was named and the embedded one lacks the policy's rungs (outcomes of other
    models, e.g. RouteLLM's ``weak``/``strong``: no Ladder tier to bind them to)."""
    from ladder.cluster.settings import load_config
    from ladder.cluster.tier_weights import record
    from ladder.policies.store import load_policy

    try:
        return record(load_config(config).tiers, load_policy(policy).rungs)
    except ValueError as exc:
        if config is None:
            return None
        _fail(str(exc))
        raise


@app.command()
def prices(
    source: SourceArg,
    usd_per_hour: Annotated[
        float, typer.Option(min=0.0, help="what an hour of the machine that collected SOURCE costs")
    ] = 1.0,
) -> None:
    """Tier prices measured from collected outcomes (compute per prompt and output token), as
    --price flags for train/calibrate and as the config's price blocks."""
    from ladder.offline.pipeline import load_outcomes, measured_prices

    try:
        outcomes, _ = load_outcomes(source, None)
        table = measured_prices(outcomes, usd_per_hour)
    except LadderError as exc:
        _fail(str(exc))
    for rung, (p_in, p_out) in table.items():
        typer.echo(f"{rung}: input_per_1m {p_in}  output_per_1m {p_out}")
    typer.echo(" ".join(f"--price {r}={i}:{o}" for r, (i, o) in table.items()))


@app.command()
def tune(
    outcomes: SourceArg,
    policy: Path,
    target: Annotated[str, typer.Option("--target", "-t", help="e.g. large<=0.3 | cost<=1.5 | quality>=0.8")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="tune.png, tune.md and the tuned policy.json")] = Path(
        "tune"
    ),
    data: DataOpt = None,
    price: Annotated[Optional[list[str]], typer.Option(help="RUNG=IN:OUT USD per 1M tokens")] = None,
    all_rows: Annotated[bool, typer.Option("--all-rows", help="tune on every row of OUTCOMES")] = False,
    cross_fit: CrossFitOpt = 0,
    cost_weighted: CostWeightedOpt = False,
    config: CollectedWithOpt = None,
) -> None:
    """Calibrate POLICY to a target on OUTCOMES and write the report to look at: the frontier, the
    chosen point and its interval, the rung mix, a per-category table (PNG + Markdown)."""
    from ladder.offline.commands import calibrate_policy

    weights = _fitted_weights(config, policy)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = calibrate_policy(
        policy,
        outcomes,
        data,
        target,
        price,
        out_dir / "policy.json",
        all_rows=all_rows,
        report_dir=out_dir,
        cross_fit=cross_fit,
        tier_weights=weights,
        cost_weighted=cost_weighted,
    )
    typer.echo(Path(info["report"]).read_text())
    typer.echo(f"policy: {info['policy']} ({info['version']}); plot: {info['plot']}")


@app.command()
def route(
    policy: Path,
    prompts: Annotated[Path, typer.Argument(metavar="PROMPTS.jsonl", help='rows {"id"?, "prompt" | "messages"}')],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="JSONL out (default: stdout)")] = None,
) -> None:
    """Route prompts with a policy without generating: per row the router's scores and start rung
    (a cost-weighted policy also shows the weighted scores its thresholds apply to)."""
    import json

    from ladder.errors import InvalidRequest
    from ladder.jobs.batch import row_id, row_query
    from ladder.outcomes.io import read_rows
    from ladder.policies.store import load_policy

    loaded = load_policy(policy)
    lines, counts = [], {r: 0 for r in loaded.rungs}
    for row in read_rows(prompts, "prompts file"):
        try:
            query = row_query(row, 1)
            decision = loaded.route(query)
        except InvalidRequest as exc:
            lines.append({"id": row_id(row), "error": str(exc)})
            continue
        rung = loaded.rungs[decision.start]
        counts[rung] += 1
        weighted = {}
        if loaded.cost is not None and loaded.cost.active:
            w = loaded.route_scores([query.text])[1][0]
            weighted = {"weighted_scores": dict(zip(loaded.rungs[:-1], (float(v) for v in w)))}
        lines.append(
            {
                "id": row_id(row),
                "start": rung,
                "scores": dict(zip(loaded.rungs[:-1], decision.scores)),
                **weighted,
                "thresholds": dict(zip(loaded.rungs[:-1], decision.thresholds)),
                "policy": decision.policy_version,
            }
        )
    text = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)
    if out:
        out.write_text(text)
    else:
        typer.echo(text, nl=False)
    total = max(1, sum(counts.values()))
    typer.echo("start rungs: " + ", ".join(f"{r} {n} ({n / total:.0%})" for r, n in counts.items()), err=True)


@app.command("eval")
def evaluate(
    policy: Path,
    source: SourceArg,
    data: DataOpt = None,
    out_dir: Annotated[Path, typer.Option("--out-dir")] = Path("eval"),
    all_rows: Annotated[
        bool,
        typer.Option(
            "--all-rows",
            help="evaluate on every row of SOURCE (out of domain); "
            "the kNN baseline is fitted on the policy's training data",
        ),
    ] = False,
    train_source: Annotated[
        Optional[str],
        typer.Option("--train", help="the policy's training outcomes (default: the source its file records)"),
    ] = None,
    knn: Annotated[
        str, typer.Option(help="kNN baseline features: tfidf (seconds) | minilm (minutes here) | none")
    ] = "tfidf",
) -> None:
    """Quality–cost curve, APGR, CPT(50/80%) on the test part beside random/weak/strong/oracle/kNN."""
    from ladder.offline.commands import evaluate as run

    if knn not in ("tfidf", "minilm", "none"):
        _fail(f"--knn: tfidf, minilm or none, got {knn!r}")
    result = run(policy, source, data, out_dir, all_rows=all_rows, train_source=train_source, knn=knn)
    typer.echo(f"{'method':<24}{'APGR':>8}{'CPT50':>8}{'CPT80':>8}{'acc@30%':>9}")
    for row in result["rows"]:
        typer.echo(
            f"{row['method']:<24}{row['apgr']:>8.3f}{row['cpt50']:>8.3f}{row['cpt80']:>8.3f}"
            f"{row['quality_at_30']:>9.3f}"
        )
    typer.echo(f"plot: {result['plot']} (test rows: {result['test_rows']})")


policy_app = typer.Typer(no_args_is_help=True, help="The running app's policy: push a new one, show it, roll back.")
app.add_typer(policy_app, name="policy")
UrlOpt = Annotated[str, typer.Option("--url", envvar="LADDER_URL", help="the running app (ladder serve)")]


def _admin_call(
    method: str,
    url: str,
    path: str,
    content: str | None = None,
    params: dict | None = None,
    raw: bool = False,
    config: Path | None = None,
):  # noqa: ANN202 (dict, or the body text when raw)
    """One call to the running app's /admin endpoints; its error becomes one CLI line (exit 2).
    The admin key comes from $LADDER_ADMIN_KEY, the app's config (its admin_keys, else the file
    `ladder serve` keeps in its cache_dir), never from argv."""
    import httpx

    from ladder.cluster.secrets import admin_key

    key = admin_key(_config(config))
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.request(method, url.rstrip("/") + path, content=content, params=params, headers=headers, timeout=120)
    except httpx.HTTPError as exc:
        raise LadderError(f"cannot reach {url}: {exc}") from None
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:300]
        raise LadderError(f"{r.status_code}: {message}")
    return r.text if raw else r.json()


@policy_app.command("push")
def policy_push(policy: Path, url: UrlOpt = "http://127.0.0.1:8000", config: ConfigOpt = None) -> None:
    """Replace the running app's policy without a restart (validated there first; refused: the old one stays)."""
    import time

    from ladder.policies.store import load_policy_bytes, policy_files
    from ladder.serving.live_policy import PolicyFiles

    doc, tensors = policy_files(policy)
    version = load_policy_bytes(doc, tensors, label=str(policy)).version  # a broken file is refused before sending
    t0 = time.perf_counter()
    info = _admin_call("PUT", url, "/admin/policy", PolicyFiles(doc, tensors).encode(), config=config)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    if info["version"] != version:
        raise LadderError(f"the app reports policy {info['version']} live, not the pushed {version}")
    _print_json(info)


@policy_app.command("show")
def policy_show(url: UrlOpt = "http://127.0.0.1:8000", config: ConfigOpt = None) -> None:
    """The live policy: version, calibration target, expected quality and rung mix with intervals."""
    _print_json(_admin_call("GET", url, "/admin/policy", config=config))


@policy_app.command("rollback")
def policy_rollback(url: UrlOpt = "http://127.0.0.1:8000", config: ConfigOpt = None) -> None:
    """Back to the policy before the last push (again: forth)."""
    _print_json(_admin_call("POST", url, "/admin/policy/rollback", config=config))


tier_app = typer.Typer(no_args_is_help=True, help="The running app's tiers: replace one while the others serve.")
app.add_typer(tier_app, name="tier")


@tier_app.command("update")
def tier_update(
    name: str,
    config: Annotated[Path, typer.Option("--config", "-c", help="a config holding the tier's new section")],
    url: UrlOpt = "http://127.0.0.1:8000",
    timeout: Annotated[float, typer.Option(help="seconds the new replicas may take to start")] = 900,
    poll: Annotated[float, typer.Option(help="seconds between progress checks", hidden=True)] = 2.0,
) -> None:
    """Replace tier NAME of the running app (`ladder serve`) with its section in --config: the new
    replicas start beside the old ones, every ingress replica switches once one answers, then the
    old ones stop after their answers in flight. A new tier that cannot start is removed and the
    old one keeps serving (exit 2, the cause in one line)."""
    import json
    import time

    tier = _config(config).tier(name)  # a bad file or an unknown tier: one line, before sending
    body = json.dumps({"tier": tier.model_dump(mode="json"), "timeout_s": timeout})
    state = _admin_call("POST", url, f"/admin/tiers/{name}", body, config=config)
    generation, said, said_at, t0 = state["generation"], "", 0.0, time.monotonic()
    while state["state"] not in ("serving", "failed"):
        if state["message"] != said or time.monotonic() - said_at >= 30:  # what changed, else twice a minute
            typer.echo(f"tier {name}: {state['message']} ({time.monotonic() - t0:.0f} s)", err=True)
            said, said_at = state["message"], time.monotonic()
        time.sleep(poll)
        update = _admin_call("GET", url, f"/admin/tiers/{name}", config=config)["update"]
        if update is None or update["generation"] != generation:
            raise LadderError(f"tier {name}: the app no longer reports this update (was it restarted?)")
        state = update
    if state["state"] == "failed":
        raise LadderError(f"tier {name} not updated, the old one keeps serving: {state['message']}")
    typer.echo(f"tier {name}: {state['message']}", err=True)
    _print_json(state)


shadow_app = typer.Typer(no_args_is_help=True, help="The running app's shadow log (shadow.enabled in its config).")
app.add_typer(shadow_app, name="shadow")


@shadow_app.command("export")
def shadow_export(
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL; rows with messages are PROMPTS.jsonl rows")],
    count: Annotated[int, typer.Option(min=1, help="the newest N records")] = 100_000,
    url: UrlOpt = "http://127.0.0.1:8000",
    config: ConfigOpt = None,
) -> None:
    """Write the newest shadow-log records (route, rungs tried, signals, cost; prompts if recorded)."""
    text = _admin_call("GET", url, "/admin/shadow", params={"count": count}, raw=True, config=config)
    out.write_text(text)
    rows = text.count("\n")
    with_prompts = text.count('"messages":')
    print(f"{rows} records -> {out} ({with_prompts} with prompts: `ladder collect {out}` re-asks every rung)")


keys_app = typer.Typer(no_args_is_help=True, help="API keys with plans (server.keys): make one, read their usage.")
app.add_typer(keys_app, name="keys")


@keys_app.command("new")
def keys_new(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="the plan's name in metrics, logs and usage")],
    target: Annotated[Optional[str], typer.Option(help="frontier point: large<=0.2, cost<=0.8, quality>=0.4")] = None,
    budget_usd: Annotated[Optional[float], typer.Option(help="USD per period")] = None,
    period_s: Annotated[int, typer.Option(help="budget period in seconds (86400: a UTC day)")] = 86_400,
    rpm: Annotated[Optional[int], typer.Option(help="requests per minute")] = None,
    tpm: Annotated[Optional[int], typer.Option(help="tokens per minute (prompt + max_tokens, refunded)")] = None,
    concurrent: Annotated[Optional[int], typer.Option(help="requests in flight at once")] = None,
    config: ConfigOpt = None,
) -> None:
    """Make a new API key and its plan: the key goes to stderr (shown once, never stored), the
    plan (with the key's SHA-256) to stdout as YAML for the config's server.keys."""
    import hashlib
    import secrets

    import yaml

    from ladder.cluster.settings import LadderConfig

    key = "sk-ladder-" + secrets.token_urlsafe(32)
    plan = {"id": key_id, "sha256": hashlib.sha256(key.encode()).hexdigest()}
    if target:
        plan["target"] = target
    if budget_usd is not None:
        plan["budget"] = {"usd": budget_usd, "period_s": period_s}
    limits = {"requests_per_min": rpm, "tokens_per_min": tpm, "concurrent": concurrent}
    if any(v is not None for v in limits.values()):
        plan["limits"] = {k: v for k, v in limits.items() if v is not None}
    cfg = _config(config)
    try:  # checked against the config's tiers and the other plans, as `ladder serve` will
        LadderConfig.model_validate(
            {
                **cfg.model_dump(),
                "server": {**cfg.server.model_dump(), "keys": [*cfg.server.model_dump()["keys"], plan]},
            }
        )
    except ValueError as exc:
        _fail(str(exc).splitlines()[-2].strip() if "validation error" in str(exc) else str(exc))
    typer.echo(f"key (shown once): {key}", err=True)
    typer.echo(yaml.safe_dump([plan], sort_keys=False).rstrip())


@keys_app.command("add")
def keys_add(
    plans: Annotated[Path, typer.Argument(help="YAML list of plans (what `ladder keys new` prints)")],
    url: UrlOpt = "http://127.0.0.1:8000",
    config: ConfigOpt = None,
) -> None:
    """Add (or replace) plans on the running app without a restart; every replica adopts them."""
    import json

    import yaml

    try:
        rows = yaml.safe_load(plans.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LadderError(f"{plans}: {exc}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "id" in r for r in rows):
        raise LadderError(f"{plans}: expected a YAML list of plans, each with an id")
    for row in rows:
        _admin_call("PUT", url, f"/admin/keys/{row['id']}", json.dumps(row), config=config)
        typer.echo(f"added {row['id']}")


@keys_app.command("remove")
def keys_remove(
    key_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOpt = "http://127.0.0.1:8000",
    config: ConfigOpt = None,
) -> None:
    """Remove a plan added with `ladder keys add` (plans in the config stay until the config changes)."""
    _admin_call("DELETE", url, f"/admin/keys/{key_id}", config=config)
    typer.echo(f"removed {key_id}")


@keys_app.command("usage")
def keys_usage(
    url: UrlOpt = "http://127.0.0.1:8000",
    config: ConfigOpt = None,
    since: Annotated[
        Optional[str], typer.Option(help="also the usage over the last 30m | 24h | 7d (whole hours, ≤ 40d)")
    ] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="only this key id")] = None,
) -> None:
    """Each plan's spend this period, what is reserved in flight, and its limits (the running app);
    with --since, each key's requests, tokens, spend and tier mix over that window."""
    from ladder.serving.quotas import USAGE_KEEP_S

    seconds = None
    if since is not None:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", since.strip())
        if not m or float(m.group(1)) <= 0:
            _fail(f"--since: a duration like 30m, 24h or 7d, got {since!r}")
        seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}[m.group(2)]
        if seconds > USAGE_KEEP_S:
            _fail(f"--since: at most {USAGE_KEEP_S // 86_400}d (how long the usage history is kept)")
    path = "/admin/keys" + (f"?since={seconds:g}" if seconds else "")
    rows = [r for r in _admin_call("GET", url, path, config=config)["keys"] if key is None or r["id"] == key]
    if key is not None and not rows:
        _fail(f"no key plan {key!r}")
    usd = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    typer.echo(
        f"{'key':<20}{'target':<16}{'spent USD':>11}{'reserved':>10}{'budget USD':>11}{'rpm':>6}{'tpm':>8}{'conc':>6}"
    )
    for r in rows:
        typer.echo(
            f"{r['id']:<20}{r['target'] or '(policy)':<16}{usd(r['spent_usd']):>11}{usd(r['reserved_usd']):>10}"
            f"{usd(r['budget_usd']):>11}{r['requests_per_min'] or '-':>6}{r['tokens_per_min'] or '-':>8}"
            f"{r['concurrent'] or '-':>6}"
        )
    if seconds:
        typer.echo(f"\nlast {since}:")
        typer.echo(f"{'key':<20}{'requests':>9}{'prompt tok':>11}{'compl. tok':>11}{'spend USD':>11}  tier mix; point")
        for r in rows:
            h = r["history"]
            mix = ", ".join(f"{t} {n}" for t, n in sorted(h["tiers"].items())) or "-"
            typer.echo(
                f"{r['id']:<20}{h['requests']:>9}{h['prompt_tokens']:>11}{h['completion_tokens']:>11}"
                f"{h['spend_usd']:>11.4f}  {mix}; {h['point'] or '-'}"
            )


recurrent_app = typer.Typer(no_args_is_help=True, help="The recurrent-depth worker: train it, ask it.")
app.add_typer(recurrent_app, name="recurrent")


def _bundled_checkpoint() -> Path:
    return Path(__file__).parent / "data" / "recurrent-arith"


@recurrent_app.command("train")
def recurrent_train(
    out: Annotated[Path, typer.Option("--out", "-o", help="checkpoint folder to write")] = Path("recurrent-arith"),
    steps: Annotated[int, typer.Option(min=1)] = 4000,
    batch: Annotated[int, typer.Option(min=1)] = 64,
    seed: int = 0,
    threads: Annotated[int, typer.Option(min=1)] = 2,
    operators: Annotated[str, typer.Option(help='operations to draw from, a subset of "+-*"')] = "+-*",
    window: Annotated[Optional[int], typer.Option(min=1, help="sliding attention window (default: none)")] = None,
    curriculum: Annotated[bool, typer.Option(help="start at 2 operations, add one when learned")] = False,
    lr: Annotated[float, typer.Option(min=1e-6, max=1.0, help="peak learning rate (after warm-up)")] = 7e-4,
    schedule: Annotated[
        str,
        typer.Option(
            help="cosine (decay to 0 over --steps) | constant | wsd (flat, then linear decay over the last 20%)"
        ),
    ] = "cosine",
    max_minutes: Annotated[Optional[float], typer.Option(min=0.01, help="stop and save after this long")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
) -> None:
    """Train a recurrent-depth model from scratch on seeded left-to-right arithmetic (CPU or CUDA)."""
    from ladder.offline.recurrent_training import SCHEDULES, TrainSpec
    from ladder.offline.recurrent_training import train as run

    if not operators or set(operators) - set("+-*"):
        _fail(f'--operators must be a non-empty subset of "+-*", got {operators!r}')
    if schedule not in SCHEDULES:
        _fail(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    command = "ladder recurrent train " + " ".join(sys.argv[3:])
    spec = TrainSpec(
        steps=steps,
        batch=batch,
        seed=seed,
        threads=threads,
        operators=operators,
        window=window,
        curriculum=curriculum,
        lr=lr,
        schedule=schedule,
        max_minutes=max_minutes,
        device=device,
    )
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            _fail(f"--device {device}: no CUDA device is available here")
    meta = run(spec, out, command.strip())
    typer.echo(
        f"wrote {out} ({meta['parameters']:,} parameters, {meta['train_minutes']} min); last log: {meta['log'][-1]}"
    )


@recurrent_app.command("ask")
def recurrent_ask(
    program: Annotated[
        str, typer.Argument(help='e.g. "3+4+8=" (left to right, mod 10; the operators the checkpoint was trained on)')
    ],
    checkpoint: Annotated[Optional[Path], typer.Option(help="default: the bundled checkpoint")] = None,
    max_iterations: Annotated[int, typer.Option("--max-iterations", "-r")] = 32,
    exit_rule: Annotated[str, typer.Option("--exit", help="kl | latent | never")] = "kl",
    threshold: float = 1e-3,
) -> None:
    """Answer one expression; prints the answer and the core iterations each token used."""
    from ladder.types import Query
    from ladder.workers.options import DepthBudget, ExitKind
    from ladder.workers.recurrent_worker import RecurrentWorker

    if exit_rule not in {k.value for k in ExitKind}:
        _fail(f"--exit must be one of {[k.value for k in ExitKind]}, got {exit_rule!r}")
    try:
        budget = DepthBudget(max_iterations, ExitKind(exit_rule), threshold)
    except ValueError as exc:  # pydantic: the first broken bound, in one line
        err = exc.errors()[0] if hasattr(exc, "errors") else {"loc": ("?",), "msg": str(exc)}
        _fail(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}")
    worker = RecurrentWorker("recurrent", checkpoint or _bundled_checkpoint(), budget).load()
    gen = worker.generate_sync(Query.of(program, max_tokens=4))
    typer.echo(f"{gen.text}\titerations per token: {list(gen.depths)}")


depth_app = typer.Typer(no_args_is_help=True, help="Token-level adaptive depth of transformer tiers: exit heads.")
app.add_typer(depth_app, name="depth")


class DraftKind(str, Enum):
    EXIT_HEADS = "exit_heads"
    HEAD = "head"


@depth_app.command("train")
def depth_train(
    tier: Annotated[str, typer.Option("--tier", "-t")] = "small",
    drafter: Annotated[
        DraftKind,
        typer.Option(
            help="exit_heads: early-exit heads after every 4th layer; "
            "head: a learned draft head (EAGLE-style) for lossless speculation"
        ),
    ] = DraftKind.EXIT_HEADS,
    data: Annotated[Path, typer.Option(help="folder holding routellm/gsm8k/train.jsonl")] = Path("../shared/data"),
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="default: the bundled heads of the tier")] = None,
    prompts: Annotated[Optional[int], typer.Option(min=2, help="default: 192 (exit heads), 512 (draft head)")] = None,
    new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="default: 3 (exit heads), 5 (draft head)")] = None,
    reference: Annotated[
        int,
        typer.Option(
            min=0, help="draft head: extra questions fitted on their GSM8K reference solutions (no generation)"
        ),
    ] = 768,
    max_minutes: Annotated[float, typer.Option(min=0.1, help="draft head: stop fitting after this long")] = 25.0,
    lr: Annotated[
        float,
        typer.Option(
            min=1e-6,
            max=1.0,
            help="draft head: peak learning rate; the medium tier (Qwen2.5) diverges at 2e-3 and fits at 5e-4",
        ),
    ] = 2e-3,
    domains: Annotated[
        str,
        typer.Option(
            help="draft head: the prompts the tier answers, equal parts of gsm8k, code, chat "
            "(comma-separated; 'chat:470' asks that domain for its own number); gsm8k alone is the issue-22 corpus"
        ),
    ] = "gsm8k,code,chat",
    seed: int = 0,
    threads: Annotated[int, typer.Option(min=1)] = 2,
    config: ConfigOpt = None,
) -> None:
    """Fit a tier's drafting heads by self-distillation on its own greedy answers to GSM8K
    training questions: early-exit heads (every 4th layer, fitted to the final layer) or a draft
    head (one layer reading the final hidden state, for lossless speculation)."""
    from ladder.cluster.compose import materialize, weights_id

    cfg = _config(config)
    if tier not in cfg.tier_names:
        _fail(f"unknown tier {tier!r}; configured: {cfg.tier_names}")
    t = cfg.tier(tier)
    if t.backend not in ("transformers", "vllm"):  # heads fit the weights; serving them needs transformers
        _fail(f"tier {tier} has backend {t.backend!r}; drafting heads are for transformer tiers")
    command = ("ladder depth train " + " ".join(sys.argv[3:])).strip()
    try:
        if drafter is DraftKind.HEAD:
            from ladder.offline.draft_head_training import DraftSpec
            from ladder.offline.draft_corpus import domain_counts
            from ladder.offline.draft_head_training import train as fit_head
            from ladder.workers.draft_head import bundled_draft_head

            chosen = tuple(d.strip() for d in domains.split(",") if d.strip())
            try:
                domain_counts(chosen, prompts or 512)
            except ValueError as exc:
                _fail(f"--domains: {exc}")
            target = out or bundled_draft_head(tier)
            spec = DraftSpec(
                domains=() if chosen == ("gsm8k",) else chosen,
                prompts=prompts or 512,
                reference=reference,
                new_tokens=new_tokens,
                epochs=epochs or 5,
                lr=lr,
                seed=seed,
                threads=threads,
                max_minutes=max_minutes,
            )
            info = fit_head(
                tier,
                materialize(cfg, t),
                weights_id(t),
                data,
                target,
                spec,
                command,
                corpus_dir=cfg.cache_path / "draft-corpus" / tier,
            )
            h = info["heldout"]
            typer.echo(
                f"wrote {target} in {info['total_s'] / 60:.1f} min; held-out agreement per chain step "
                f"{h['agree_per_step']}, expected tokens per verification {h['expected_tokens_per_verification']}"
            )
            for d, row in info["heldout_per_domain"].items():
                typer.echo(
                    f"  {d}: {row['agree_per_step']}, {row['expected_tokens_per_verification']} per verification"
                )
            return
        from ladder.offline.exit_head_training import HeadSpec
        from ladder.offline.exit_head_training import train as run
        from ladder.workers.exit_heads import bundled_heads

        target = out or bundled_heads(tier)
        spec = HeadSpec(prompts=prompts or 192, new_tokens=new_tokens, epochs=epochs or 3, seed=seed, threads=threads)
        info = run(tier, materialize(cfg, t), weights_id(t), data, target, spec, command)
    except FileNotFoundError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {target} in {info['total_s'] / 60:.1f} min; held-out agreement with the final layer:")
    for layer, row in info["heldout"].items():
        typer.echo(
            f"  after layer {layer:>3}: {row['agree']:.3f} (logit lens {row['agree_logit_lens']:.3f}), KL {row['kl']:.3f}"
        )


@depth_app.command("export")
def depth_export(
    tier: Annotated[str, typer.Option("--tier", "-t")] = "small",
    head: Annotated[
        Optional[Path], typer.Option(help="the draft head's folder; default: the tier's bundled head")
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="default: <cache_dir>/eagle/<tier> (config cache_dir)")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Write a tier's trained draft head as the checkpoint vLLM's EAGLE drafter loads (config.json
    + model.safetensors, bound to the tier's weights), for a GPU tier's `vllm.speculative`."""
    from ladder.cluster.compose import materialize, weights_id
    from ladder.errors import LadderError
    from ladder.workers.draft_export import export
    from ladder.workers.draft_head import DraftHead, bundled_draft_head

    cfg = _config(config)
    if tier not in cfg.tier_names:
        _fail(f"unknown tier {tier!r}; configured: {cfg.tier_names}")
    t = cfg.tier(tier)
    if t.backend not in ("transformers", "vllm"):
        _fail(f"tier {tier} has backend {t.backend!r}; draft heads are for transformer tiers")
    folder = head or bundled_draft_head(tier)
    if not (folder / "draft.safetensors").is_file():
        _fail(f"no draft head in {folder}: run `ladder depth train --tier {tier} --drafter head` first")
    target, wid = out or cfg.cache_path / "eagle" / tier, weights_id(t)
    try:
        written = export(DraftHead.load(folder, wid), materialize(cfg, t), target, tier, wid)
    except LadderError as exc:  # a head for other weights, or one in the shape vLLM cannot load
        _fail(str(exc))
    typer.echo(f"wrote {written}; a GPU tier drafts with it through:")
    typer.echo(f"  vllm:\n    speculative: {{method: eagle, model: {written}, num_speculative_tokens: 3}}")


@depth_app.command("calibrate")
def depth_calibrate(
    tier: Annotated[str, typer.Option("--tier", "-t")] = "small",
    heads: Annotated[Optional[Path], typer.Option(help="default: the bundled heads of the tier")] = None,
    budget: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="max share of tokens that may differ from full depth")
    ] = 0.02,
    config: ConfigOpt = None,
) -> None:
    """Choose the early-exit gate threshold for a quality budget and the draft layer, on the
    held-out part of the heads' corpus; writes them into heads.json (the tier's defaults)."""
    from ladder.cluster.compose import materialize, weights_id
    from ladder.offline.exit_head_training import calibrate
    from ladder.workers.exit_heads import bundled_heads

    cfg = _config(config)
    if tier not in cfg.tier_names:
        _fail(f"unknown tier {tier!r}; configured: {cfg.tier_names}")
    t = cfg.tier(tier)
    folder = heads or bundled_heads(tier)
    if not (folder / "heads.json").is_file():
        _fail(f"no trained heads in {folder}: run `ladder depth train --tier {tier}` first")
    try:
        info = calibrate(materialize(cfg, t), weights_id(t), folder, budget)
    except FileNotFoundError as exc:
        _fail(str(exc))
    typer.echo(f"{'threshold':>10}{'disagree':>10}{'layers':>8}")
    for row in info["threshold_table"]:
        typer.echo(f"{row['threshold']:>10}{row['disagree']:>10.4f}{row['mean_layers']:>8.1f}")
    typer.echo(
        f"early-exit threshold {info['early_exit_threshold']} (budget {budget}); draft layer {info['draft_layer']}"
    )


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        app()
    except LadderError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
