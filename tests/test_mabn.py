"""Moving Average BatchNorm against the authors' implementation, step by step.

The reference is the authors' formal definition (megvii-model/MABN, ``MABN.py``:
``BatchNormFunction.forward``/``backward`` and ``MABN2d``), re-implemented here in NumPy
from that source: iteration counter incremented before each training forward pass, the
buffers ``buffer_x2``/``buffer_gz`` written at slot ``iter % buffer_size``, batch statistics
while ``iter <= buffer_size or iter < warmup_iters``, r clamped to 1 while
``iter <= max(1000, warmup_iters)`` (1000 is ``mabn_renorm_start`` here) and to [1/5, 5]
after, ``running_var ← momentum·running_var + (1 − momentum)·var`` after r, inference
``x / sqrt(running_var + eps)``. Its momentum is 1 − ``mabn_momentum``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.spec import DEFAULTS, TrialConfig
from bench.zoo.norms import NORMS, NormFactory
from bench.zoo.norms.mabn import MovingAverageBatchNorm

C = 3


class AuthorsMABN:
    """The authors' MABN2d + BatchNormFunction in NumPy, (N, C, H, W) float64."""

    def __init__(self, channels, buffer_size, warmup_iters, momentum, eps, renorm_start=1000, rmax=5.0):
        self.m, self.warmup, self.momentum, self.eps = buffer_size, warmup_iters, momentum, eps
        self.renorm_start, self.rmax = renorm_start, rmax
        self.running_var = np.ones(channels)
        self.buffer_x2 = np.zeros((buffer_size, channels))
        self.buffer_gz = np.zeros((buffer_size, channels))
        self.iters = 0

    def _cold(self, it):
        return it <= self.m or it < self.warmup

    def train_step(self, x, weight, bias, grad_output):
        self.iters += 1
        it = self.iters
        c = lambda v: v.reshape(1, -1, 1, 1)  # noqa: E731
        # forward
        x2 = (x * x).mean(axis=(0, 2, 3))
        self.buffer_x2[it % self.m] = x2
        var = x2 if self._cold(it) else self.buffer_x2.mean(axis=0)
        z = x / np.sqrt(c(var) + self.eps)
        r = np.sqrt(var + self.eps) / np.sqrt(self.running_var + self.eps)
        r = np.clip(r, 1, 1) if it <= max(self.renorm_start, self.warmup) else np.clip(r, 1 / self.rmax, self.rmax)
        y = c(r) * z
        self.running_var = self.momentum * self.running_var + (1 - self.momentum) * var
        out = c(weight) * y + c(bias)
        # backward
        g = grad_output * c(weight) * c(r)
        gz = (g * z).mean(axis=(0, 2, 3))
        self.buffer_gz[it % self.m] = gz
        mean_gz = gz if self._cold(it) else self.buffer_gz.mean(axis=0)
        gx = 1.0 / np.sqrt(c(var) + self.eps) * (g - z * c(mean_gz))
        return out, gx, (grad_output * y).sum(axis=(0, 2, 3)), grad_output.sum(axis=(0, 2, 3))

    def eval(self, x, weight, bias):
        c = lambda v: v.reshape(1, -1, 1, 1)  # noqa: E731
        return c(weight) * x / np.sqrt(c(self.running_var) + self.eps) + c(bias)


def _batches(steps, seed=0, n=2):
    rng = np.random.default_rng(seed)
    # the activations drift and change scale, so the moving averages differ from the batch's
    return [(rng.normal(0.3 * s, 1.0 + 0.4 * s, (n, C, 4, 5)), rng.normal(0, 1, (n, C, 4, 5))) for s in range(steps)]


