"""Moving Average Batch Normalization (Yan, Wan, Zhang, Zhang, Wei & Sun, ICLR 2020, "Towards
Stabilizing Batch Statistics in Backward Propagation of Batch Normalization",
arXiv:2001.06838).

BatchNorm with small batches suffers from noisy batch statistics in the forward pass (the
variance) *and* in the backward pass (the mean of the gradient times the normalized
output). MABN (i) drops the centring, normalizing by the second moment χ² = E[x²] (the
paper pairs it with weight centralization of the convs: ``conv: centered`` here, the
authors' ``CenConv2d``), (ii) replaces the forward and the backward batch statistic by
simple moving averages over the last m batches, and (iii) renormalizes the forward pass
toward an exponential moving average, which is also what inference uses.

The definition followed is the authors' formal one, ``MABN.py`` at the root of
megvii-model/MABN (``BatchNormFunction`` and ``MABN2d``), with s the training step (the
layer's training-mode forward passes, 1 on the first), per channel over (N, H, W):

    forward    χ²_s = mean(x²)                     (this batch's second moment)
               χ̄²  = χ²_s  while s ≤ m or s < warm-up, else the mean of χ² over steps s−m+1 … s
               z   = x / √(χ̄² + ε)
               r   = 1  while s ≤ max(renorm_start, warm-up), else clip(√(χ̄² + ε) / √(ψ² + ε), 1/r_max, r_max)
               y   = γ · r · z + β
               ψ²  ← (1 − α) ψ² + α χ̄²              (after r: r uses the previous ψ²)
    backward   g   = ∂L/∂y · γ · r
               φ_s = mean(g · z)                   (this batch's backward statistic)
               φ̄  = φ_s while s ≤ m or s < warm-up, else the mean of φ over steps s−m+1 … s
               ∂L/∂x = (g − z · φ̄) / √(χ̄² + ε),   ∂L/∂γ = Σ ∂L/∂y · r z,   ∂L/∂β = Σ ∂L/∂y
    inference  y = γ · x / √(ψ² + ε) + β

r is a constant for autograd (Batch Renormalization's stop-gradient). During the warm-up
the backward is exactly the gradient of the centring-free normalization x / √(mean(x²) + ε)
(the batch's own φ). With r unclipped, r·z = x / √(ψ² + ε): the forward then uses the
exponential moving average. The authors' values: m = 16 (the default of their ImageNet
layer, ``cls/networks/MABN.py``; the formal layer takes m = real_B / B, the simulated batch
over the normalization batch), warm-up 100 steps, momentum 0.98 (α = 0.02 here, in the
``norm_momentum`` convention), r_max 5 after max(1000, warm-up) steps; ψ² starts at 1. Buffers: ``running_var`` (ψ²), ``buffer_x2`` and ``buffer_gz`` (the last m values of
χ² and φ, slot s mod m), ``num_steps`` (s); the step count is mirrored in Python so the
forward pass reads no value back from the device (as :class:`~bench.zoo.norms.batch.BatchRenorm`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.zoo.norms import NORM_AFFINE, NORM_EPS
from bench.zoo.registry import NORMS, Option

MABN_OPTIONS = (
    Option("mabn_buffer", int, 16, "MABN: m, the batches averaged (simple moving average) for the forward and backward "
           "statistics", ge=1),
    Option("mabn_warmup", int, 100, "MABN: the batch's own statistics until this step", unit="optimizer steps", ge=0),
    Option("mabn_momentum", float, 0.02, "MABN: α of the running second moment ψ² ← (1 − α)·ψ² + α·χ̄², used at inference "
           "and by r (the authors' momentum 0.98 is 1 − α)", gt=0, le=1),
    Option("mabn_rmax", float, 5.0, "MABN: r clipped to [1/r_max, r_max] once renormalization starts", ge=1),
    Option("mabn_renorm_start", int, 1000, "MABN: r = 1 until step max(mabn_renorm_start, mabn_warmup)",
           unit="optimizer steps", ge=0),
)


def _reduce_dims(ndim: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, ndim))


def _channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.reshape((1, -1) + (1,) * (ndim - 2))


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least single precision (statistics of half-precision activations)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class _MABNFunction(torch.autograd.Function):
    """y = γ·r·z + β with z = x·inv_std; the backward uses the layer's moving average of φ."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                inv_std: torch.Tensor, r: torch.Tensor, layer: MovingAverageBatchNorm, step: int) -> torch.Tensor:
        z = x * _channel(inv_std.to(x.dtype), x.dim())
        scale = r if weight is None else r * weight
        y = z * _channel(scale.to(x.dtype), x.dim())
        if bias is not None:
            y = y + _channel(bias.to(x.dtype), x.dim())
        ctx.save_for_backward(z, weight, inv_std, r)
        ctx.layer, ctx.step, ctx.has_bias = layer, step, bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        z, weight, inv_std, r = ctx.saved_tensors
        dims, ndim = _reduce_dims(grad_out.dim()), grad_out.dim()
        scale = r if weight is None else r * weight
        g = grad_out * _channel(scale.to(grad_out.dtype), ndim)
        gz = _wide(g * z).mean(dim=dims)
        phi = ctx.layer._backward_statistic(gz, ctx.step)
        grad_x = (g - z * _channel(phi.to(g.dtype), ndim)) * _channel(inv_std.to(g.dtype), ndim)
        grad_w = (grad_out * z).sum(dim=dims) * r.to(grad_out.dtype) if weight is not None else None
        grad_b = grad_out.sum(dim=dims) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None, None, None, None


