"""meProp and ReSprop: the forward pass unchanged, the backward pinned to the papers' rules
and to the authors' code.

References re-implemented here in torch, from the authors' files:

- meProp: lancopku/meProp, ``src/pytorch/functions.py`` — ``linear.backward`` (top-k per
  example; its dense-mask branch, ``scatter_(-1, indices, dy.gather(-1, indices))``, which
  its sparse-matrix branch computes the same values as) and ``linearUnified.backward``
  (one top-k set per batch from ``dy.abs().sum(0)``); both take the bias gradient from the
  full ``dy``, and no selection when k is not in 1 … n − 1. Their weight is laid out
  (in, out), the transpose of torch's. The conv layer is checked against that same linear
  rule applied to the im2col matrix (mePropCNN, Wei et al. 2017, arXiv:1709.05804, has
  no public code).
- ReSprop: negargoli/ReSprop, ``models/ReSprop_conv.py`` — ``ReSpropconv2d.backward``
  (ΔG = G − P broadcast, mask ``abs(ΔG) > threshold``, Ĝ = ΔG·mask + P, the nonzero
  percentage against ``reuse_sparsity``, threshold halved below it and doubled above it,
  P ← G[x], the bias from the full G, threshold 1e-7 at the start) and ``set_warmup``
  (``sparsity + 5``, the warm-up ramp by epoch).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import ConfigError
from bench.spec import TrialConfig, load_spec
from bench.trial import build_model, run_trial
from bench.zoo.convs import ConvFactory
from bench.zoo.datasets import dataset_source
from bench.zoo.norms import NormFactory
from bench.zoo.registry import ARCHS, CONVS
from bench.zoo.sparse_backprop import (
    RESPROP_THRESHOLD,
    MePropConv2d,
    MePropLinear,
    ReSpropConv2d,
    _MePropLinear,
    keep_count,
    meprop_prepare,
    resprop_target_density,
)

ROOT = Path(__file__).resolve().parent.parent


def grads(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(output, ∂L/∂x, ∂L/∂W, ∂L/∂b) of ``module`` at ``x`` for the output gradient ``g``."""
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(g)
    bias = module.bias.grad if module.bias is not None else None
    return y.detach(), x.grad, module.weight.grad, bias


def twin(layer: torch.nn.Module, plain: torch.nn.Module) -> torch.nn.Module:
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k in ("weight", "bias")})
    return plain


def linear(fin, fout, sparsity, unified=False, bias=True, dtype=torch.float64):
    torch.manual_seed(0)
    return MePropLinear(fin, fout, bias=bias, sparsity=sparsity, unified=unified).to(dtype)


def conv(cin, cout, sparsity, unified=False, bias=True, stride=1, padding=1, dtype=torch.float64):
    torch.manual_seed(0)
    return MePropConv2d(cin, cout, 3, stride=stride, padding=padding, bias=bias, sparsity=sparsity,
                        unified=unified).to(dtype)


def resprop(cin=3, cout=5, sparsity=0.9, warmup=False, bias=True):
    torch.manual_seed(0)
    return ReSpropConv2d(cin, cout, 3, padding=1, bias=bias, sparsity=sparsity, warmup=warmup)


# -- the registry -------------------------------------------------------------------------


def test_entries_declare_their_papers_and_options():
    meprop, resprop_entry = CONVS.entry("meprop"), CONVS.entry("resprop")
    assert "arXiv:1706.06197" in meprop.paper and "ICML" in meprop.paper
    assert "Goli & Aamodt 2020" in resprop_entry.paper and "CVPR" in resprop_entry.paper
    assert meprop.option_names == ("meprop_sparsity", "meprop_unified")
    assert resprop_entry.option_names == ("resprop_sparsity", "resprop_warmup")
    assert [o.default for o in meprop.options] == [0.95, False]
    assert [o.default for o in resprop_entry.options] == [0.9, False]


def test_keep_count_is_the_ceiling_of_the_kept_share():
    assert keep_count(20, 0.95) == 1  # 0.05·20 is 1.0000000000000009 in floating point
    assert keep_count(500, 0.96) == 20  # the ICML paper's top-20 of 500
    assert keep_count(16, 0.95) == 1 and keep_count(32, 0.95) == 2 and keep_count(7, 0.0) == 7
    assert keep_count(3, 0.99) == 1


