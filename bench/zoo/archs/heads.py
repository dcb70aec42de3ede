"""Classifier heads: how a convolutional architecture turns its final feature maps into
logits (the ``head`` option of cnn, resnet, vgg and nf-resnet).

The head sees the last feature maps x ∈ R^{C×H×W} of an image, x_l ∈ R^C at each of its
L = H·W locations, and gives one logit per class:

- ``gap`` (the default, and what these architectures always had): global average pooling
  and a linear classifier, y = b + W·(1/L) Σ_l x_l.

- ``bilinear``: bilinear pooling (Lin, RoyChowdhury & Maji, ICCV 2015, "Bilinear CNN
  Models for Fine-grained Visual Recognition", arXiv:1504.07889), the symmetric B-CNN whose
  two streams share one network: the outer products of the local features averaged over
  the locations, a signed square root, L2 normalization and a linear classifier,

      B = (1/L) Σ_l x_l x_lᵀ ∈ R^{C×C},   z = sign(B) ⊙ √|B|,   y = b + W · z / ‖z‖₂,

  W ∈ R^{classes × C²}. As in the authors' PyTorch code (cvl-umass/bilinear-cnn,
  ``BCNN.py``: ``TensorProduct.forward`` divides the pooled products by h·w, and
  ``BCNNModule.forward`` normalizes), the signed square root is
  √(max(B, 0) + ε) − √(max(−B, 0) + ε) with ε = 1e-5: equal to sign(B)√|B| up to √ε ≈
  0.003 where |B| ≫ ε, and differentiable at B = 0, where sign(B)√|B| has an infinite
  derivative (the products of ReLU features are often exactly 0); then
  ``torch.nn.functional.normalize`` (‖z‖₂ floored at 1e-12). The linear layer is built like
  the gap head's, through the architecture's conv factory, with C² inputs (4,096 for a
  64-channel ResNet).

- ``factorized``: the Factorized Bilinear (FB) layer with DropFactor (Li, Wang, Liu & Hou,
  ICCV 2017, "Factorized Bilinear Models for Image Recognition", arXiv:1611.05709), applied
  as the authors apply it to CIFAR networks (lyttonhao/Factorized-Bilinear-Network,
  ``cifar/symbol_resnet-small-fmconv.py``: a 1×1 FB "convolution" at every location, added
  to a 1×1 linear convolution, then global average pooling). For class o, with k factors
  F_o ∈ R^{k×C} (rank k, ``head_rank``; f_{o,c} its column c),

      y_o = b_o + w_oᵀ x̄ + (1/L) Σ_l Σ_f d_f [ (F_{o,f}·x_l)² − Σ_c F_{o,f,c}² x_{l,c}² ]
          = b_o + w_oᵀ x̄ + (1/L) Σ_l Σ_{c≠c'} ⟨f_{o,c}, f_{o,c'}⟩_d x_{l,c} x_{l,c'},

  x̄ the mean over locations: the paper's quadratic term xᵀF_oᵀF_o x of rank k, with the
  self-interactions x_c² left out, as the authors' kernels compute it (lyttonhao/mxnet,
  ``src/operator/fm_convolution3-inl.h`` and ``fm_convolution1-inl.h``, ``Forward``:
  ``temp3 = sum_rows(mask_w * mask_w) · x²`` subtracted from xᵀMᵀMx). d_f weighs factor f:
  DropFactor drops each factor (one "bilinear path", the same for every class and every
  image of the batch: the kernels draw one mask of ``num_factor`` values per forward pass)
  with probability p = ``head_drop_factor`` in training, d_f ∈ {0, 1}, and at evaluation
  every path is present and the quadratic term is multiplied by the keep probability,
  d_f = 1 − p (the paper's Figure 1: "(b) Each bilinear path is retained with probability
  p at training time. (c) At testing time, each bilinear path is always present and the
  output is multiplied by p", p there the keep probability). So the evaluation output is
  the expectation of the training one. The authors' kernels scale differently: their mask
  multiplies the factor weights by 1/√(1 − p) in training and by √(1 − p) at test, so the
  quadratic term by 1/(1 − p) and 1 − p, whose training expectation is 1/(1 − p) times the
  test value; the paper's rule is followed here. The defaults are the authors' CIFAR
  settings (``cifar/run.sh``, README: ``--fmconv-factor 20 --fmconv-drop 0.5``). F starts at
  N(0, 2/(k·C)), the authors' initializer (``train_cifar.py``: Xavier, gaussian, fan-in,
  magnitude 2, over the kernel's weight of shape (classes, k, C, 1, 1)); the linear part
  b + Wx̄ is the architecture's own classifier (same layer, same init as the gap head), so
  the head differs from gap exactly by the quadratic term. The authors' recipe around the
  layer is not part of the head: their CIFAR FB networks end in tanh instead of the final
  ReLU, and start the learning rate at 0.1× for 3 epochs (``--fmconv-slowstart``; here
  ``warmup_epochs`` does that). Under bf16/fp16 autocast the quadratic term is computed in
  single precision: it is a difference of two sums of squares, which half precision would
  cancel badly.

Hand-written: torch has no bilinear-pooling or factorized-bilinear layer (``nn.Bilinear``
is a full-rank x₁ᵀA x₂ per output, C²·classes weights without the pooling and the
normalizations); timm and torchvision have neither.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.zoo.convs import ConvFactory
from bench.zoo.registry import Option

HEADS = ("gap", "bilinear", "factorized")
SIGNED_SQRT_EPS = 1e-5  # the authors' BCNN.py: sqrt(relu(z) + 1e-5) - sqrt(relu(-z) + 1e-5)

HEAD = Option(
    "head", str, "gap", "the classifier on the final feature maps: gap (global average pool + linear), bilinear "
    "(B-CNN, Lin et al. 2015, arXiv:1504.07889: mean outer product, signed sqrt, L2 normalization, linear), "
    "factorized (FB layer with DropFactor, Li et al. 2017, arXiv:1611.05709)",
    choices=HEADS,
)
HEAD_RANK = Option("head_rank", int, 20, "factorized head: k, the factors of each class's bilinear form (its rank)",
                   ge=1, when="head=factorized")
HEAD_DROP_FACTOR = Option(
    "head_drop_factor", float, 0.5, "factorized head: DropFactor, the probability that a factor is dropped in a "
    "training step (evaluation keeps every factor and scales the quadratic term by 1 − rate)",
    ge=0, lt=1, when="head=factorized",
)
HEAD_OPTIONS = (HEAD, HEAD_RANK, HEAD_DROP_FACTOR)


class BilinearPooling(nn.Module):
    """(B, C, H, W) → (B, C²): the mean over the H·W locations of x_l x_lᵀ, signed square
    root, L2 normalization (Lin et al. 2015; see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        z = torch.bmm(flat, flat.transpose(1, 2)).reshape(b, c * c) / (h * w)
        z = torch.sqrt(F.relu(z) + SIGNED_SQRT_EPS) - torch.sqrt(F.relu(-z) + SIGNED_SQRT_EPS)
        return F.normalize(z, dim=1)


class FactorizedBilinear(nn.Module):
    """(B, C, H, W) → (B, classes): the FB layer at every location, averaged over the
    locations, with DropFactor (Li et al. 2017; see the module docstring). ``linear`` is
    the linear part b + W·x̄, ``factors`` the F_o of shape (classes, k, C)."""

    is_classifier = True  # the whole head is the classifier (adaptive gradient clipping leaves it out)

    def __init__(self, channels: int, num_classes: int, rank: int, drop_rate: float, conv: ConvFactory):
        super().__init__()
        self.linear = conv.linear(channels, num_classes)
        self.factors = nn.Parameter(torch.randn(num_classes, rank, channels) * math.sqrt(2.0 / (rank * channels)))
        self.drop_rate = drop_rate

    def path_weights(self) -> Tensor:
        """d_f for each factor: kept (1) or dropped (0) with probability ``drop_rate``, one draw
        per training forward pass; 1 − ``drop_rate`` for every factor at evaluation."""
        keep = 1.0 - self.drop_rate
        full = self.factors.new_full((self.factors.shape[1],), keep)
        return torch.bernoulli(full) if self.training and self.drop_rate > 0 else full

    def quadratic(self, x: Tensor, weights: Tensor) -> Tensor:
        """(1/L) Σ_l Σ_f d_f [(F_{o,f}·x_l)² − Σ_c F_{o,f,c}² x_{l,c}²], shape (B, classes)."""
        flat = x.flatten(2)  # (B, C, L)
        projections = torch.einsum("okc,bcl->bokl", self.factors, flat)
        full = torch.einsum("bokl,k->bol", projections.square(), weights)
        diagonal = torch.einsum("okc,k,bcl->bol", self.factors.square(), weights, flat.square())
        return (full - diagonal).mean(dim=2)

    def forward(self, x: Tensor) -> Tensor:
        # The quadratic term is a difference of two sums of squares: in half precision (autocast)
        # it would cancel badly, so it is computed in at least single precision.
        with torch.autocast(x.device.type, enabled=False):
            wide = x.to(torch.promote_types(x.dtype, torch.float32))
            quadratic = self.quadratic(wide, self.path_weights().to(wide.dtype))
        return self.linear(x.mean(dim=(2, 3))) + quadratic

    def extra_repr(self) -> str:
        classes, rank, channels = self.factors.shape
        return f"channels={channels}, classes={classes}, rank={rank}, drop_rate={self.drop_rate}"


def head_layers(
    channels: int, num_classes: int, conv: ConvFactory, *, head: str = HEAD.default, head_rank: int = HEAD_RANK.default,
    head_drop_factor: float = HEAD_DROP_FACTOR.default,
) -> list[nn.Module]:
    """The layers from the final (B, C, H, W) feature maps to the logits, in order; the last
    one is the classifier (see :func:`classifier_linear`). ``gap`` gives exactly the layers
    the architectures always ended with: AdaptiveAvgPool2d(1), Flatten, linear."""
    if head == "gap":
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), conv.linear(channels, num_classes)]
    if head == "bilinear":
        return [BilinearPooling(), conv.linear(channels * channels, num_classes)]
    if head == "factorized":
        return [FactorizedBilinear(channels, num_classes, head_rank, head_drop_factor, conv)]
    raise ConfigError(f"head must be one of {', '.join(HEADS)}; got head={head!r}.")


def classifier_linear(classifier: nn.Module) -> nn.Module:
    """The linear layer of a head's classifier (the last of :func:`head_layers`): the layer
    itself, or the linear part of the factorized head (architectures initialize it)."""
    return classifier.linear if isinstance(classifier, FactorizedBilinear) else classifier
