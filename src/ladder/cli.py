"""The ``ladder`` command line: a thin layer over ``ladder.cluster``.

Every expected failure (bad config, unknown tier, empty prompt, missing weights) is one line on
stderr and exit code 2, never a traceback. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ladder.errors import LadderError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Ladder: route each query to the cheapest model rung that is good enough.")  # fmt: skip

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (default: embedded)")]


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
    query = Query.of(prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                     stop=tuple(stop or ()))  # fmt: skip
    worker = build_worker(tier_cfg, materialize(cfg, tier_cfg)).load()
    gen = worker.generate_sync(query)
    typer.echo(gen.text)
    rate = gen.completion_tokens / gen.decode_s if gen.decode_s > 0 else 0.0
    typer.echo(f"[{gen.tier}] {gen.prompt_tokens} prompt + {gen.completion_tokens} completion tokens, "
               f"{rate:.1f} tok/s, finish={gen.finish_reason}", err=True)  # fmt: skip


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Optional[str] = None,
    port: Optional[int] = None,
    tiers: Annotated[Optional[str], typer.Option(help="comma-separated subset of tiers to deploy")] = None,
) -> None:
    """Serve the OpenAI-compatible API on Ray Serve (local Ray + embedded Redis by default)."""
    from ladder.cluster.serving import serve_forever

    cfg = _config(config)
    serve_forever(cfg, host=host, port=port, tiers=tiers.split(",") if tiers else None)


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
