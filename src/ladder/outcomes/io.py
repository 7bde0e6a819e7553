"""Reading and writing outcomes: Ladder's JSONL format and the RouteLLM evaluation CSVs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ladder.errors import OutcomesError
from ladder.outcomes.schema import Outcomes

ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
ROUTELLM_STRONG = "gpt-4-1106-preview"


def _bool_column(values, name: str, source: str) -> np.ndarray:  # noqa: ANN001 (pandas Series)
    mapped = values.map(lambda v: {True: 1.0, False: 0.0, "True": 1.0, "False": 0.0}.get(v, np.nan))
    if mapped.isna().any():
        bad = values[mapped.isna()].iloc[0]
        raise OutcomesError(f"{source}: column {name!r} must be boolean (True/False), found {bad!r}")
    return mapped.to_numpy(dtype=np.float64)


def _read_csv(path: Path, required: list[str]):  # noqa: ANN202
    import pandas as pd

    try:
        frame = pd.read_csv(path, keep_default_na=False)
    except FileNotFoundError:
        raise OutcomesError(f"outcomes file not found: {path}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise OutcomesError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    return frame


def jsonl_lines(path: Path) -> list[str]:
    """The lines of a JSONL file. Split at "\\n" only: ``str.splitlines`` also breaks at U+0085 and
    U+2028, which ``json.dumps(ensure_ascii=False)`` leaves inside strings (two MMLU prompts hold
    U+0085), so a file Ladder wrote would not read back. Raises FileNotFoundError."""
    text = Path(path).read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def _contaminated(folder: Path) -> set[str]:
    path = folder / "contaminated_prompts.jsonl"
    if not path.is_file():
        return set()
    out = set()
    for line in jsonl_lines(path):
        if line.strip():
            row = json.loads(line)
            out.update(v for v in row.values() if isinstance(v, str))
    return out


def load_routellm(root: Path, benchmark: str) -> tuple[Outcomes, np.ndarray]:
    """RouteLLM's MMLU or GSM8K outcomes (weak = Mixtral, strong = GPT-4) and a contamination mask."""
    root = Path(root)
    folder = root / "routellm" / benchmark if (root / "routellm").is_dir() else root / benchmark
    required = ["prompt", ROUTELLM_WEAK, ROUTELLM_STRONG]
    if benchmark == "mmlu":
        files = sorted(folder.glob("mmlu_*.csv"))
        if not files:
            raise OutcomesError(f"no mmlu_*.csv files under {folder}")
        frames = []
        for f in files:
            frame = _read_csv(f, required)
            frame["group"] = f.stem.removeprefix("mmlu_")
            frames.append(frame)
        import pandas as pd

        frame = pd.concat(frames, ignore_index=True)
    elif benchmark == "gsm8k":
        frame = _read_csv(folder / "gsm8k_responses.csv", [*required, f"{ROUTELLM_WEAK}_response"])
        frame["group"] = "gsm8k"
    else:
        raise OutcomesError(f"unknown RouteLLM benchmark {benchmark!r} (mmlu or gsm8k)")
    source = f"routellm/{benchmark}"
    quality = np.stack(
        [
            _bool_column(frame[ROUTELLM_WEAK], ROUTELLM_WEAK, source),
            _bool_column(frame[ROUTELLM_STRONG], ROUTELLM_STRONG, source),
        ],
        axis=1,
    )
    prompts = tuple(frame["prompt"].astype(str))
    responses = {}
    for rung, model in (("weak", ROUTELLM_WEAK), ("strong", ROUTELLM_STRONG)):
        if f"{model}_response" in frame.columns:
            responses[rung] = tuple(frame[f"{model}_response"].astype(str))
    ids = tuple(f"{g}:{p}" for g, p in zip(frame["group"], prompts))
    contaminated = _contaminated(folder)
    mask = np.array([p in contaminated for p in prompts])
    outcomes = Outcomes(
        ids, prompts, ("weak", "strong"), quality, responses=responses, groups=tuple(frame["group"]), source=source
    )
    return outcomes, mask


def _scale(row: dict, path: Path, n: int) -> tuple[float, float]:
    """A row's grading scale: ``"quality_scale": [1, 10]`` for grades 1-10 (read as 0..1); [0, 1]
    when absent."""
    scale = row.get("quality_scale", (0.0, 1.0))
    try:
        lo, hi = (float(x) for x in scale)
    except (TypeError, ValueError):
        raise OutcomesError(f"{path}: row {n} quality_scale must be [low, high], got {scale!r}") from None
    if not hi > lo:
        raise OutcomesError(f"{path}: row {n} quality_scale [{lo:g}, {hi:g}] is empty")
    return lo, hi


def read_rows(path: Path, what: str = "outcomes file") -> list[dict]:
    """A JSONL file's rows as JSON objects, unchecked beyond that (``ladder judge`` fills in
    outcomes' grades; ``ladder score`` reads its input with it); blank lines are skipped, a line
    that is not a JSON object is an error naming the file and line."""
    rows = []
    try:
        lines = jsonl_lines(path)
    except FileNotFoundError:
        raise OutcomesError(f"{what} not found: {path}") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OutcomesError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise OutcomesError(f"{path}:{n}: each line must be a JSON object")
        rows.append(row)
    return rows