# -- forward unchanged ----------------------------------------------------------------------


@pytest.mark.parametrize("unified", [False, True])
def test_meprop_layers_compute_the_plain_forward(unified):
    lin = linear(6, 8, 0.75, unified)
    x = torch.randn(4, 6, dtype=torch.float64)
    assert torch.equal(lin(x), twin(lin, torch.nn.Linear(6, 8).double())(x))
    cv = conv(3, 8, 0.75, unified, stride=2)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    assert torch.equal(cv(x), twin(cv, torch.nn.Conv2d(3, 8, 3, stride=2, padding=1).double())(x))


def test_resprop_layer_computes_the_plain_forward_in_training_and_evaluation():
    layer = resprop()
    plain = twin(layer, torch.nn.Conv2d(3, 5, 3, padding=1))
    x = torch.randn(2, 3, 6, 6)
    for _ in range(3):
        y, *_ = grads(layer, x, torch.randn(2, 5, 6, 6))
        assert torch.equal(y, plain(x))
    layer.eval()
    with torch.no_grad():
        assert torch.equal(layer(x), plain(x))


# -- dense at sparsity 0 / k = all ----------------------------------------------------------


@pytest.mark.parametrize("unified", [False, True])
def test_meprop_at_sparsity_zero_is_the_dense_backward_exactly(unified):
    lin = linear(6, 8, 0.0, unified)
    x, g = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    for a, b in zip(grads(lin, x, g), grads(twin(lin, torch.nn.Linear(6, 8).double()), x, g)):
        assert torch.equal(a, b)
    cv = conv(3, 4, 0.0, unified)
    x, g = torch.randn(2, 3, 5, 5, dtype=torch.float64), torch.randn(2, 4, 5, 5, dtype=torch.float64)
    for a, b in zip(grads(cv, x, g), grads(twin(cv, torch.nn.Conv2d(3, 4, 3, padding=1).double()), x, g)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("unified", [False, True])
def test_the_meprop_function_with_k_equal_to_all_units_is_the_dense_gradient(unified):
    """Not only the bypass: the selection itself keeps everything at k = n."""
    torch.manual_seed(1)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 4, dtype=torch.float64)
    sparse = torch.autograd.grad(_MePropLinear.apply(x, w, b, 4, unified), (x, w, b), g)
    dense = torch.autograd.grad(F.linear(x, w, b), (x, w, b), g)
    for a, e in zip(sparse, dense):
        torch.testing.assert_close(a, e)


def test_resprop_at_sparsity_zero_and_at_its_first_step_is_the_dense_backward_exactly():
    x, g = torch.randn(2, 3, 6, 6), torch.randn(2, 5, 6, 6)
    for layer in (resprop(sparsity=0.0), resprop()):  # sparsity 0: a plain conv; else: no P stored yet
        expected = grads(twin(layer, torch.nn.Conv2d(3, 5, 3, padding=1)), x, g)
        for a, e in zip(grads(layer, x, g), expected):
            assert torch.equal(a, e)


# -- meProp: hand-computed top-k ------------------------------------------------------------

G_HAND = torch.tensor([[0.1, -0.5, 0.3, 0.0, 0.2],
                       [-0.4, 0.05, 0.0, 0.6, -0.1]], dtype=torch.float64)


def _hand_layer(unified: bool) -> tuple[MePropLinear, torch.Tensor]:
    lin = linear(3, 5, 0.6, unified)  # k = ⌈0.4·5⌉ = 2
    assert lin.keep == 2
    return lin, torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 3.0]], dtype=torch.float64)