class MovingAverageBatchNorm(nn.Module):
    """MABN for features (N, C, ...) with channels on dimension 1 (the module docstring
    gives the equations). ``buffer_size`` m, ``warmup``, ``momentum`` α, ``rmax``,
    ``renorm_start`` as there; ``eps`` ε; ``affine`` learns γ, β (the authors' layer always does)."""

    def __init__(
        self,
        num_features: int,
        buffer_size: int = 16,
        warmup: int = 100,
        momentum: float = 0.02,
        rmax: float = 5.0,
        renorm_start: int = 1000,
        eps: float = 1e-5,
        affine: bool = True,
    ):
        super().__init__()
        if buffer_size < 1:
            raise ValueError(f"MABN needs a buffer of at least one batch; got mabn_buffer={buffer_size}.")
        self.num_features, self.buffer_size, self.warmup, self.momentum = num_features, buffer_size, warmup, momentum
        self.rmax, self.renorm_start, self.eps = rmax, renorm_start, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("buffer_x2", torch.zeros(buffer_size, num_features))
        self.register_buffer("buffer_gz", torch.zeros(buffer_size, num_features))
        self.register_buffer("num_steps", torch.tensor(0, dtype=torch.long))
        self._steps = 0

    @property
    def steps(self) -> int:
        """Training-mode forward passes run so far (s of the last one)."""
        return self._steps

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._steps = int(self.num_steps)

    def _warm(self, step: int) -> bool:
        """Whether step s uses the moving averages (the buffer is full and the warm-up over)."""
        return step > self.buffer_size and step >= self.warmup

    def _backward_statistic(self, gz: torch.Tensor, step: int) -> torch.Tensor:
        with torch.no_grad():
            self.buffer_gz[step % self.buffer_size].copy_(gz)
            return self.buffer_gz.mean(dim=0) if self._warm(step) else gz

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"MovingAverageBatchNorm expects features shaped (N, {self.num_features}, ...); "
                             f"got {tuple(x.shape)}.")
        if not self.training:
            scale = torch.rsqrt(self.running_var + self.eps)
            if self.weight is not None:
                scale = scale * self.weight
            y = x * _channel(scale.to(x.dtype), x.dim())
            return y if self.bias is None else y + _channel(self.bias.to(x.dtype), x.dim())
        self._steps += 1
        step = self._steps
        with torch.no_grad():
            self.num_steps.add_(1)
            x2 = _wide(x.detach()).square().mean(dim=_reduce_dims(x.dim()))
            self.buffer_x2[step % self.buffer_size].copy_(x2)
            stat = self.buffer_x2.mean(dim=0) if self._warm(step) else x2
            std = torch.sqrt(stat + self.eps)
            if step <= max(self.renorm_start, self.warmup):
                r = torch.ones_like(std)
            else:
                r = (std / torch.sqrt(self.running_var + self.eps)).clamp(1.0 / self.rmax, self.rmax)
            self.running_var.lerp_(stat.to(self.running_var.dtype), self.momentum)
        return _MABNFunction.apply(x, self.weight, self.bias, 1.0 / std, r, self, step)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, buffer_size={self.buffer_size}, warmup={self.warmup}, momentum={self.momentum}, "
                f"rmax={self.rmax}, renorm_start={self.renorm_start}, eps={self.eps}, affine={self.weight is not None}")


@NORMS.register(
    "mabn",
    "Moving Average BatchNorm: centring-free (x / √(E[x²] + ε)), the forward and backward batch statistics "
    "replaced by their moving averages over mabn_buffer batches after mabn_warmup steps, renormalized toward a "
    "running second moment that inference uses. The paper pairs it with conv: centered.",
    paper="Yan et al. 2020, arXiv:2001.06838 (ICLR 2020)",
    options=(*MABN_OPTIONS, NORM_EPS, NORM_AFFINE),
    tags=("batch",),
)
def mabn(
    num_channels: int, dims: int, *, mabn_buffer: int, mabn_warmup: int, mabn_momentum: float, mabn_rmax: float,
    mabn_renorm_start: int, norm_eps: float, norm_affine: bool,
) -> nn.Module:
    return MovingAverageBatchNorm(
        num_channels, buffer_size=mabn_buffer, warmup=mabn_warmup, momentum=mabn_momentum, rmax=mabn_rmax,
        renorm_start=mabn_renorm_start, eps=norm_eps, affine=norm_affine,
    )
