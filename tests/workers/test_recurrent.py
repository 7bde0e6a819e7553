"""The recurrent-depth model and worker: mechanics on a small random model, behaviour on the
bundled trained checkpoint, and bad input (vocabulary, budgets, damaged checkpoints)."""

import asyncio
import json
import random
import shutil
from pathlib import Path

import pytest
import torch

import ladder
from ladder.errors import ChecksumMismatch, InvalidRequest, WeightsUnavailable
from ladder.offline.arithmetic import MAX_OPS, PROMPT_LEN, VOCAB, make_item, make_items
from ladder.offline.recurrent_training import TrainSpec, encode_batch, learning_rate, save
from ladder.types import Query, Sampling
from ladder.workers.exits import ExitKind, make_exit
from ladder.workers.recurrent import RecurrentConfig, RecurrentDepthModel
from ladder.workers.recurrent_worker import (
    CharTokenizer,
    DepthBudget,
    RecurrentWorker,
    load_checkpoint,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return RecurrentDepthModel(RecurrentConfig(vocab=VOCAB, prompt_len=PROMPT_LEN, d_model=32, n_heads=2)).eval()


def _prompts(n: int, seed: int = 1) -> torch.Tensor:
    tok = CharTokenizer(VOCAB, PROMPT_LEN)
    return torch.tensor([tok.encode_prompt(it.prompt) for it in make_items(seed, n)])


def test_never_exit_prefill_equals_the_parallel_forward_at_the_same_r(tiny):
    prompts = _prompts(6)
    for r in (1, 3, 7):
        out = tiny.generate(prompts, 1, r, make_exit(ExitKind.NEVER), generator=torch.Generator().manual_seed(5))
        logits = tiny(prompts, r, generator=torch.Generator().manual_seed(5))
        assert torch.equal(out.tokens[:, 0], logits[:, -1].argmax(-1))
        assert out.iterations.eq(r).all()


def test_exit_depth_stays_within_budget_and_a_loose_threshold_exits_early(tiny):
    prompts = _prompts(8)
    strict = tiny.generate(prompts, 3, 12, make_exit(ExitKind.KL, 1e-12), stop_id=None)
    loose = tiny.generate(prompts, 3, 12, make_exit(ExitKind.KL, 10.0), stop_id=None)
    assert strict.iterations.le(12).all() and strict.iterations.ge(1).all()
    assert loose.iterations.eq(2).all()  # the first comparison is possible after two iterations
    latent = tiny.generate(prompts, 3, 12, make_exit(ExitKind.LATENT, 10.0), stop_id=None)
    assert latent.iterations.eq(2).all()


def test_a_row_that_exits_keeps_the_state_it_exited_with_while_others_iterate(tiny):
    """Row b exited after k_b iterations: its answer must equal running the batch for exactly k_b."""
    prompts = _prompts(6, seed=3)
    adaptive = tiny.generate(prompts, 1, 12, make_exit(ExitKind.KL, 1e-4), generator=torch.Generator().manual_seed(0))
    ks = adaptive.iterations[:, 0].tolist()
    assert len(set(ks)) > 2, ks  # rows really exited at different depths
    for b, k in enumerate(ks):
        fixed = tiny.generate(prompts, 1, k, make_exit(ExitKind.NEVER), generator=torch.Generator().manual_seed(0))
        assert fixed.tokens[b, 0] == adaptive.tokens[b, 0]
        assert torch.isclose(fixed.logprobs[b, 0], adaptive.logprobs[b, 0], atol=1e-5)


def test_same_seed_same_output_and_sampling_reports_logprobs(tiny):
    prompts = _prompts(3)
    a = tiny.generate(prompts, 3, 4, temperature=1.0, generator=torch.Generator().manual_seed(11), stop_id=None)
    b = tiny.generate(prompts, 3, 4, temperature=1.0, generator=torch.Generator().manual_seed(11), stop_id=None)
    assert torch.equal(a.tokens, b.tokens) and torch.allclose(a.logprobs, b.logprobs)
    assert a.logprobs.le(0).all()


def test_truncated_backprop_only_reaches_through_the_last_k_iterations(tiny):
    ids, targets = encode_batch(make_items(2, 4), CharTokenizer(VOCAB, PROMPT_LEN), tiny.cfg.seq_len)
    model = RecurrentDepthModel(tiny.cfg)
    logits = model(ids, 6, backprop_k=2)
    torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1)).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_tokenizer_rejects_characters_outside_the_vocabulary_and_long_prompts():
    tok = CharTokenizer(VOCAB, PROMPT_LEN)
    assert len(tok.encode_prompt("7 + 3 * 9 =")) == PROMPT_LEN
    for bad in ("7+3x9=", "7/3=", "7+3=\x00", "_", ".", "seven plus three"):
        with pytest.raises(InvalidRequest):
            tok.encode_prompt(bad)
    with pytest.raises(InvalidRequest, match="context"):
        tok.encode_prompt("1+1" * 20 + "=")
    with pytest.raises(InvalidRequest, match="empty"):
        tok.encode_prompt("   ")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save(tiny, out, TrainSpec(steps=0), "test", [], 0.0)
    return out