def test_meprop_linear_keeps_the_two_largest_entries_of_each_example():
    lin, x = _hand_layer(unified=False)
    kept = torch.tensor([[0.0, -0.5, 0.3, 0.0, 0.0],  # |−0.5|, |0.3| of row 1
                         [-0.4, 0.0, 0.0, 0.6, 0.0]], dtype=torch.float64)  # |0.6|, |−0.4| of row 2
    _, gx, gw, gb = grads(lin, x, G_HAND)
    torch.testing.assert_close(gx, kept @ lin.weight.detach())
    torch.testing.assert_close(gw, kept.t() @ x)
    torch.testing.assert_close(gb, G_HAND.sum(0))  # the bias from the full gradient
    assert (gw.abs().sum(1) > 0).tolist() == [True, True, True, True, False]  # unit 4 unselected in both rows


def test_unified_meprop_keeps_the_two_units_largest_over_the_batch():
    lin, x = _hand_layer(unified=True)
    # Σ_b |G| per unit: 0.5, 0.55, 0.3, 0.6, 0.3 → units 3 and 1, for both examples
    kept = torch.tensor([[0.0, -0.5, 0.0, 0.0, 0.0],
                         [0.0, 0.05, 0.0, 0.6, 0.0]], dtype=torch.float64)
    _, gx, gw, gb = grads(lin, x, G_HAND)
    torch.testing.assert_close(gx, kept @ lin.weight.detach())
    torch.testing.assert_close(gw, kept.t() @ x)
    assert gw[[0, 2, 4]].abs().sum() == 0
    torch.testing.assert_close(gb, G_HAND.sum(0))


def test_meprop_conv_keeps_the_largest_channel_at_each_position():
    cv = conv(2, 3, 0.7)  # k = ⌈0.3·3⌉ = 1 of 3 channels
    assert cv.keep == 1
    x = torch.randn(1, 2, 1, 2, dtype=torch.float64)
    g = torch.tensor([[[[0.2, 0.3]], [[-0.7, 0.1]], [[0.1, -0.25]]]], dtype=torch.float64)  # (1, 3, 1, 2)
    kept = torch.tensor([[[[0.0, 0.3]], [[-0.7, 0.0]], [[0.0, 0.0]]]], dtype=torch.float64)
    _, gx, gw, gb = grads(cv, x, g)
    xr = x.clone().requires_grad_(True)
    w = cv.weight.detach().clone().requires_grad_(True)
    F.conv2d(xr, w, None, padding=1).backward(kept)  # autograd, on the hand-sparsified gradient
    torch.testing.assert_close(gx, xr.grad)
    torch.testing.assert_close(gw, w.grad)
    torch.testing.assert_close(gb, g.sum((0, 2, 3)))
    assert gw[2].abs().sum() == 0  # channel 2 is never the largest


# -- meProp: the authors' functions ---------------------------------------------------------


def authors_linear_backward(x, w, dy, k):
    """``linear.backward`` of lancopku/meProp src/pytorch/functions.py (w: (in, out))."""
    if 0 < k < w.size(1):
        _, indices = dy.abs().topk(k)
        pdy = torch.zeros_like(dy).scatter_(-1, indices, dy.gather(-1, indices))
        dx, dw = torch.mm(pdy, w.t()), torch.mm(x.t(), pdy)
    else:
        dx, dw = torch.mm(dy, w.t()), torch.mm(x.t(), dy)
    return dx, dw, torch.mv(dy.t(), x.new_ones(x.size(0)))


def authors_linear_unified_backward(x, w, dy, k):
    """``linearUnified.backward`` of the same file."""
    if 0 < k < w.size(1):
        _, inds = dy.abs().sum(0).topk(k)
        inds = inds.view(-1)
        pdy = dy.index_select(-1, inds)
        dx = torch.mm(pdy, w.index_select(-1, inds).t())
        dw = w.new(w.size()).zero_().index_copy_(-1, inds, torch.mm(x.t(), pdy))
    else:
        dx, dw = torch.mm(dy, w.t()), torch.mm(x.t(), dy)
    return dx, dw, torch.mv(dy.t(), x.new_ones(x.size(0)))


