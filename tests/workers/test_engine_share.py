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


def _lenders(tmp_path, idle_s: float = 0.3):
    """Two engines' lenders on a two-core machine: a owns core 0, b owns core 1; each records the
    cores it pinned its threads to."""
    from ladder.workers.engine_share import Lender

    paths = {c: str(tmp_path / f"cpu{c}.lock") for c in (0, 1)}
    placed: dict[str, list[list[int]]] = {"a": [], "b": []}
    a = Lender({0: paths[0]}, {1: paths[1]}, placed["a"].append, idle_s=idle_s)
    b = Lender({1: paths[1]}, {0: paths[0]}, placed["b"].append, idle_s=idle_s)
    return a, b, placed


def test_an_engine_alone_borrows_the_idle_core_and_gives_it_back_when_its_owner_works(tmp_path):
    a, b, placed = _lenders(tmp_path)
    time.sleep(0.35)  # both owners idle longer than idle_s
    a.release(a.acquire())
    assert placed["a"][-1] == [0, 1] and a.borrowed_steps == 1  # b idle: a runs on both cores
    b.release(b.acquire())  # b wakes up: borrows core 0 only if a idled for idle_s (it did not)
    assert placed["b"][-1] == [1] and b.borrowed_steps == 0
    a.release(a.acquire())  # b worked just now: a keeps to its own core
    assert placed["a"][-1] == [0] and a.borrowed_steps == 1
    time.sleep(0.35)
    a.release(a.acquire())  # b idle again: a takes core 1 back
    assert placed["a"][-1] == [0, 1] and a.borrowed_steps == 2


def test_an_owner_waits_at_most_for_the_borrowers_step(tmp_path):
    import threading

    a, b, placed = _lenders(tmp_path)
    time.sleep(0.35)
    held = a.acquire()  # a's step borrowed core 1
    assert placed["a"][-1] == [0, 1]
    got = threading.Event()

    def owner() -> None:
        b.release_after = b.acquire()
        got.set()

    t = threading.Thread(target=owner)
    t.start()
    assert not got.wait(0.5)  # b's own core is in a's step: b waits …
    a.release(held)
    assert got.wait(5)  # … only until that step ends
    t.join()
    assert placed["b"][-1] == [1]  # a worked just now: b does not borrow core 0
    b.release(b.release_after)


def test_a_busy_engine_between_steps_is_not_robbed(tmp_path):
    # b works continuously: between its steps its lock is free, but its core was active just now
    a, b, placed = _lenders(tmp_path)
    for _ in range(5):
        b.release(b.acquire())
        a.release(a.acquire())
        assert placed["a"][-1] == [0]
    assert a.borrowed_steps == 0


def test_lend_spec_names_every_core_once():
    import json

    from ladder.workers.engine_share import lend_spec, turns_lock_paths

    spec = json.loads(lend_spec([1], [0, 1]))
    assert list(spec["home"]) == ["1"] and list(spec["others"]) == ["0"]
    assert sorted([*spec["home"].values(), *spec["others"].values()]) == turns_lock_paths([0, 1])
