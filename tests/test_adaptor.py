"""Adaptors: shapes, exact parameter counts, the forward each kind documents, output_scale, width checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from speechllm.config import AdaptorConfig
from speechllm.model.adaptor import Adaptor, LinearAdaptor, MLPAdaptor, SwiGLUAdaptor

D_IN, HIDDEN, D_OUT = 8, 12, 16


def _adaptor(kind: str, output_scale: float = 1.0, seed: int = 0) -> Adaptor:
    torch.manual_seed(seed)
    return Adaptor(AdaptorConfig(kind=kind, hidden_dim=HIDDEN, output_scale=output_scale), D_IN, D_OUT)


@pytest.mark.parametrize(
    ("kind", "cls", "n_params"),
    [
        ("linear", LinearAdaptor, D_IN * D_OUT + D_OUT),  # 144
        ("mlp", MLPAdaptor, D_IN * HIDDEN + HIDDEN + HIDDEN * D_OUT + D_OUT),  # 316
        ("swiglu", SwiGLUAdaptor, D_IN + 2 * D_IN * HIDDEN + HIDDEN * D_OUT),  # 392: norm gain, gate, up, down
    ],
)
def test_kind_shape_and_parameter_count(kind, cls, n_params):
    adaptor = _adaptor(kind)
    assert isinstance(adaptor.net, cls)
    assert sum(p.numel() for p in adaptor.parameters()) == n_params
    assert adaptor(torch.randn(2, 5, D_IN)).shape == (2, 5, D_OUT)
    assert adaptor(torch.randn(3, D_IN)).shape == (3, D_OUT)  # any leading dims


def test_parameter_counts_written_out():
    counts = {k: sum(p.numel() for p in _adaptor(k).parameters()) for k in ("linear", "mlp", "swiglu")}
    assert counts == {"linear": 144, "mlp": 316, "swiglu": 392}


def test_linear_forward():
    adaptor = _adaptor("linear")
    x = torch.randn(2, 3, D_IN)
    p = adaptor.net.proj
    torch.testing.assert_close(adaptor(x), x @ p.weight.T + p.bias)


def test_mlp_is_linear_relu_linear():
    adaptor = _adaptor("mlp")
    x = torch.randn(2, 3, D_IN)
    n = adaptor.net
    expected = torch.relu(x @ n.fc1.weight.T + n.fc1.bias) @ n.fc2.weight.T + n.fc2.bias
    torch.testing.assert_close(adaptor(x), expected)


def test_swiglu_is_rmsnorm_then_gated_mlp():
    adaptor = _adaptor("swiglu")
    n = adaptor.net
    with torch.no_grad():
        n.norm.weight.copy_(torch.linspace(0.5, 1.5, D_IN))  # a non-trivial gain
    x = torch.randn(2, 3, D_IN) * 3
    eps = torch.finfo(torch.float32).eps  # nn.RMSNorm's default
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * n.norm.weight
    expected = (F.silu(h @ n.gate.weight.T) * (h @ n.up.weight.T)) @ n.down.weight.T
    torch.testing.assert_close(adaptor(x), expected)


@pytest.mark.parametrize("kind", ["linear", "mlp", "swiglu"])
def test_output_scale_multiplies_the_output(kind):
    x = torch.randn(2, 4, D_IN)
    plain = _adaptor(kind)(x)
    scaled = _adaptor(kind, output_scale=0.25)(x)  # same seed: same weights
    torch.testing.assert_close(scaled, plain * 0.25)
    assert not torch.equal(scaled, plain)


@pytest.mark.parametrize("kind", ["linear", "mlp", "swiglu"])
def test_width_mismatch_raises_with_both_widths(kind):
    with pytest.raises(ValueError, match=r"inputs of width 8, got shape \(2, 5, 7\)"):
        _adaptor(kind)(torch.randn(2, 5, 7))


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match=r"adaptor.kind must be one of \['linear', 'mlp', 'swiglu'\], got 'conv'"):
        AdaptorConfig(kind="conv")
    config = AdaptorConfig()
    config.kind = "conv"  # past the config's own check
    with pytest.raises(ValueError, match="unknown adaptor kind 'conv'"):
        Adaptor(config, D_IN, D_OUT)


def test_gradients_reach_every_parameter():
    for kind in ("linear", "mlp", "swiglu"):
        adaptor = _adaptor(kind)
        adaptor(torch.randn(2, 3, D_IN)).pow(2).sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adaptor.parameters()), kind