@pytest.mark.parametrize("unified", [False, True])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.97])
def test_meprop_linear_equals_the_authors_function(unified, sparsity):
    reference = authors_linear_unified_backward if unified else authors_linear_backward
    lin = linear(12, 40, sparsity, unified)
    torch.manual_seed(2)
    x, g = torch.randn(7, 12, dtype=torch.float64), torch.randn(7, 40, dtype=torch.float64)
    _, gx, gw, gb = grads(lin, x, g)
    dx, dw, db = reference(x, lin.weight.detach().t(), g, keep_count(40, sparsity))
    torch.testing.assert_close(gx, dx)
    torch.testing.assert_close(gw, dw.t())
    torch.testing.assert_close(gb, db)


@pytest.mark.parametrize("unified", [False, True])
def test_meprop_conv_is_the_authors_linear_rule_on_the_im2col_matrix(unified):
    """A conv is W·patch at every position: the authors' linear function, fed the im2col
    rows (one per example and position), gives the conv's weight and input gradients."""
    reference = authors_linear_unified_backward if unified else authors_linear_backward
    cv = conv(3, 10, 0.8, unified, stride=2)
    torch.manual_seed(3)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    g = torch.randn_like(cv(x).detach())
    _, gx, gw, gb = grads(cv, x, g)
    b, c, h, w = g.shape
    cols = F.unfold(x, 3, padding=1, stride=2)  # (B, Cin·9, L)
    rows = cols.transpose(1, 2).reshape(b * h * w, -1)  # one row per (example, position)
    dy = g.permute(0, 2, 3, 1).reshape(b * h * w, c)
    dx_rows, dw, db = reference(rows, cv.weight.detach().reshape(c, -1).t(), dy, cv.keep)
    torch.testing.assert_close(gw, dw.t().reshape_as(cv.weight))
    torch.testing.assert_close(gb, db)
    dx = F.fold(dx_rows.reshape(b, h * w, -1).transpose(1, 2), (7, 7), 3, padding=1, stride=2)
    torch.testing.assert_close(gx, dx)


def test_meprop_runs_under_bf16_autocast_and_returns_gradients_in_the_parameters_dtype():
    lin = linear(8, 16, 0.5, dtype=torch.float32)
    cv = conv(2, 8, 0.5, unified=True, dtype=torch.float32)
    x = torch.randn(3, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = lin(x).float().sum() + cv(torch.randn(2, 2, 5, 5)).float().sum()
    loss.backward()
    assert lin.weight.grad.dtype == torch.float32 and cv.weight.grad.dtype == torch.float32
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


# -- ReSprop: the rule on two steps -----------------------------------------------------------


def test_resprop_reuses_the_previous_gradient_where_the_change_is_below_the_threshold():
    layer = resprop(sparsity=0.9)
    plain = twin(layer, torch.nn.Conv2d(3, 5, 3, padding=1))
    torch.manual_seed(10)
    x1, g1 = torch.randn(4, 3, 6, 6), torch.randn(4, 5, 6, 6)
    x2, g2 = torch.randn(4, 3, 6, 6), torch.randn(4, 5, 6, 6)

    torch.manual_seed(7)
    r = int(torch.randint(4, (1,)))
    torch.manual_seed(7)
    step1 = grads(layer, x1, g1)  # step 1: nothing stored, dense; P ← G1[r]
    for a, e in zip(step1, grads(plain, x1, g1)):
        assert torch.equal(a, e)
    assert torch.equal(layer.previous, g1[r])
    assert layer.threshold.item() == pytest.approx(RESPROP_THRESHOLD)  # τ moves only at a reuse step

    layer.threshold.fill_(0.8)
    previous = g1[r].expand_as(g2)
    moved = (g2 - previous).abs() > 0.8
    expected_g = torch.where(moved, g2, previous)  # Ĝ: the current gradient where it moved, else P
    assert 0.1 < moved.float().mean() < 0.9  # a step that reuses part and keeps part
    _, gx, gw, gb = grads(layer, x2, g2)
    _, ex, ew, _ = grads(plain, x2, expected_g)
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gw, ew)
    torch.testing.assert_close(gb, g2.sum((0, 2, 3)))  # the bias from the full gradient
    # density above the target 1 − 0.9 = 0.1: τ doubles for the next step
    assert layer.density.item() == pytest.approx(moved.float().mean().item())
    assert layer.threshold.item() == pytest.approx(1.6)


