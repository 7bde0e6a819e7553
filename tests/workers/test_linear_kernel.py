"""The verification kernel choice (layerwise.linear): same values as the module, any row count."""

import pytest
import torch

from ladder.workers.layerwise import linear


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 9, 40])
def test_linear_matches_the_module_for_every_row_count(rows, bias):
    torch.manual_seed(rows)
    module = torch.nn.Linear(64, 300, bias=bias)
    x = torch.randn(1, rows, 64)
    out = linear(module, x)
    assert out.shape == (1, rows, 300)
    assert torch.allclose(out, module(x), atol=1e-5, rtol=1e-5)
