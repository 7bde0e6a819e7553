"""The written worker contract (protocols.TierWorker) against every backend."""


def test_every_backend_meets_the_written_worker_contract():
    """protocols.TierWorker is what the app, batch jobs and CLI call; every backend has all of it."""
    import inspect

    from ladder.cluster.compose import VerifyingWorker
    from ladder.protocols import TierWorker
    from ladder.workers.huginn import HuginnWorker
    from ladder.workers.recurrent_worker import RecurrentWorker
    from ladder.workers.transformer import TransformersWorker
    from ladder.workers.vllm_worker import VLLMWorker

    needed = {n for n, _ in inspect.getmembers(TierWorker) if not n.startswith("_")} | {"tier"}
    assert {"load", "generate", "generate_sync", "stream", "model"} <= needed
    for cls in (TransformersWorker, VLLMWorker, RecurrentWorker, HuginnWorker):
        instance_attrs = set(inspect.signature(cls.__init__).parameters) | {"tier", "model"}
        missing = {n for n in needed if not hasattr(cls, n) and n not in instance_attrs}
        assert not missing, (cls.__name__, missing)
        assert inspect.isasyncgenfunction(cls.stream), cls.__name__
    assert all(hasattr(VerifyingWorker, n) or n in ("tier", "model", "generate_sync") for n in needed)
    assert inspect.isasyncgenfunction(VerifyingWorker.stream)  # its Generation must carry the signals


def test_every_configurable_backend_has_a_builder():
    import typing

    from ladder.cluster.compose import BACKENDS
    from ladder.cluster.settings import TierConfig

    assert set(BACKENDS) == set(typing.get_args(TierConfig.model_fields["backend"].annotation))
