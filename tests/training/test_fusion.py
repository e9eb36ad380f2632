"""The fused activation fake-quantize of the torch view: ONNX's arithmetic, torch's gradients,
and the compiled kernel large activations run is the same function."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from onnxopt.training import fusion  # noqa: E402


def onnx_qdq(x: np.ndarray, scale: float, zero: int, low: int, high: int) -> np.ndarray:
    """QuantizeLinear then DequantizeLinear as the ONNX spec writes them (round half to
    even of x / scale, then the zero point)."""
    q = np.clip(np.rint(x / np.float32(scale)) + zero, low, high)
    return ((q - zero) * np.float32(scale)).astype(np.float32)


def run(kernel, x: torch.Tensor, scale: float, zero: int, low: int, high: int, grad):
    x = x.clone().requires_grad_()
    s = torch.tensor([scale], requires_grad=True)
    y = kernel(x, s, torch.tensor([float(zero)]), low, high)
    (y * grad).sum().backward()
    return y.detach(), x.grad, s.grad


def test_rounds_like_onnx_where_half_steps_meet_an_odd_zero_point():
    # 0.5 / 1.0 rounds to 0 then + 3 = 3 in ONNX; rounding 0.5 + 3 = 3.5 gives 4
    x = torch.tensor([0.5, 1.5, -0.5, 2.5, 300.0, -300.0])
    got, _, _ = run(fusion._fake_quantize_ste, x, 1.0, 3, -128, 127, torch.ones(6))
    assert got.tolist() == onnx_qdq(x.numpy(), 1.0, 3, -128, 127).tolist()


@pytest.mark.parametrize("low, high, zero", [(0, 255, 0), (-128, 127, 5)])
def test_gradients_are_torch_straight_through_and_lsq(low, high, zero):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 6, 6, generator=generator) * 3
    grad = torch.randn(x.shape, generator=generator)
    mine = run(fusion._fake_quantize_ste, x, 0.02, zero, low, high, grad)

    def reference(x, s, z, lo, hi):
        return torch._fake_quantize_learnable_per_tensor_affine(x, s, z, lo, hi, 1.0)

    theirs = run(reference, x, 0.02, zero, low, high, grad)
    # d/dx is 1 inside the range and 0 outside (x / scale * scale leaves a float rounding)
    assert torch.equal(mine[1] == 0, theirs[1] == 0) and (mine[1] == 0).any()
    assert torch.allclose(mine[1], theirs[1], rtol=1e-6, atol=0)
    assert mine[2].item() == pytest.approx(theirs[2].item(), rel=1e-4)


def test_large_activations_run_the_compiled_kernel_with_the_same_values():
    shape = (2, 16, 96, 96)  # past COMPILED_FROM, channels-last as the torch view feeds it
    assert np.prod(shape) >= fusion.COMPILED_FROM
    generator = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=generator) * 2).contiguous(
        memory_format=torch.channels_last)
    grad = torch.randn(shape, generator=generator)
    compiled = run(fusion.fake_quantize, x, 0.03, 128, 0, 255, grad)
    assert fusion._KERNEL["kernel"] is not None, "torch.compile failed on this machine"
    eager = run(fusion._fake_quantize_ste, x, 0.03, 128, 0, 255, grad)
    assert torch.equal(compiled[0], eager[0])
    assert torch.equal(compiled[1], eager[1])
    assert compiled[2].item() == pytest.approx(eager[2].item(), rel=1e-4)


def test_the_compiled_kernel_is_built_when_first_asked_for_under_no_grad(monkeypatch):
    monkeypatch.setattr(fusion, "_KERNEL", {})
    x = torch.ones(2, 16, 96, 96)
    with torch.no_grad():
        y = fusion.fake_quantize(x, torch.tensor([0.5]), torch.tensor([0.0]), 0, 255)
    assert fusion._KERNEL["kernel"] is not None
    assert torch.equal(y, x)
