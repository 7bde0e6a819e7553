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

    taking_turns(step, path)()


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
