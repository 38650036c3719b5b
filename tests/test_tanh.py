"""tanh through sigmoid on the CPU (``ponder.tanh``) against ``torch.tanh``."""

import pytest
import torch

from ponder.kernels import tanh as tanh_mod


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-15), (torch.float32, 3e-7)])
@pytest.mark.parametrize("shape", [(7, 128, 128), (3, 12, 128)])  # above and below the threshold
def test_values_and_gradients_equal_torch_tanh(dtype, tol, shape):
    gen = torch.Generator().manual_seed(0)
    a = (torch.randn(shape, generator=gen, dtype=dtype) * 4).requires_grad_()
    a.data[0, 0, :4] = torch.tensor([0.0, 30.0, -30.0, 1e-9])  # saturated and tiny
    g = torch.randn(shape, generator=gen, dtype=dtype)
    got = tanh_mod.tanh(a)
    (got_grad,) = torch.autograd.grad(got, a, g)
    want = torch.tanh(a)
    (want_grad,) = torch.autograd.grad(want, a, g)
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=10 * tol)
    with torch.no_grad():  # the path without a backward gives the same values
        torch.testing.assert_close(tanh_mod.tanh(a), got, rtol=0, atol=0)
    assert got.abs().max() <= 1.0


def test_the_sigmoid_form_is_taken_only_for_large_cpu_tensors():
    assert tanh_mod.faster(torch.zeros(7, 128, 128))
    assert not tanh_mod.faster(torch.zeros(3, 12, 128))
    assert tanh_mod.faster(torch.zeros(3, 12, 128), backward=False)  # 2,048 or more


def test_from_doubled_is_tanh_of_half_its_input_in_place():
    a = torch.linspace(-8, 8, 1001, dtype=torch.float64)
    a2 = 2 * a
    out = tanh_mod.from_doubled_(a2)
    assert out is a2
    torch.testing.assert_close(out, torch.tanh(a), rtol=0, atol=1e-15)