def test_resprop_halves_the_threshold_when_fewer_entries_moved_than_its_target():
    layer = resprop(sparsity=0.2)  # target density 0.8
    x, g = torch.randn(2, 3, 6, 6), torch.randn(2, 5, 6, 6)
    grads(layer, x, g)
    layer.threshold.fill_(1.0)
    grads(layer, x, g)  # |G − P| > 1 for well under 80% of the entries
    assert layer.threshold.item() == pytest.approx(0.5)


def test_an_epoch_ends_with_evaluation_and_the_next_starts_dense():
    layer = resprop()
    x, g = torch.randn(2, 3, 6, 6), torch.randn(2, 5, 6, 6)
    grads(layer, x, g)
    assert layer.previous.shape == (5, 6, 6)
    layer.eval()
    layer.eval()  # already evaluating: no second epoch
    layer.train()
    assert layer.previous.numel() == 0 and int(layer.epochs_done) == 1
    for a, e in zip(grads(layer, x, g), grads(twin(layer, torch.nn.Conv2d(3, 5, 3, padding=1)), x, g)):
        assert torch.equal(a, e)


def test_a_checkpointed_layer_resumes_with_its_stored_gradient_threshold_and_epochs():
    layer = resprop(warmup=True)
    torch.manual_seed(4)
    batches = [(torch.randn(2, 3, 6, 6), torch.randn(2, 5, 6, 6)) for _ in range(4)]
    for x, g in batches[:2]:
        grads(layer, x, g)
    layer.eval()
    layer.train()
    grads(layer, *batches[2])
    resumed = resprop(warmup=True)
    resumed.load_state_dict(layer.state_dict())
    assert torch.equal(resumed.previous, layer.previous) and int(resumed.epochs_done) == 1
    assert torch.equal(resumed.threshold, layer.threshold)
    torch.manual_seed(5)
    expected = grads(layer, *batches[3])
    torch.manual_seed(5)
    for a, e in zip(grads(resumed, *batches[3]), expected):
        assert torch.equal(a, e)


# -- ReSprop: the authors' code ---------------------------------------------------------------


class AuthorsReSprop:
    """The rule of ``ReSpropconv2d.backward`` and ``set_warmup`` (negargoli/ReSprop,
    models/ReSprop_conv.py) for one layer; ``sparsity`` is their ``--sparsity`` (a
    percentage), the random example is passed in, and epochs are ended by the caller."""

    def __init__(self, sparsity: int, warmup: int):
        self.sparsity, self.warmup, self.epoch = sparsity, warmup, 0
        self.threshold = torch.tensor([float(1.0 / 10000000)])  # one layer's entry of threshold_i
        self.previous = None

    def set_warmup(self) -> int:
        if self.warmup == 1:
            if self.epoch < 2:
                return 100
            if 1 < self.epoch < 9:
                return self.sparsity + 5 if self.sparsity > 100 - (self.epoch * 10) else 100 - (self.epoch * 10)
            return self.sparsity + 5
        return self.sparsity + 5

    def end_epoch(self) -> None:
        self.epoch += 1
        self.previous = None  # "Make it empty for first iteration of epoch"

    def backward(self, grad_output: torch.Tensor, x: int) -> torch.Tensor:
        final = grad_output
        if self.previous is not None:
            batch = grad_output.size(0)
            grad_output_diff = grad_output - self.previous.expand(batch, -1, -1, -1)
            threshold_matrix = (torch.abs(grad_output_diff) > self.threshold[0]).float()
            grad_output_zero = torch.mul(grad_output_diff, threshold_matrix)
            percentage_of_nonzero = grad_output_zero.nonzero().size(0) * 100 / grad_output.numel()
            reuse_sparsity = self.set_warmup()
            if percentage_of_nonzero < reuse_sparsity:
                self.threshold[0] = float(self.threshold[0]) / float(2)
            elif percentage_of_nonzero > reuse_sparsity:
                self.threshold[0] = float(self.threshold[0]) * float(2)
            final = grad_output_zero + self.previous.expand(batch, -1, -1, -1)
        self.previous = grad_output[x]
        return final


