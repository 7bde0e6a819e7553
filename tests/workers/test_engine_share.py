"""Engines taking turns (ladder.workers.engine_share): the lock really excludes across processes,
and the vLLM plugin is registered where vLLM looks for it."""

import multiprocessing
import time
from importlib.metadata import entry_points

from ladder.workers.engine_share import taking_turns


def _step(path: str, log, hold_s: float) -> None:  # noqa: ANN001 (a multiprocessing queue)
    def step() -> None:
        log.put(("start", time.monotonic()))
        time.sleep(hold_s)
        log.put(("end", time.monotonic()))

    taking_turns(step, [path])()


def test_steps_of_two_processes_never_overlap(tmp_path):
    path = str(tmp_path / "turns.lock")
    ctx = multiprocessing.get_context("spawn")
    log = ctx.Queue()
    procs = [ctx.Process(target=_step, args=(path, log, 0.4)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    events = sorted((log.get(timeout=5) for _ in range(6)), key=lambda e: e[1])
    # strictly alternating start/end: no step began while another was running
    assert [kind for kind, _ in events] == ["start", "end"] * 3


def test_the_plugin_is_registered_for_vllm():
    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins.get("ladder_engine_turns") == "ladder.workers.engine_share:install"


def test_engine_cores_are_positions_in_the_usable_cores():
    from ladder.workers.vllm_worker import engine_cores

    assert engine_cores(None, [2, 3]) == [2, 3]
    assert engine_cores([1], [2, 3]) == [3]
    assert engine_cores([0, 1], [5]) == [5]  # a config written for two cores still runs on one


def test_engines_on_disjoint_cores_do_not_wait_for_each_other(tmp_path):
    from ladder.workers.engine_share import turns_lock_paths

    assert turns_lock_paths([1, 0]) == sorted(turns_lock_paths([0]) + turns_lock_paths([1]))
    ctx = multiprocessing.get_context("spawn")
    log = ctx.Queue()
    a, b = (str(tmp_path / f"cpu{i}.lock") for i in (0, 1))
    procs = [ctx.Process(target=_step, args=(p, log, 0.6)) for p in (a, b)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    events = sorted((log.get(timeout=5) for _ in range(4)), key=lambda e: e[1])
    assert [kind for kind, _ in events][:2] == ["start", "start"]  # both ran at once
