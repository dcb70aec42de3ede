"""Sparsified backward passes of conv and linear layers: meProp and ReSprop (``conv`` kinds).

Both leave the forward pass exactly as it is and change what a layer y = W ∗ x + b does
with the gradient G = ∂L/∂y that reaches its output: G is replaced by a sparse (or partly
reused) Ĝ, and the weight and input gradients are computed from Ĝ,

    ∂L/∂W = Ĝ ⋆ x,   ∂L/∂x = Wᵀ ∗ Ĝ,   ∂L/∂b = Σ G        (the bias from the full G),

each as a ``torch.autograd.Function`` around the layer. They are conv kinds because every
architecture builds its conv and linear layers through a :class:`~bench.zoo.convs.ConvFactory`,
so a layer with another backward fits every architecture as a weight reparametrization
does, and a study sweeps ``conv: [standard, meprop, resprop]`` on one axis. The price: a
sparse backward is one ``conv`` choice, so it does not stack with ws, wn, ... in one trial.

- ``meprop``  meProp (Sun, Ren, Ma & Wang, ICML 2017, arXiv:1706.06197). Per example, only
  the k entries of G of largest magnitude are kept: Ĝ = top_k(G), so "only k rows of W
  are modified" (the paper's Fig. 1). A linear layer applies it to each example's output
  vector (each token's, for a ViT). A conv is the same product after im2col, y[:, p] =
  W · patch_p(x) at every position p, each (example, position) one column: top-k is taken
  over the output channels at every position. The conv extension is mePropCNN's (Wei,
  Sun, Ren & Xu 2017, arXiv:1709.05804: "the convolution operation is transformed into
  matrix multiplication operations", only 5% of the gradients passed back); that paper has
  no public code, and its selection axis is read here from that sentence, not checked
  against an implementation. k = ⌈(1 − s)·n⌉ of a layer's n output units for
  ``meprop_sparsity`` s; a layer with k = n backprops densely, as the authors' code does
  for k outside 1 … n − 1. The classifier keeps its full gradient: the authors' MLP gives
  its output layer k = 0, i.e. no selection (lancopku/meProp, ``src/pytorch/model.py``).
  ``meprop_unified`` is the authors' ``linearUnified`` (``src/pytorch/functions.py``;
  their README: unified "to achieve speedups on GPUs"): the same k units for the whole
  batch, those with the largest Σ_b |G_b| (over positions too, for a conv), so the
  products run on the compacted k columns / filters. The default s = 0.95 keeps 5%: the
  README's "fewer than 5% of the weights" and mePropCNN's 5%.
- ``resprop`` ReSprop (Goli & Aamodt, CVPR 2020, "ReSprop: Reuse Sparsified
  Backpropagation"), conv layers only (linear layers keep their backward, as the authors'
  ResNet keeps a plain ``nn.Linear``). The rule is the authors' ``ReSpropconv2d.backward``
  (negargoli/ReSprop, ``models/ReSprop_conv.py``): each layer keeps P, the output
  gradient of one random example of the previous step's batch, and a threshold τ
  (1e-7 at the start). At a step with a stored P,

      ΔG = G − P (P broadcast over the batch),   M = |ΔG| > τ,   Ĝ = P + ΔG ⊙ M,

  the current gradient where it moved by more than τ, the previous one elsewhere; then
  τ ← τ/2 if the density ρ = mean(M) is below its target ρ*, τ ← 2τ if above (the new τ
  serves the next step), and P ← G[r] for a random example r. ρ* = 1 − ``resprop_sparsity``
  (the reuse-sparsity: the share of ΔG that is zero, i.e. reused; default 0.9, the
  paper's "about 90% of gradients are reusable"). The authors' command-line
  ``--sparsity`` is the target density in percent and their code aims 5 points above it
  ("margin"); here the option is the target itself, so their ``--sparsity 10`` is
  ``resprop_sparsity: 0.85``. The first step of every epoch has no P and is dense: an
  epoch ends when the model is switched to evaluation (the trainer evaluates after every
  epoch), which also counts epochs for ``resprop_warmup``, the authors' warm-up (their
  ``--warmup 1``, ``set_warmup``): ρ* = 1 in epochs 0 and 1, max(ρ*, 1 − e/10) in epochs
  e = 2 … 8. Two deviations, both from the authors' set-up rather than the rule: r is
  uniform over the batch (their code draws ``random.randint(1, number_of_layer - 1)``, an
  index bounded by the number of layers), and the last step of an epoch also reuses (they
  skip it because their reuse broadcasts to the full batch size and the last batch may be
  short; the trainer here drops short batches). ``resprop_sparsity: 0`` reuses nothing:
  the layer is a plain conv. The state (P, τ, the epoch count) is in the layer's buffers,
  so a checkpoint carries it.

Wall time. A top-k mask applied to a dense tensor saves no arithmetic: the products that
follow are dense matrix products and convolutions of the full size, plus the selection.
Only the unified meProp computes on fewer units (k of n columns of a linear, k of n
filters of a conv). ReSprop's savings need a kernel that skips the zeros of ΔG (the
paper's accelerator, GSCN); the reused part P is one example's product, computed once.
``benchmarks/sparse_backprop.py`` measures what happens here.

Written here because neither torch nor timm has a layer whose backward sparsifies or
reuses the output gradient; the products are torch's own (``F.linear`` and matrix
products, ``aten.convolution_backward``: the op autograd runs for a conv).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Function

from bench.errors import ConfigError
from bench.zoo.convs import ConvKind
from bench.zoo.registry import CONVS, Option

MEPROP_OPTIONS = (
    Option("meprop_sparsity", float, 0.95, "share of each example's output gradient dropped: k = ⌈(1 − s)·units⌉ kept",
           unit="fraction", ge=0.0, lt=1.0),
    Option("meprop_unified", bool, False, "one top-k set of units for the whole batch (computes on k units only)"),
)
RESPROP_OPTIONS = (
    Option("resprop_sparsity", float, 0.9, "reuse-sparsity: target share of the gradient change ΔG set to zero (reused)",
           unit="fraction", ge=0.0, lt=1.0),
    Option("resprop_warmup", bool, False, "the authors' warm-up: dense in epochs 0–1, density target 1 − e/10 until reached"),
)

RESPROP_THRESHOLD = 1e-7  # τ at the start, per layer: the authors' ``threshold_i`` initial value


def keep_count(units: int, sparsity: float) -> int:
    """k = ⌈(1 − s)·n⌉, at least 1 (rounded to 9 digits first, so 0.05·20 is 1, not 2)."""
    return max(1, math.ceil(round((1.0 - sparsity) * units, 9)))


def top_k_per_example(grad: Tensor, k: int, dim: int) -> Tensor:
    """``grad`` with, in every slice along ``dim``, all but its k entries of largest
    magnitude set to zero (the authors' ``scatter_(-1, indices, dy.gather(-1, indices))``)."""
    idx = grad.abs().topk(k, dim=dim).indices
    return torch.zeros_like(grad).scatter_(dim, idx, grad.gather(dim, idx))


def top_k_units(grad: Tensor, k: int, dim: int) -> Tensor:
    """The k units (indices along ``dim``) with the largest Σ |grad| over every other dim:
    the unified selection (the authors' ``dy.abs().sum(0).topk(k)``)."""
    others = [d for d in range(grad.dim()) if d != dim % grad.dim()]
    return grad.abs().sum(dim=others).topk(k).indices


def conv_backward(
    grad: Tensor, x: Tensor, weight: Tensor, layer: nn.Conv2d, needs: tuple[bool, bool, bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """∂L/∂x, ∂L/∂W and ∂L/∂b of ``layer``'s convolution for the output gradient ``grad``
    (each when ``needs`` says): the op autograd itself runs for a conv, so a dense ``grad``
    gives autograd's gradients exactly."""
    return torch.ops.aten.convolution_backward(
        grad, x, weight, [weight.shape[0]] if needs[2] else None, layer.stride, layer.padding, layer.dilation, False,
        [0, 0], layer.groups, list(needs),
    )


def _cast(t: Tensor | None, like: Tensor | None) -> Tensor | None:
    """A gradient in its input's dtype (under autocast the backward runs in the output's)."""
    return None if t is None or like is None else t.to(like.dtype)


# --------------------------------------------------------------------------------------
# meProp
# --------------------------------------------------------------------------------------


class _MePropLinear(Function):
    """y = x Wᵀ + b forward; backward from top_k(G) per example, or on the k unified units."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, k: int, unified: bool) -> Tensor:
        ctx.save_for_backward(x, weight, bias)
        ctx.k, ctx.unified = k, unified
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        xs, w = x.reshape(-1, x.shape[-1]).to(g.dtype), weight.to(g.dtype)
        grad_x = grad_w = None
        if ctx.unified:
            units = top_k_units(g, ctx.k, dim=1)
            g_k = g.index_select(1, units)
            if ctx.needs_input_grad[0]:
                grad_x = g_k @ w.index_select(0, units)
            if ctx.needs_input_grad[1]:
                grad_w = torch.zeros_like(w).index_copy_(0, units, g_k.t() @ xs)
        else:
            sparse = top_k_per_example(g, ctx.k, dim=1)
            if ctx.needs_input_grad[0]:
                grad_x = sparse @ w
            if ctx.needs_input_grad[1]:
                grad_w = sparse.t() @ xs
        grad_b = g.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
        grad_x = grad_x.reshape(x.shape) if grad_x is not None else None
        return _cast(grad_x, x), _cast(grad_w, weight), _cast(grad_b, bias), None, None


class _MePropConv2d(Function):
    """The layer's conv forward; backward from top_k(G) over channels at every (example,
    position), or with only the k unified filters."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, layer: MePropConv2d) -> Tensor:
        ctx.save_for_backward(x, weight, bias)
        ctx.layer = layer
        return layer._conv_forward(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        layer, needs = ctx.layer, (ctx.needs_input_grad[0], ctx.needs_input_grad[1], False)
        xs, w = x.to(grad.dtype), weight.to(grad.dtype)
        if layer.unified:
            units = top_k_units(grad, layer.keep, dim=1)
            grad_x, grad_w_k, _ = conv_backward(grad.index_select(1, units), xs, w.index_select(0, units), layer, needs)
            grad_w = torch.zeros_like(w).index_copy_(0, units, grad_w_k) if grad_w_k is not None else None
        else:
            grad_x, grad_w, _ = conv_backward(top_k_per_example(grad, layer.keep, dim=1), xs, w, layer, needs)
        grad_b = grad.sum((0, 2, 3)) if bias is not None and ctx.needs_input_grad[2] else None
        return _cast(grad_x, x), _cast(grad_w, weight), _cast(grad_b, bias), None


class MePropLinear(nn.Linear):
    """``nn.Linear`` whose backward keeps the top-k output-gradient entries per example
    (module docstring). ``dense`` (set on the classifier when the model is built) keeps
    the full gradient."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, sparsity: float, unified: bool):
        super().__init__(in_features, out_features, bias=bias)
        self.sparsity, self.unified, self.dense = sparsity, unified, False

    @property
    def keep(self) -> int:
        return keep_count(self.out_features, self.sparsity)

    def forward(self, x: Tensor) -> Tensor:
        if self.dense or self.keep >= self.out_features or not torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        return _MePropLinear.apply(x, self.weight, self.bias, self.keep, self.unified)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", dense" if self.dense else f", keep={self.keep}, unified={self.unified}")


class MePropConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose backward keeps, at every position of every example, the top-k
    output-gradient entries over the channels (module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, *, sparsity: float, unified: bool):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.sparsity, self.unified = sparsity, unified

    @property
    def keep(self) -> int:
        return keep_count(self.out_channels, self.sparsity)

    def forward(self, x: Tensor) -> Tensor:
        if self.keep >= self.out_channels or not torch.is_grad_enabled():
            return self._conv_forward(x, self.weight, self.bias)
        return _MePropConv2d.apply(x, self.weight, self.bias, self)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", keep={self.keep}, unified={self.unified}"


def meprop_prepare(model: nn.Module) -> None:
    """The classifier (:func:`bench.zoo.optimizers.agc.classifier`: the marked one, else the
    last linear layer) keeps its full gradient; a model with no other meProp layer is
    refused, since the choice would change nothing."""
    from bench.zoo.optimizers.agc import classifier

    head = classifier(model)
    if isinstance(head, MePropLinear):
        head.dense = True
    layers = [m for m in model.modules() if isinstance(m, (MePropLinear, MePropConv2d)) and m is not head]
    if not layers:
        raise ConfigError(
            "conv=meprop sparsifies the backward pass of the hidden conv and linear layers, and the classifier keeps "
            "its full gradient (as in the authors' MLP); this model has no layer but its classifier, so meprop would "
            "change nothing. Give the architecture hidden layers (e.g. depth ≥ 1) or leave conv unset."
        )


@CONVS.register(
    "meprop",
    "meProp: backward from the top-k output-gradient entries per example (linears) / per position (convs).",
    paper="Sun, Ren, Ma & Wang 2017, ICML, arXiv:1706.06197",
    options=MEPROP_OPTIONS,
)
def meprop(*, meprop_sparsity: float, meprop_unified: bool) -> ConvKind:
    options = {"sparsity": meprop_sparsity, "unified": meprop_unified}
    return ConvKind(
        conv=lambda cin, cout, kernel_size, stride=1, padding=0, bias=True: MePropConv2d(
            cin, cout, kernel_size, stride=stride, padding=padding, bias=bias, **options
        ),
        linear=lambda fin, fout, bias=True: MePropLinear(fin, fout, bias=bias, **options),
        prepare=meprop_prepare,
    )


# --------------------------------------------------------------------------------------
# ReSprop
# --------------------------------------------------------------------------------------


def resprop_target_density(sparsity: float, warmup: bool, epoch: Tensor) -> Tensor:
    """ρ* for the 0-based ``epoch`` (a 0-d tensor, so no value is read back from the device):
    1 − s, or with the warm-up the authors' ``set_warmup`` without its 5-point margin."""
    target = torch.full_like(epoch, 1.0 - sparsity, dtype=torch.float32)
    if not warmup:
        return target
    ramp = torch.maximum(target, 1.0 - 0.1 * epoch.float())
    return torch.where(epoch < 2, torch.ones_like(target), torch.where(epoch <= 8, ramp, target))


class _ReSpropConv2d(Function):
    """The layer's conv forward; backward from the layer's ReSprop gradient Ĝ."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, layer: ReSpropConv2d) -> Tensor:
        ctx.save_for_backward(x, weight, bias)
        ctx.layer = layer
        return layer._conv_forward(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        used = ctx.layer.reuse(grad)
        bias_needed = bias is not None and ctx.needs_input_grad[2]
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias_needed and used is grad)
        grad_x, grad_w, grad_b = conv_backward(used, x.to(grad.dtype), weight.to(grad.dtype), ctx.layer, needs)
        if bias_needed and used is not grad:  # the bias from the full gradient, as the authors'
            grad_b = grad.sum((0, 2, 3))
        return _cast(grad_x, x), _cast(grad_w, weight), _cast(grad_b, bias), None


class ReSpropConv2d(nn.Conv2d):
    """``nn.Conv2d`` with ReSprop's backward (module docstring). Buffers: ``previous`` (P, one
    example's output gradient; empty when none is stored), ``threshold`` (τ) and
    ``epochs_done`` (epochs ended, for the warm-up), which a checkpoint carries, and
    ``density``, the share of ΔG kept at the last step (1 at a dense step), which it does not."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, *, sparsity: float, warmup: bool):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.sparsity, self.warmup = sparsity, warmup
        self.register_buffer("previous", torch.empty(0))
        self.register_buffer("threshold", torch.tensor(RESPROP_THRESHOLD))
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("density", torch.ones(()), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.sparsity == 0 or not torch.is_grad_enabled():
            return self._conv_forward(x, self.weight, self.bias)
        return _ReSpropConv2d.apply(x, self.weight, self.bias, self)

    def reuse(self, grad: Tensor) -> Tensor:
        """Ĝ for this step's output gradient ``grad``; updates τ and stores P for the next."""
        previous = self.previous.to(grad.dtype)
        used = grad
        self.density.fill_(1.0)
        if previous.shape == grad.shape[1:]:
            diff = grad - previous
            kept = diff.abs() > self.threshold
            used = diff * kept + previous
            density = self.density.copy_(kept.float().mean())
            target = resprop_target_density(self.sparsity, self.warmup, self.epochs_done)
            tau = self.threshold
            self.threshold.copy_(torch.where(density < target, tau / 2, torch.where(density > target, tau * 2, tau)))
        pick = torch.randint(grad.shape[0], (1,), device=grad.device)
        self.previous = grad.detach().index_select(0, pick)[0].to(self.threshold.dtype)
        return used

    def train(self, mode: bool = True) -> ReSpropConv2d:
        if self.training and not mode:  # an epoch ends: the next one starts without P
            self.previous = self.previous.new_empty(0)
            self.epochs_done += 1
        return super().train(mode)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        stored = state_dict.get(prefix + "previous")
        if stored is not None:  # P's shape is the output's, known once a step has run
            self.previous = self.previous.new_empty(stored.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", reuse_sparsity={self.sparsity}, warmup={self.warmup}"


def resprop_prepare(model: nn.Module) -> None:
    """Refuses a model without conv layers: ReSprop acts on convs only."""
    if not any(isinstance(m, ReSpropConv2d) for m in model.modules()):
        raise ConfigError(
            "conv=resprop reuses gradients in conv layers only (linear layers keep their backward, as in the "
            "authors' ResNet), and this model has no conv layer (an mlp has none), so it would change nothing. "
            "Use conv=meprop, which also sparsifies linear layers, or a convolutional architecture."
        )


@CONVS.register(
    "resprop",
    "ReSprop: conv backward reuses the previous step's output gradient where the change is below an adaptive threshold.",
    paper="Goli & Aamodt 2020, CVPR, doi:10.1109/CVPR42600.2020.00162",
    options=RESPROP_OPTIONS,
)
def resprop(*, resprop_sparsity: float, resprop_warmup: bool) -> ConvKind:
    return ConvKind(
        conv=lambda cin, cout, kernel_size, stride=1, padding=0, bias=True: ReSpropConv2d(
            cin, cout, kernel_size, stride=stride, padding=padding, bias=bias, sparsity=resprop_sparsity,
            warmup=resprop_warmup,
        ),
        linear=nn.Linear,
        prepare=resprop_prepare,
    )
