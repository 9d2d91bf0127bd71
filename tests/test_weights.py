"""Fold math as pure tensor functions: checked against running the op on scaled inputs (float64)."""

from __future__ import annotations

import pytest
import torch

from sj_realspike.synapses import DiagonalSynapse, UnsharedConv2d
from sj_realspike.weights import (
    scale_input_channels,
    scale_linear_columns,
    unshared_conv_weight,
)

torch.manual_seed(0)


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
def test_scale_input_channels_equals_conv_of_scaled_input(groups, padding_mode):
    x = torch.rand(2, 8, 9, 9, dtype=torch.float64)
    w = torch.randn(12, 8 // groups, 3, 3, dtype=torch.float64)
    a = torch.randn(8, 1, 1, dtype=torch.float64)
    conv = torch.nn.Conv2d(8, 12, 3, padding=1, groups=groups, bias=False, padding_mode=padding_mode).double()
    with torch.no_grad():
        conv.weight.copy_(w)
        expected = conv(x * a)
        conv.weight.copy_(scale_input_channels(w, a, groups))
        got = conv(x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_layer_scale_is_a_scalar_factor():
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(scale_input_channels(w, torch.tensor(0.75, dtype=torch.float64), 1), 0.75 * w)


def test_scale_linear_columns():
    x = torch.rand(5, 6, dtype=torch.float64)
    w = torch.randn(3, 6, dtype=torch.float64)
    a = torch.randn(6, dtype=torch.float64)
    torch.testing.assert_close(x @ scale_linear_columns(w, a).T, (x * a) @ w.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 1, 1, 1), (2, 1, 1, 1), (1, 0, 1, 2), (1, 2, 2, 1), (2, 3, 1, 4), (1, 0, 1, 1)])
def test_unshared_conv_equals_conv_of_elementwise_scaled_input(stride, padding, dilation, groups):
    x = torch.rand(3, 8, 10, 10, dtype=torch.float64)
    a = torch.randn(8, 10, 10, dtype=torch.float64)
    conv = torch.nn.Conv2d(8, 8, 3, stride=stride, padding=padding, dilation=dilation, groups=groups).double()
    with torch.no_grad():
        expected = conv(x * a)
    out_hw = tuple(expected.shape[-2:])
    unshared = UnsharedConv2d.from_conv(conv, a, (10, 10), out_hw, keep_bias=True).double()
    with torch.no_grad():
        unshared.weight.copy_(unshared_conv_weight(conv.weight, a, stride=conv.stride, padding=conv.padding,
                                                   dilation=conv.dilation, groups=groups))
        got = unshared(x)
        got_multistep = unshared(x.unsqueeze(0))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_multistep[0], expected, rtol=1e-12, atol=1e-12)
    assert unshared.weight.numel() == conv.weight.numel() * out_hw[0] * out_hw[1]


def test_unshared_conv_rejects_other_spatial_size():
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    unshared = UnsharedConv2d.from_conv(conv, torch.ones(2, 6, 6), (6, 6), (6, 6), keep_bias=False)
    with pytest.raises(ValueError, match=r"folded for 6x6 inputs, got 8x8"):
        unshared(torch.rand(1, 2, 8, 8))


def test_diagonal_synapse_broadcasts_over_time_and_batch():
    w = torch.randn(4, 1, 1)
    s = (torch.rand(3, 2, 4, 5, 5) > 0.5).float()
    torch.testing.assert_close(DiagonalSynapse(w)(s), s * w)