@pytest.mark.parametrize("warmup", [0, 1])
@pytest.mark.parametrize("their_sparsity", [10, 45])
def test_resprop_follows_the_authors_rule_over_epochs(warmup, their_sparsity):
    """Their ``--sparsity S`` aims at S + 5 percent nonzero: resprop_sparsity = 1 − (S + 5)/100."""
    layer = resprop(sparsity=1 - (their_sparsity + 5) / 100, warmup=bool(warmup))
    plain = twin(layer, torch.nn.Conv2d(3, 5, 3, padding=1))
    reference = AuthorsReSprop(their_sparsity, warmup)
    torch.manual_seed(11)
    drift = torch.randn(5, 6, 6)
    thresholds = []
    for epoch in range(11):  # the warm-up's three phases: epochs 0–1, 2–8, 9 on
        for step in range(2):
            x = torch.randn(4, 3, 6, 6)
            g = drift + 1e-6 * (1 + step) * torch.randn(4, 5, 6, 6)  # gradients that move slowly, as trained ones
            seed = 100 * epoch + step
            torch.manual_seed(seed)
            r = int(torch.randint(4, (1,)))
            expected_g = reference.backward(g, r)
            torch.manual_seed(seed)
            _, gx, gw, gb = grads(layer, x, g)
            _, ex, ew, _ = grads(plain, x, expected_g)
            torch.testing.assert_close(gx, ex)
            torch.testing.assert_close(gw, ew)
            torch.testing.assert_close(gb, g.sum((0, 2, 3)))
            assert layer.threshold.item() == reference.threshold.item()
            thresholds.append(layer.threshold.item())
        layer.eval()
        layer.train()
        reference.end_epoch()
    assert len(set(thresholds)) > 3  # the controller moved τ both ways over the run


def test_resprop_warmup_targets_are_the_authors_without_their_margin():
    for epoch in range(14):
        reference = AuthorsReSprop(10, 1)
        reference.epoch = epoch
        ours = resprop_target_density(0.85, True, torch.tensor(epoch)).item()
        assert ours == pytest.approx(reference.set_warmup() / 100)
    assert resprop_target_density(0.9, False, torch.tensor(0)).item() == pytest.approx(0.1)


# -- in the models ------------------------------------------------------------------------------


def _config(**values) -> TrialConfig:
    return TrialConfig(**{"dataset": "synthetic", "arch": "cnn", "width": 4, "depth": 2, **values})


@pytest.mark.parametrize("arch", ["cnn", "mlp", "vgg", "resnet", "vit"])
def test_meprop_classifier_keeps_its_full_gradient_in_every_architecture(arch):
    norm = "ln" if arch == "vit" else "bn"
    model = build_model(_config(arch=arch, conv="meprop", norm=norm, width=None, depth=None),
                        dataset_source("synthetic"))
    layers = [m for m in model.modules() if isinstance(m, (MePropLinear, MePropConv2d))]
    dense = [m for m in layers if getattr(m, "dense", False)]
    assert len(dense) == 1 and dense[0].out_features == 10
    assert len(layers) > 1


def test_resprop_replaces_every_conv_and_no_linear():
    model = build_model(_config(arch="resnet", conv="resprop", width=None, depth=None), dataset_source("synthetic"))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(isinstance(m, ReSpropConv2d) for m in convs)
    assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_a_model_the_kind_cannot_act_on_is_refused():
    with pytest.raises(ConfigError, match="conv=resprop reuses gradients in conv layers only"):
        build_model(_config(arch="mlp", conv="resprop"), dataset_source("synthetic"))
    logistic = ARCHS.get("mlp")(in_channels=1, num_classes=10, image_size=8, norm=NormFactory("none"),
                                conv=ConvFactory("meprop"), depth=0)  # a plugin's model may be one linear
    with pytest.raises(ConfigError, match="this model has no layer but its classifier"):
        meprop_prepare(logistic)