def read_jsonl(path: Path) -> Outcomes:
    rows = read_rows(path)
    if not rows:
        raise OutcomesError(f"{path}: no rows")
    for n, row in enumerate(rows, start=1):
        for key in ("id", "query", "quality"):
            if key not in row:
                raise OutcomesError(f"{path}: row {n} has no {key!r} field")
    # Rows of one's own prompts that nothing graded yet (quality null: no reference, no tests, not
    # judged, or the judge failed on them) cannot teach a router: left out, and said so.
    labelled = [r for r in rows if isinstance(r["quality"], dict) and None not in r["quality"].values()]
    if not labelled:
        raise OutcomesError(f"{path}: no row is graded yet (quality null): grade them with `ladder judge {path}`")
    if len(labelled) < len(rows):
        logging.getLogger("ladder.outcomes").warning(
            "%s: %d of %d rows are not graded (quality null) and are left out",
            path,
            len(rows) - len(labelled),
            len(rows),
        )
    rows = labelled
    rungs = tuple(rows[0]["quality"])
    quality = np.full((len(rows), len(rungs)), np.nan)
    for n, row in enumerate(rows):
        if tuple(row["quality"]) != rungs:
            raise OutcomesError(f"{path}: row {n + 1} has rungs {list(row['quality'])}, expected {list(rungs)}")
        lo, hi = _scale(row, path, n + 1)
        for j, rung in enumerate(rungs):
            value = row["quality"][rung]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                if isinstance(value, bool):
                    value = float(value)
                else:
                    raise OutcomesError(f"{path}: row {n + 1} quality[{rung!r}] = {value!r} is not a number")
            if not lo <= value <= hi:
                raise OutcomesError(
                    f"{path}: row {n + 1} quality[{rung!r}] = {value!r} lies outside its scale [{lo:g}, {hi:g}]"
                )
            quality[n, j] = (value - lo) / (hi - lo)
    tokens = None
    if all("tokens" in r for r in rows):
        tokens = np.array([[r["tokens"].get(k, np.nan) for k in rungs] for r in rows], dtype=float)
    responses = {
        k: tuple(r.get("response", {}).get(k, "") for r in rows)
        for k in rungs
        if all(k in r.get("response", {}) for r in rows)
    }
    signals: dict[str, np.ndarray] = {}
    names = {(k, s) for r in rows for k, sig in r.get("signals", {}).items() for s in sig}
    for k, s in sorted(names):
        signals[f"{k}/{s}"] = np.array([r.get("signals", {}).get(k, {}).get(s, np.nan) for r in rows], dtype=float)
    groups = tuple(str(r.get("group", "")) for r in rows)
    logprobs = {
        k: tuple(tuple(float(x) for x in r["logprobs"][k]) for r in rows)
        for k in rungs
        if all(k in r.get("logprobs", {}) for r in rows)
    }
    return Outcomes(
        tuple(str(r["id"]) for r in rows),
        tuple(str(r["query"]) for r in rows),
        rungs,
        quality,
        tokens,
        responses,
        signals,
        groups,
        source=str(path),
        logprobs=logprobs,
    )


def write_jsonl(outcomes: Outcomes, path: Path) -> None:
    with Path(path).open("w") as f:
        for i in range(len(outcomes)):
            row: dict = {
                "id": outcomes.ids[i],
                "query": outcomes.queries[i],
                "quality": {k: float(outcomes.quality[i, j]) for j, k in enumerate(outcomes.rungs)},
            }
            if outcomes.tokens is not None:
                row["tokens"] = {k: float(outcomes.tokens[i, j]) for j, k in enumerate(outcomes.rungs)}
            if outcomes.responses:
                row["response"] = {k: v[i] for k, v in outcomes.responses.items()}
            if outcomes.groups is not None:
                row["group"] = outcomes.groups[i]
            if outcomes.logprobs:
                row["logprobs"] = {k: list(v[i]) for k, v in outcomes.logprobs.items()}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def load_model_ladder(
    path: Path, models: list[str], rungs: list[str] | None = None, question: str = "question"
) -> Outcomes:
    """A ladder of models from a multi-model outcomes parquet (ZeroEval GSM8K, MMLU-Pro).

    Quality = the model's 0/1 column; tokens ≈ the recorded output length (``|out_chars`` or
    ``|gen_chars``) / 4; responses = the extracted answer (``|pred``, "" when none was parsed)
    where the file has it. Rows where any rung has no outcome (NaN) are dropped.
    """
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except FileNotFoundError:
        raise OutcomesError(f"outcomes file not found: {path}") from None
    missing = [m for m in models if m not in frame.columns]
    if missing:
        raise OutcomesError(f"{path}: no column(s) for model(s) {missing}")
    frame = frame.dropna(subset=models).reset_index(drop=True)
    quality = frame[models].to_numpy(dtype=float)
    tokens = np.ones_like(quality)
    for j, m in enumerate(models):
        for suffix in ("|out_chars", "|gen_chars"):
            if m + suffix in frame.columns:
                tokens[:, j] = frame[m + suffix].fillna(0).to_numpy(dtype=float) / 4 + 1
    rung_names = tuple(rungs or models)
    responses = {
        r: tuple(frame[m + "|pred"].fillna("").astype(str))
        for r, m in zip(rung_names, models)
        if m + "|pred" in frame.columns
    }
    id_col = "question_id" if "question_id" in frame.columns else "id"
    return Outcomes(
        tuple(str(i) for i in frame[id_col]),
        tuple(frame[question].astype(str)),
        rung_names,
        quality,
        tokens,
        responses=responses,
        groups=tuple(frame["category"].astype(str)) if "category" in frame.columns else None,
        source=f"{Path(path).parent.name}:{'>'.join(models)}",
    )