def test_worker_reports_iterations_per_token_and_honours_request_budgets(checkpoint):
    worker = RecurrentWorker("think", checkpoint, DepthBudget(8, ExitKind.KL, 1e-3)).load()
    gen = asyncio.run(worker.generate(Query.of("3+4*7=", max_tokens=4)))
    assert gen.tier == "think" and 1 <= len(gen.depths) == gen.completion_tokens <= 4
    assert all(1 <= d <= 8 for d in gen.depths)
    shallow = worker.generate_sync(Query.of("3+4*7=", max_tokens=4, max_iterations=2))
    assert all(d <= 2 for d in shallow.depths)
    for bad in (Sampling(max_iterations=0), Sampling(max_iterations=9), Sampling(exit_threshold=-1.0)):
        with pytest.raises(InvalidRequest):
            worker.generate_sync(Query(Query.of("1+1=").messages, bad))


def test_damaged_checkpoints_are_refused_with_a_clear_error(checkpoint, tmp_path):
    with pytest.raises(WeightsUnavailable, match="needs config.json"):
        load_checkpoint(tmp_path)
    flipped = tmp_path / "flipped"
    shutil.copytree(checkpoint, flipped)
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (flipped / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch):
        load_checkpoint(flipped)
    garbage = tmp_path / "garbage"
    shutil.copytree(checkpoint, garbage)
    (garbage / "model.safetensors").write_bytes(b"not a safetensors file")
    meta = json.loads((garbage / "config.json").read_text())
    meta.pop("sha256")
    (garbage / "config.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsUnavailable):
        load_checkpoint(garbage)
    (garbage / "config.json").write_text("{not json")
    with pytest.raises(WeightsUnavailable, match="bad config.json"):
        load_checkpoint(garbage)


@pytest.mark.slow  # a subprocess or a training run: not in make test-fast
def test_recurrent_train_cli_writes_a_loadable_checkpoint_with_its_recipe(tmp_path):
    from typer.testing import CliRunner

    from ladder.cli import app

    out = tmp_path / "ckpt"
    result = CliRunner().invoke(app, ["recurrent", "train", "-o", str(out), "--steps", "3", "--batch", "4"])
    assert result.exit_code == 0, result.output
    model, meta = load_checkpoint(out)
    assert meta["command"].startswith("ladder recurrent train") and meta["train"]["seed"] == 0
    assert meta["train"]["steps"] == 3 and len(meta["log"]) >= 1 and model.num_parameters() == meta["parameters"]
    ask = CliRunner().invoke(app, ["recurrent", "ask", "3+4=", "--checkpoint", str(out), "-r", "3"])
    assert ask.exit_code == 0 and "iterations per token" in ask.output


def test_arithmetic_items_are_seeded_and_their_answers_check_out():
    assert make_items(5, 30) == make_items(5, 30) and make_items(5, 30) != make_items(6, 30)
    for item in make_items(9, 120):
        body = item.prompt.rstrip("=")
        value = int(body[0])
        for i in range(1, len(body), 2):  # an independent left-to-right evaluation
            value = eval(f"({value}){body[i]}{body[i + 1]}") % 10
        assert str(value) == item.answer == item.values[-1]
        assert len(item.values) == item.ops == (len(body) - 1) // 2 and len(item.prompt) <= PROMPT_LEN
    with pytest.raises(ValueError):
        make_item(random.Random(0), MAX_OPS + 1)


def test_sliding_window_hides_far_tokens_and_generation_matches_the_parallel_forward():
    torch.manual_seed(0)
    cfg = RecurrentConfig(vocab=VOCAB, prompt_len=PROMPT_LEN, d_model=32, n_heads=2, window=3)
    model = RecurrentDepthModel(cfg).eval()
    prompts = _prompts(4, seed=7)
    # Changing a token more than (prelude + r·core + coda)·window positions back cannot reach the
    # last position; one inside that reach can (the window is what makes depth matter).
    far, near = prompts.clone(), prompts.clone()
    far[:, 0], near[:, -4] = 9, 9
    g = lambda p: model(p, 1, generator=torch.Generator().manual_seed(1))[:, -1]  # noqa: E731
    reach = (cfg.prelude + cfg.core + cfg.coda) * cfg.window  # 12 < PROMPT_LEN - 1
    assert reach < PROMPT_LEN - 1
    assert torch.equal(g(prompts), g(far)) and not torch.equal(g(prompts), g(near))
    # The cached, one-token-at-a-time path applies the window too: the first token is 26
    # positions from the generated ones, beyond every path through the cache at r = 1.
    run = lambda m, p: (
        m.generate(
            p,
            2,
            1,
            make_exit(ExitKind.NEVER),
            stop_id=None,  # noqa: E731
            generator=torch.Generator().manual_seed(2),
        ).logprobs
    )
    assert torch.equal(run(model, prompts), run(model, far))
    unwindowed = RecurrentDepthModel(RecurrentConfig(**{**cfg.to_dict(), "window": None}))
    unwindowed.load_state_dict(model.state_dict())
    assert not torch.equal(run(unwindowed.eval(), prompts), run(unwindowed, far))


@pytest.mark.slow  # a subprocess or a training run: not in make test-fast
def test_operator_subsets_and_the_curriculum_train_records_their_recipe(tmp_path):
    items = make_items(3, 40, operators="+")
    assert all(set(it.prompt[1:-1:2]) == {"+"} for it in items)
    assert all(int(it.answer) == sum(map(int, it.prompt[0:-1:2])) % 10 for it in items)
    with pytest.raises(ValueError, match="operators"):
        make_item(random.Random(0), 2, "/")
    from typer.testing import CliRunner

    from ladder.cli import app

    out = tmp_path / "plus"
    args = [
        "recurrent",
        "train",
        "-o",
        str(out),
        "--steps",
        "100",
        "--batch",
        "4",
        "--operators",
        "+",
        "--window",
        "4",
        "--curriculum",
        "--lr",
        "1e-3",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model, meta = load_checkpoint(out)
    assert meta["operators"] == "+" and model.cfg.window == 4 and meta["train"]["curriculum"] is True
    assert meta["train"]["lr"] == 1e-3
    assert meta["log"][-1]["max_ops"] in (2, 3)  # starts at 2 operations; 100 steps allow one check
    bad = CliRunner().invoke(app, ["recurrent", "train", "-o", str(tmp_path / "x"), "--operators", "+/"])
    assert bad.exit_code == 2 and "--operators" in bad.output


@pytest.mark.slow  # a subprocess or a training run: not in make test-fast
def test_constant_schedule_and_the_time_limit_stop_and_save(tmp_path):
    from dataclasses import replace

    from typer.testing import CliRunner

    from ladder.cli import app

    flat = TrainSpec(steps=1000, lr=1e-3, warmup=10, schedule="constant")
    assert learning_rate(flat, 0) == pytest.approx(1e-4) and learning_rate(flat, 999) == pytest.approx(1e-3)
    assert learning_rate(replace(flat, schedule="cosine"), 999) < 1e-7
    wsd = replace(flat, schedule="wsd")  # flat until the last 20%, then linear to 0
    assert learning_rate(wsd, 799) == pytest.approx(1e-3) and learning_rate(wsd, 900) == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(replace(flat, schedule="linear"), 0)
    out = tmp_path / "timed"
    args = [
        "recurrent",
        "train",
        "-o",
        str(out),
        "--steps",
        "100000",
        "--batch",
        "4",
        "--schedule",
        "constant",
        "--max-minutes",
        "0.02",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    _, meta = load_checkpoint(out)
    assert 0 < meta["steps_done"] < 100000 and meta["log"][-1]["step"] == meta["steps_done"] - 1
    assert meta["train"]["schedule"] == "constant" and {"acc_r1", "acc_r16"} <= set(meta["log"][-1])
    bad = CliRunner().invoke(app, ["recurrent", "train", "-o", str(tmp_path / "x"), "--schedule", "linear"])
    assert bad.exit_code == 2 and "--schedule" in bad.output


BUNDLED = Path(ladder.__file__).parent / "data" / "recurrent-arith"


@pytest.fixture(scope="module")
def bundled():
    assert (BUNDLED / "model.safetensors").is_file(), "the trained checkpoint ships with the package"
    return load_checkpoint(BUNDLED)


def test_bundled_checkpoint_records_a_reproducible_recipe_under_an_hour(bundled):
    model, meta = bundled
    assert meta["command"].startswith("ladder recurrent train -o src/ladder/data/recurrent-arith")
    assert meta["train"]["seed"] == 0 and meta["train_minutes"] < 60 and meta["steps_done"] > 1000
    assert model.cfg.window == meta["train"]["window"] and meta["operators"] == meta["train"]["operators"]


def test_bundled_model_needs_more_iterations_for_longer_chains(bundled):
    """The trained model's behaviour, not its mechanics: short chains are answered at any depth,
    a 3-operation chain only with more core iterations (held-out seeds, never used in training)."""
    model, meta = bundled
    tok = CharTokenizer(model.cfg.vocab, model.cfg.prompt_len)

    def accuracy(ops: int, r: int, rule=None) -> tuple[float, float]:  # noqa: ANN001
        items = make_items(424_242 + ops, 60, levels=[ops], operators=meta["operators"])
        prompts = torch.tensor([tok.encode_prompt(it.prompt) for it in items])
        out = model.generate(
            prompts, 2, r, rule or make_exit(ExitKind.NEVER), generator=torch.Generator().manual_seed(0)
        )
        right = [tok.vocab[int(t)] == it.answer for t, it in zip(out.tokens[:, 0], items)]
        return sum(right) / len(right), float(out.iterations[:, 0].float().mean())

    assert accuracy(1, 4)[0] >= 0.9 and accuracy(2, 4)[0] >= 0.9
    shallow, deep = accuracy(3, 1)[0], accuracy(3, 4)[0]
    assert deep >= 0.8 and deep - shallow >= 0.5, (shallow, deep)
    # Adaptive exit (max 32) stops long before the budget on chains the model can solve.
    acc, iters = accuracy(3, 32, make_exit(ExitKind.LATENT, 5e-3))
    assert acc >= 0.8 and iters <= 8, (acc, iters)


def test_bundled_worker_refuses_operators_its_checkpoint_never_saw(bundled):
    _, meta = bundled
    unseen = sorted(set("+-*") - set(meta["operators"]))
    assert unseen, "the shipped model is trained on a subset of the operators"
    worker = RecurrentWorker("think", BUNDLED, DepthBudget(4)).load()
    with pytest.raises(InvalidRequest, match="not trained on"):
        worker.generate_sync(Query.of(f"3{unseen[0]}7=", max_tokens=4))
    assert worker.generate_sync(Query.of("3+7=", max_tokens=4)).text == "0"