@pytest.mark.parametrize(("sets", "expect"), [
    (["arch=mlp", "conv=resprop"], "conv=resprop reuses gradients in conv layers only"),
    (["conv=meprop", "meprop_sparsity=1"], "meprop_sparsity must be a number ≥ 0 and < 1"),
    (["conv=resprop", "resprop_sparsity=-0.1"], "resprop_sparsity must be a number ≥ 0 and < 1"),
    (["conv=resprop", "meprop_unified=true"], "`meprop_unified` does nothing for conv=resprop"),
])
def test_bench_train_refuses_mistakes_in_one_paragraph(sets, expect):
    args = ["train", "--no-save", "--set", "dataset=synthetic", "--set", "epochs=1"]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and expect in " ".join(result.output.split()), result.output


SPARSE_KINDS = [{"conv": "meprop", "meprop_sparsity": 0.5}, {"conv": "meprop", "meprop_unified": True}, {"conv": "resprop"}]


@pytest.mark.parametrize("norm", ["bn", "none"])
@pytest.mark.parametrize("arch", ["cnn", "resnet", "mlp"])
@pytest.mark.parametrize("kind", SPARSE_KINDS, ids=["meprop", "meprop-unified", "resprop"])
def test_every_architecture_trains_with_a_sparse_backward(kind, arch, norm):
    """As tests/test_convs.py trains the other kinds: 8 Adam steps on a 4-class batch."""
    if arch == "mlp" and kind["conv"] == "resprop":
        pytest.skip("refused: the mlp has no conv layer")
    torch.manual_seed(0)
    source = dataset_source("synthetic")
    model = build_model(_config(arch=arch, norm=norm, width=8, depth=None, **kind), source)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("conv_name", ["meprop", "resprop"])
def test_a_trial_trains_with_a_sparse_backward(conv_name):
    config = _config(conv=conv_name, epochs=2, batch_size=16, train_subset=64, val_subset=32, lr=0.05)
    result = run_trial(config)
    assert result.status == "completed", result.error
    assert all(math.isfinite(e["train_loss"]) for e in result.epochs)


def test_every_conv_kind_builds_through_the_factory_with_its_options():
    kind = ConvFactory("meprop", (("meprop_sparsity", 0.5), ("meprop_unified", True))).kind
    layer = kind.linear(4, 6)
    assert isinstance(layer, MePropLinear) and layer.keep == 3 and layer.unified
    layer = ConvFactory("resprop", (("resprop_sparsity", 0.75),)).kind.conv(2, 4, 3, padding=1)
    assert isinstance(layer, ReSpropConv2d) and layer.sparsity == 0.75 and not layer.warmup


def test_the_benchmark_script_runs_and_prints_its_tables(capsys):
    """Its figures are not asserted: speed belongs in the benchmark, not in tests."""
    spec = importlib.util.spec_from_file_location("sparse_backprop_benchmark", ROOT / "benchmarks" / "sparse_backprop.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--dataset", "synthetic", "--batch-sizes", "8", "--sparsities", "0.9", "--steps", "7",
                 "--check-every", "6", "--width-cnn", "4", "--width-mlp", "16", "--kernel-repeats", "1", "--val-subset", "40"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("cnn", "mlp"))]
    assert [r[2] for r in rows] == ["standard", "meprop", "meprop-unified", "resprop", "standard", "meprop", "meprop-unified"]
    assert all(0 < float(r[6]) <= 1 and -1 <= float(r[7]) <= 1 for r in rows)  # kernel share, cosine
    assert "CSR / dense" in out


# -- trial ids --------------------------------------------------------------------------------


def test_existing_trial_ids_are_unchanged():
    golden = json.loads((ROOT / "tests" / "golden" / "trial-ids.json").read_text())
    for study in ("norm-zoo", "norm-vs-batch"):  # norm-zoo crosses the norms with conv kinds
        spec = load_spec(ROOT / "ablations" / f"{study}.yaml")
        assert [c.trial_id for c in spec.expand()] == golden[spec.key]
    default = TrialConfig()
    assert not {k for k in default.canonical() if k.startswith(("meprop_", "resprop_"))}
    assert TrialConfig(conv="meprop").trial_id != TrialConfig(conv="meprop", meprop_sparsity=0.9).trial_id
    assert TrialConfig(conv="meprop").trial_id == TrialConfig(conv="meprop", meprop_sparsity=0.95).trial_id
