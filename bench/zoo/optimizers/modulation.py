"""Backward error modulation (Xie, Xiong & Pu 2017, "All You Need is Beyond a Good Init:
Exploring Better Solution for Training Extremely Deep Convolutional Neural Networks with
Orthonormality and Modulation", CVPR, arXiv:1703.01827, §3.3): ``error_modulation``.

In a deep plain network the error the backward pass hands each conv layer's output,
δ^l = ∂L/∂y^l, shrinks (or grows) from layer to layer. Assuming the map between two
consecutive parametric layers is a quasi-isometry, the paper rescales it: "we compute the
second order moment statistics of output errors between consecutive parametric layers
(convolutional layer in our case) in each iteration. The scale factor ρ is defined as the
square root of ratio of second order moment of higher layer, say q^{l+1}, to that, say
q^l, of lower layer":

    q^l = mean(δ^l²),   ρ = √(q^{l+1} / q^l),   δ^l ← ρ · δ^l,

which gives the lower layer's error the higher one's second moment; the scaled error is
what flows into the layer's weight gradient and on down the network, so the paper reads
it as "assigning each parametric layer an individual and adaptive learning rate".
Modulating every layer whose q differs would make every error as large as the top
layer's, which "probably eliminate[s] the variety encoded in the error signal", so the
paper modulates only "when the magnitudes of propagated signals of consecutive layers
mismatch". The tolerance τ = ``error_modulation`` states the mismatch: a layer is
modulated when ρ lies outside [1/τ, τ] (τ = 1: every layer; 0: off). The authors
published no code.

Layers: every conv (any reparametrization), as in the paper; consecutive means
consecutive in the backward pass, the top conv's error being the reference (in a plain
network, the layer above). Written by hand (no library has it): a hook on each conv's
output tensor, evaluated on the device, so no step waits for the host; ρ is computed in
float32 at least (the errors may be fp16 under autocast). A layer whose error is all zero is left
as it is, and the next one is compared with the layer above it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bench.errors import ConfigError


class Modulation:
    """Hooks that modulate each conv layer's output error against the conv above it."""

    def __init__(self, model: nn.Module, tolerance: float):
        if tolerance < 1:
            raise ConfigError(
                f"error_modulation is the tolerance τ ≥ 1 of backward error modulation (a layer's error is rescaled "
                f"when it is more than τ times smaller or larger than the layer above's), or 0 for none; got {tolerance}."
            )
        convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        if len(convs) < 2:
            raise ConfigError(
                "error_modulation rescales each conv layer's backward error against the conv layer above it, but this "
                f"model has {len(convs)} conv layer(s) (arch=mlp has none). Use a convolutional architecture, or set "
                "error_modulation=0."
            )
        self.tolerance = tolerance
        self.above: Tensor | None = None  # the second moment of the last error modulated in this backward pass
        model.register_forward_pre_hook(self._start)
        for conv in convs:
            conv.register_forward_hook(self._forward)

    def _start(self, *_: Any) -> None:
        self.above = None

    def _forward(self, module: nn.Module, args: Any, output: Tensor) -> None:
        if output.requires_grad:
            output.register_hook(self._modulate)

    def _modulate(self, error: Tensor) -> Tensor:
        moment = error.detach().to(torch.promote_types(error.dtype, torch.float32)).square().mean()
        if self.above is None:  # the top conv: the reference
            self.above = moment
            return error
        alive = moment > 0
        rho = torch.sqrt(self.above / moment)
        mismatch = alive & (self.above > 0) & ((rho > self.tolerance) | (rho < 1 / self.tolerance))
        scale = torch.where(mismatch, rho, torch.ones_like(rho))
        self.above = torch.where(alive, moment * scale.square(), self.above)
        return error * scale.to(error.dtype)
