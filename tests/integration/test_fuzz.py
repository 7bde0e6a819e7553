"""Bad input, generated: schemathesis against the served app's OpenAPI schema (valid and invalid
cases), raw garbage bodies and headers, and hypothesis against the CLI's inputs. Every case must
get a 4xx with an OpenAI error body (or a 200), or a one-line CLI error with exit code 2 — never a
5xx or a traceback. The counts of cases tried are printed (run with -s to see them)."""

import json
from collections import Counter

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from typer.testing import CliRunner

from ladder.cli import app
from ladder.errors import LadderError
from tests.integration.served import small_tier_app

KEY = "sk-fuzz-key"
SETTINGS = dict(deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def server():
    with small_tier_app(KEY, server={"max_completion_tokens": 4}) as (url, _):  # accepted cases stay quick
        yield url


def _check(status: int, body: bytes, headers) -> None:  # noqa: ANN001
    assert status < 500, (status, body[:300])
    if status >= 400:
        err = json.loads(body)["error"]
        assert {"message", "type", "param", "code"} <= set(err) and err["message"], body[:300]


@pytest.mark.ray
@pytest.mark.redis
@pytest.mark.model
@pytest.mark.slow
def test_schemathesis_cases_never_get_a_server_error(server):
    schema = schemathesis.openapi.from_url(server + "/openapi.json")
    counts: Counter = Counter()
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=40, **SETTINGS)
            @given(case=op.as_strategy(generation_mode=mode))
            def check(case):  # noqa: ANN001, ANN202
                if mode is GenerationMode.POSITIVE and isinstance(case.body, dict) and "messages" in case.body:
                    # Valid bodies must also reach the model: name a served model and stay within
                    # this server's max_tokens cap (the schema cannot know either).
                    # Half of them are also made semantically valid (a user turn, n = 1, no tools),
                    # so the model path is fuzzed too; the other half keep what was generated.
                    case.body["model"] = "ladder" if len(case.body["messages"]) % 2 else "small"
                    for field in ("max_tokens", "max_completion_tokens"):
                        if isinstance(case.body.get(field), int):
                            case.body[field] = min(case.body[field], 4)
                    if len(str(case.body)) % 2:
                        case.body["messages"].append({"role": "user", "content": "Say hi."})
                        for field in ("n", "tools", "response_format", "stop", "depth"):
                            case.body.pop(field, None)
                        for field in ("max_tokens", "max_completion_tokens"):
                            if not isinstance(case.body.get(field), int) or isinstance(case.body.get(field), bool):
                                case.body[field] = 4
                response = case.call(base_url=server, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
                counts[(f"{op.method.upper()} {op.path}", mode.value, response.status_code)] += 1
                _check(response.status_code, response.content, response.headers)

            try:
                check()
            except Unsatisfiable:  # an operation with no inputs has no invalid cases to generate
                assert mode is GenerationMode.NEGATIVE, op.path
    print(f"\nschemathesis: {sum(counts.values())} cases")
    for key, n in sorted(counts.items()):
        print(f"  {key}: {n}")
    chat = {k: n for k, n in counts.items() if k[0] == "POST /v1/chat/completions"}
    assert sum(chat.values()) >= 40
    assert any(k[2] == 200 for k in chat) and any(k[2] == 400 for k in chat)  # both kinds really exercised


@pytest.mark.ray
@pytest.mark.redis
@pytest.mark.model
@pytest.mark.slow
def test_garbage_bodies_and_auth_headers_get_4xx(server):
    tried = Counter()
    with httpx.Client(timeout=60) as client:

        @settings(max_examples=60, **SETTINGS)
        @given(
            body=st.one_of(
                st.binary(max_size=300),
                st.text(max_size=200).map(str.encode),
                st.recursive(
                    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                    max_leaves=12,
                ).map(lambda v: json.dumps(v).encode()),
            )
        )
        def garbage(body: bytes) -> None:
            r = client.post(
                server + "/v1/chat/completions",
                content=body,
                headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
            )
            tried[r.status_code] += 1
            assert r.status_code == 400, (body, r.text)
            _check(r.status_code, r.content, r.headers)

        garbage()

        @settings(max_examples=30, **SETTINGS)
        @given(auth=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60))
        def headers(auth: str) -> None:
            r = client.get(server + "/v1/models", headers={"authorization": auth})
            tried[r.status_code] += 1
            assert r.status_code == 401 or auth == f"Bearer {KEY}"
            _check(r.status_code, r.content, r.headers)

        headers()
    print(f"\nraw bodies and auth headers: {sum(tried.values())} cases {dict(tried)}")


def _cli(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    if isinstance(result.exception, LadderError):
        return "refused"  # main() turns these into one line and exit code 2
    assert result.exit_code in (0, 2), (args, result.output, repr(result.exception))
    assert "Traceback" not in result.output
    return "ok" if result.exit_code == 0 else "refused"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from ladder.offline.arithmetic import PROMPT_LEN, VOCAB
    from ladder.offline.recurrent_training import TrainSpec, save
    from ladder.workers.recurrent import RecurrentConfig, RecurrentDepthModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("fuzz") / "ckpt"
    model = RecurrentDepthModel(RecurrentConfig(vocab=VOCAB, prompt_len=PROMPT_LEN, d_model=32, n_heads=2))
    save(model.eval(), out, TrainSpec(steps=0), "test", [], 0.0)
    return out


@pytest.mark.slow  # a subprocess or a training run: not in make test-fast
def test_cli_recurrent_ask_accepts_or_refuses_cleanly(tiny_checkpoint):
    tried = Counter()

    @settings(max_examples=60, **SETTINGS)
    @given(
        program=st.one_of(st.text(max_size=80), st.from_regex(r"[0-9]( ?[+*-] ?[0-9]){1,12} ?=", fullmatch=True)),
        r=st.integers(-3, 80),
        threshold=st.one_of(st.sampled_from([1e-3, 0.05]), st.floats(allow_nan=True)),
    )
    def ask(program: str, r: int, threshold: float) -> None:
        if program.startswith("-"):
            program = " " + program  # an argument, not an option
        tried[
            _cli(
                [
                    "recurrent",
                    "ask",
                    program,
                    "--checkpoint",
                    str(tiny_checkpoint),
                    "-r",
                    str(r),
                    "--threshold",
                    str(threshold),
                ]
            )
        ] += 1

    ask()
    print(f"\nrecurrent ask: {sum(tried.values())} cases {dict(tried)}")
    assert tried["ok"] >= 1 and tried["refused"] >= 1


@settings(max_examples=60, **SETTINGS)
@given(
    mutation=st.dictionaries(
        st.sampled_from(["tiers", "policy", "cache", "server", "ray", "cache_dir", "bogus"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
            max_leaves=8,
        ),
        max_size=3,
    )
)
@pytest.mark.slow  # a subprocess or a training run: not in make test-fast
def test_cli_config_files_are_validated_with_one_line_errors(tmp_path_factory, mutation):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(mutation))
    result = CliRunner().invoke(app, ["models", "--config", str(path)])
    if mutation:
        assert result.exit_code == 0 or isinstance(result.exception, LadderError), (
            mutation,
            result.output,
            repr(result.exception),
        )
