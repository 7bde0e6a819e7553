"""The verification kernel choice (layerwise.linear, tune_kernels): either kernel gives the
module's values for any row count, and the tuner records a choice for every verification size."""

import pytest
import torch

from ladder.workers import layerwise
from ladder.workers.layerwise import TUNED_ROWS, linear, tune_kernels


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 9, 40])
def test_linear_matches_the_module_for_every_row_count_with_either_kernel(rows, bias, transposed, monkeypatch):
    torch.manual_seed(rows)
    module = torch.nn.Linear(64, 300, bias=bias)
    monkeypatch.setitem(layerwise._TRANSPOSED, (300, 64, torch.float32, rows), transposed)
    x = torch.randn(1, rows, 64)
    out = linear(module, x)
    assert out.shape == (1, rows, 300)
    assert torch.allclose(out, module(x), atol=1e-5, rtol=1e-5)


def test_the_tuner_chooses_a_kernel_per_shape_and_verification_size(monkeypatch):
    monkeypatch.setattr(layerwise, "_TRANSPOSED", {})
    modules = [torch.nn.Linear(96, 200, bias=False), torch.nn.Linear(200, 96, bias=False)]
    chosen = tune_kernels(modules, reps=1)
    assert set(chosen) == {(o, i, torch.float32, r) for o, i in ((200, 96), (96, 200)) for r in TUNED_ROWS}
    assert all(isinstance(v, bool) for v in chosen.values())
    assert tune_kernels(modules, reps=1) == chosen  # timed once per process
