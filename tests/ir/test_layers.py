"""Weighted-layer geometry: a convolution's input windows against a loop over the kernel."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.ir.layers import conv_output_size, conv_windows


@pytest.mark.parametrize(
    ("kernel", "stride", "dilation", "pads"),
    [((3, 3), (1, 1), (1, 1), (1, 1, 1, 1)), ((2, 3), (2, 1), (1, 2), (0, 2, 1, 0))],
)
def test_conv_windows_read_what_the_kernel_reads(kernel, stride, dilation, pads):
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 8)).astype(np.float32)
    windows = conv_windows(x, pads, kernel, dilation)
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    out_h = conv_output_size(7, pads[0], pads[2], kernel[0], stride[0], dilation[0])
    out_w = conv_output_size(8, pads[1], pads[3], kernel[1], stride[1], dilation[1])
    for oy in range(out_h):
        for ox in range(out_w):
            y, x0 = oy * stride[0], ox * stride[1]
            rows = slice(y, y + dilation[0] * (kernel[0] - 1) + 1, dilation[0])
            cols = slice(x0, x0 + dilation[1] * (kernel[1] - 1) + 1, dilation[1])
            np.testing.assert_array_equal(windows[:, :, y, x0], padded[:, :, rows, cols])
    assert windows[:, :, :: stride[0], :: stride[1]].shape[2:4] == (out_h, out_w)
