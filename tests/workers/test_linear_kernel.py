"""The verification kernels (layerwise.linear) and their choice (LayerwiseModel.tune): every
kernel gives the module's values for any row count, and tuning records one kernel per pass size,
keeping oneDNN's packed weights only where a pass size chose them."""

import pytest
import torch

from ladder.workers import layerwise
from ladder.workers.layerwise import KERNELS, can_pack, linear, pack


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 9, 40])
def test_linear_matches_the_module_for_every_row_count_with_every_kernel(rows, bias, kernel):
    torch.manual_seed(rows)
    module = torch.nn.Linear(64, 300, bias=bias)
    if kernel == "packed":
        if not can_pack():
            pytest.skip("this torch build has no oneDNN CPU backend")
        pack(module)
    module._ladder_kernels = {rows: kernel}
    x = torch.randn(1, rows, 64)
    out = linear(module, x)
    assert out.shape == (1, rows, 300)
    assert torch.allclose(out, module(x), atol=1e-5, rtol=1e-5)


def test_a_module_no_model_tuned_runs_the_module_itself():
    module = torch.nn.Linear(8, 4)
    x = torch.randn(1, 3, 8)
    assert torch.equal(linear(module, x), module(x))


def test_an_unknown_kernel_rule_is_refused():
    with pytest.raises(ValueError, match="kernel rule 'fast'"):
        layerwise.set_kernel_rule("fast")