@pytest.mark.parametrize(
    ("buffer_size", "warmup", "renorm_start", "rmax"),
    [(3, 4, 6, 1.3), (4, 0, 2, 5.0), (2, 7, 0, 2.0)],
    ids=["warmup-then-sma-then-renorm", "no-warmup", "warmup-longer-than-buffer"],
)
def test_forward_backward_and_statistics_match_the_authors_code(buffer_size, warmup, renorm_start, rmax):
    momentum, eps, steps = 0.9, 1e-5, 12
    rng = np.random.default_rng(1)
    weight, bias = rng.uniform(0.5, 1.5, C), rng.normal(0, 0.2, C)
    ref = AuthorsMABN(C, buffer_size, warmup, momentum, eps, renorm_start=renorm_start, rmax=rmax)
    layer = MovingAverageBatchNorm(C, buffer_size=buffer_size, warmup=warmup, momentum=1 - momentum, rmax=rmax,
                                   renorm_start=renorm_start, eps=eps).double()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(bias))
    clipped = 0
    for x, grad in _batches(steps):
        out, gx, gw, gb = ref.train_step(x, weight, bias, grad)
        xt = torch.tensor(x, requires_grad=True)
        layer.weight.grad = layer.bias.grad = None
        y = layer(xt)
        y.backward(torch.from_numpy(grad))
        np.testing.assert_allclose(y.detach().numpy(), out, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(xt.grad.numpy(), gx, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.weight.grad.numpy(), gw, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.bias.grad.numpy(), gb, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.running_var.numpy(), ref.running_var, rtol=1e-12)
        clipped += int(layer.steps > max(renorm_start, warmup))
    assert clipped > 0 and layer.steps == steps  # the renormalized phase was reached
    x = _batches(1, seed=5)[0][0]
    layer.eval()
    np.testing.assert_allclose(layer(torch.from_numpy(x)).detach().numpy(), ref.eval(x, weight, bias), rtol=1e-10)


def test_during_warmup_the_gradient_is_that_of_the_centring_free_normalization():
    """While the batch's own statistics are used (and r = 1), MABN is y = γ x/√(mean(x²)+ε) + β
    and its hand-written backward equals autograd's gradient of that expression."""
    torch.manual_seed(0)
    layer = MovingAverageBatchNorm(C, buffer_size=4, warmup=10).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    for _ in range(3):
        x = (torch.randn(4, C, 3, 3, dtype=torch.float64) * 2 + 1).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        grad = torch.randn(4, C, 3, 3, dtype=torch.float64)
        layer(x).backward(grad)
        w, b = layer.weight.detach().view(1, -1, 1, 1), layer.bias.detach().view(1, -1, 1, 1)
        ref = w * x_ref / torch.sqrt(x_ref.square().mean(dim=(0, 2, 3), keepdim=True) + 1e-5) + b
        ref.backward(grad)
        torch.testing.assert_close(x.grad, x_ref.grad)
    # and torch's own checker agrees on the hand-written backward in the warm-up
    fresh = MovingAverageBatchNorm(2, buffer_size=100, warmup=100).double()
    assert torch.autograd.gradcheck(lambda t: fresh(t), (torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True),))


def test_after_the_warmup_the_forward_uses_the_moving_averages():
    """With r unclipped (r_max large), r·z = x/√(ψ² + ε): the forward pass normalizes with the
    running second moment ψ² from before the step, not with this batch's statistics."""
    layer = MovingAverageBatchNorm(C, buffer_size=2, warmup=0, renorm_start=0, rmax=1e6, affine=False).double()
    for x, _ in _batches(4):
        before = layer.running_var.clone()
        y = layer(torch.from_numpy(x))
        np.testing.assert_allclose(y.detach().numpy(), x / np.sqrt(before.numpy().reshape(1, -1, 1, 1) + 1e-5),
                                   rtol=1e-10)


def test_vector_features_steps_survive_a_state_dict_and_the_defaults_are_the_authors():
    layer = NormFactory("mabn")(C, dims=1).double()
    assert (layer.buffer_size, layer.warmup, layer.momentum, layer.rmax, layer.renorm_start) == (16, 100, 0.02, 5.0, 1000)
    x = torch.randn(8, C, dtype=torch.float64, requires_grad=True)
    for _ in range(3):
        layer(x).sum().backward()
    assert x.grad.shape == x.shape and torch.isfinite(x.grad).all()
    copy = NormFactory("mabn")(C, dims=1).double()
    copy.load_state_dict(layer.state_dict())
    assert copy.steps == 3 and torch.equal(copy.buffer_x2, layer.buffer_x2)
    pinned = {"mabn_buffer": 16, "mabn_warmup": 100, "mabn_momentum": 0.02, "mabn_rmax": 5.0, "mabn_renorm_start": 1000}
    assert {k: DEFAULTS[k] for k in pinned} == pinned
    entry = NORMS.entry("mabn")
    assert "batch" in entry.tags and "2001.06838" in entry.paper


def test_mabn_with_centred_convs_trains_through_the_trial_loop():
    from bench.trial import run_trial

    config = TrialConfig(dataset="synthetic", arch="cnn", width=8, depth=2, epochs=2, batch_size=16, lr_scaling="none",
                         lr=0.05, norm="mabn", conv="centered", mabn_buffer=2, mabn_warmup=3, mabn_renorm_start=5)
    result = run_trial(config)
    assert result.status == "completed", result.error
