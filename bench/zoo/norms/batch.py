"""BatchNorm variants: normalizations that use batch statistics or estimates of them.

Each layer normalizes every channel c of x ∈ R^{N×C×…} (``dims=2``: conv features
(N, C, H, W); ``dims=1``: vector features (N, C)) with a per-channel location μ_c and scale
s_c, then applies a learnable affine γ_c x̂ + β_c unless ``norm_affine=false``. They differ
in where μ and s come from and which estimates they keep:

- ``bn-ghost``  Ghost BatchNorm (Hoffer, Hubara & Soudry 2017, arXiv:1705.08741, §4):
  the batch is split into N / v virtual batches B_k of v examples and each is normalized
  with its own statistics, x̂ = (x − μ_{B_k}) / sqrt(σ²_{B_k} + ε) (biased variance);
  eval mode is ordinary BatchNorm with the running statistics.
- ``bn-frozen`` frozen BatchNorm: x̂ = (x − μ) / sqrt(σ² + ε) with the stored running
  statistics in training and eval alike, never updated (torchvision's
  ``FrozenBatchNorm2d``; He et al. 2016, arXiv:1512.03385, App. A, fix BN when
  fine-tuning). Built from scratch μ = 0, σ² = 1, so it is a per-channel affine control.
- ``brn``       Batch Renormalization (Ioffe 2017, arXiv:1702.03275, Alg. 1):
  x̂ = (x − μ_B) / σ_B · r + d with r = stop_grad(clip(σ_B / σ, 1/r_max, r_max)) and
  d = stop_grad(clip((μ_B − μ) / σ, −d_max, d_max)) against the moving μ, σ.
- ``bcn``       Batch-Channel Normalization (Qiao et al. 2019, arXiv:1903.10520, §5):
  a batch-normalization step with *estimated* statistics followed by a channel (group)
  normalization step with a per-group affine.

The exact definitions, including how each layer keeps its estimates, are in the class
docstrings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError
from bench.zoo.norms import BATCH_NORM_OPTIONS, GROUP_OPTIONS, NORM_AFFINE, NORM_EPS, groups_for
from bench.zoo.registry import NORMS, Option

NORM_VIRTUAL_BATCH = Option(
    "norm_virtual_batch", int, None, "Ghost BatchNorm: examples per virtual batch (null: the whole batch)", ge=1,
    nullable=True,
)
RENORM_OPTIONS = (
    Option("renorm_rmax", float, 3.0, "Batch Renorm: final r_max (r is clipped to [1/r_max, r_max])", ge=1),
    Option("renorm_dmax", float, 5.0, "Batch Renorm: final d_max (d is clipped to [−d_max, d_max])", ge=0),
    Option("renorm_start", int, 5000, "Batch Renorm: plain BatchNorm (r_max 1, d_max 0) until this step",
           unit="optimizer steps", ge=0),
    Option("renorm_rmax_at", int, 40000, "Batch Renorm: step at which r_max is reached", unit="optimizer steps", ge=0),
    Option("renorm_dmax_at", int, 25000, "Batch Renorm: step at which d_max is reached", unit="optimizer steps", ge=0),
)


@dataclass(frozen=True)
class RenormSchedule:
    """Batch Renormalization's clipping bounds over training steps (Ioffe 2017, §4):
    r_max = 1 and d_max = 0 (plain BatchNorm) until ``start``, then relaxed linearly to
    ``rmax`` at step ``rmax_at`` and ``dmax`` at step ``dmax_at``. The paper's ImageNet
    schedule: start 5k, r_max 3 at 40k, d_max 5 at 25k."""

    rmax: float = 3.0
    dmax: float = 5.0
    start: int = 5000
    rmax_at: int = 40000
    dmax_at: int = 25000

    def bounds(self, step: int) -> tuple[float, float]:
        def ramp(end: int) -> float:
            if step <= self.start:
                return 0.0
            return 1.0 if end <= self.start else min(1.0, (step - self.start) / (end - self.start))

        return 1.0 + (self.rmax - 1.0) * ramp(self.rmax_at), self.dmax * ramp(self.dmax_at)


def _channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-channel vector (C,) shaped to broadcast against (N, C, *spatial)."""
    return t.view((1, -1) + (1,) * (ndim - 2))


def _reduce_dims(ndim: int) -> tuple[int, ...]:
    """The dimensions a per-channel batch statistic reduces: N and the spatial ones."""
    return (0,) + tuple(range(2, ndim))


def _affine(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """γ (a x + b) + β for per-channel a, b (C,), computed as one fused x · scale + shift."""
    if weight is not None:
        a, b = a * weight, b * weight + bias
    return torch.addcmul(_channel_view(b, x.dim()), x, _channel_view(a, x.dim()))


def _check_features(name: str, x: torch.Tensor, num_features: int) -> None:
    if x.dim() < 2 or x.shape[1] != num_features:
        raise ValueError(
            f"{name} expects features shaped (N, {num_features}, ...) with channels on dimension 1; "
            f"got a tensor of shape {tuple(x.shape)}."
        )


class GhostBatchNorm(nn.Module):
    """Ghost BatchNorm (Hoffer, Hubara & Soudry 2017, "Train longer, generalize better",
    arXiv:1705.08741, §4 and Algorithm 1).

    Training mode: a batch of N examples is split, in order, into K = N / v virtual
    batches B_1 … B_K of v consecutive examples, and each is batch-normalized on its own:

        μ_k = mean over (B_k, H, W) of x,   σ²_k = (1/m) Σ (x − μ_k)²,   m = v·H·W
        x̂ = (x − μ_k) / sqrt(σ²_k + ε)  for x in B_k,   y = γ x̂ + β.

    Gradients flow through μ_k and σ²_k exactly as in BatchNorm. ``virtual_batch=None``
    uses the whole batch (K = 1), which is exactly ``nn.BatchNorm``. A batch whose size is
    not a multiple of v raises :class:`~bench.errors.ConfigError`.

    Running statistics: one update per forward pass from the *mean of the virtual batches'
    statistics*, with BatchNorm's momentum α and unbiased variances s²_k = σ²_k · m/(m − 1):

        running_mean ← (1 − α) running_mean + α · (1/K) Σ_k μ_k
        running_var  ← (1 − α) running_var  + α · (1/K) Σ_k s²_k

    This is the same as keeping one set of BatchNorm running statistics per virtual batch
    and averaging them at eval time (the usual multi-split implementation), and the
    effective momentum does not depend on K. Eval mode is ordinary BatchNorm:
    x̂ = (x − running_mean) / sqrt(running_var + ε). The state dict has BatchNorm's keys,
    so a trained layer loads into ``nn.BatchNorm{1,2}d``.
    """

    def __init__(
        self,
        num_features: int,
        virtual_batch: int | None = None,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
    ):
        super().__init__()
        if virtual_batch is not None and virtual_batch < 1:
            raise ConfigError(
                f"Ghost BatchNorm needs norm_virtual_batch ≥ 1 examples per virtual batch (or unset for the whole "
                f"batch); got norm_virtual_batch={virtual_batch}."
            )
        self.num_features, self.virtual_batch, self.eps, self.momentum = num_features, virtual_batch, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_features("GhostBatchNorm", x, self.num_features)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        n = x.shape[0]
        v = self.virtual_batch or n
        if n % v:
            raise ConfigError(
                f"Ghost BatchNorm got a batch of {n} examples, which does not split into virtual batches of "
                f"norm_virtual_batch={v} examples: the virtual batch size must divide the batch size. Use a "
                f"batch_size that is a multiple of {v}, or a norm_virtual_batch that divides {n} "
                f"({', '.join(str(d) for d in range(1, n + 1) if n % d == 0)})."
            )
        m = v * (x.numel() // (n * self.num_features))  # values per channel in one virtual batch
        if m < 2:
            raise ConfigError(
                f"Ghost BatchNorm with virtual batches of {v} example(s) sees only {m} value per channel, so it has no "
                "batch statistics to normalize with; use norm_virtual_batch ≥ 2."
            )
        k = n // v
        xk = x.reshape((k, v) + tuple(x.shape[1:]))
        dims = (1,) + tuple(range(3, xk.dim()))
        var, mean = torch.var_mean(xk, dim=dims, correction=0, keepdim=True)  # (K, 1, C, 1, …)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.weight is not None:
            gamma = self.weight.view((1, 1, -1) + (1,) * (xk.dim() - 3))
            beta = self.bias.view_as(gamma)
            scale, shift = scale * gamma, shift * gamma + beta
        y = torch.addcmul(shift, xk, scale).view_as(x)
        with torch.no_grad():
            c = self.num_features
            batch_mean = mean.reshape(k, c).mean(0)
            batch_var = var.reshape(k, c).mean(0) * (m / (m - 1))
            self.running_mean.lerp_(batch_mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(batch_var.to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked.add_(1)
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, virtual_batch={self.virtual_batch}, eps={self.eps}, "
            f"momentum={self.momentum}, affine={self.weight is not None}"
        )


class FrozenBatchNorm(nn.Module):
    """BatchNorm with fixed statistics, in training and eval alike.

    Definition (torchvision's ``FrozenBatchNorm2d``, with the statistics as buffers that no
    forward pass changes; He et al. 2016, arXiv:1512.03385, App. A, fine-tune detection
    networks with BN fixed to its ImageNet statistics):

        x̂ = (x − running_mean) / sqrt(running_var + ε),   y = γ x̂ + β,

    where γ, β are learnable parameters (absent with ``affine=False``) and ``running_mean``,
    ``running_var`` are buffers that are never updated. Built from scratch they are 0 and
    1, so the layer is a per-channel affine γ x / sqrt(1 + ε) + β: the control that keeps
    BatchNorm's parameters but none of its normalization. With statistics loaded from a
    trained BatchNorm (:meth:`from_batch_norm`, or a state dict: BatchNorm's
    ``num_batches_tracked`` entry is accepted and ignored) it is the layer used to
    fine-tune with small batches.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def from_batch_norm(cls, bn: nn.modules.batchnorm._BatchNorm) -> FrozenBatchNorm:
        """A frozen copy of a BatchNorm layer: its running statistics, eps and affine."""
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("FrozenBatchNorm.from_batch_norm needs a BatchNorm that tracks running statistics.")
        frozen = cls(bn.num_features, eps=bn.eps, affine=bn.affine)
        with torch.no_grad():
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
        return frozen.to(device=bn.running_mean.device, dtype=bn.running_mean.dtype)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_features("FrozenBatchNorm", x, self.num_features)
        a = torch.rsqrt(self.running_var + self.eps)
        return _affine(x, a, -self.running_mean * a, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"


class BatchRenorm(nn.Module):
    """Batch Renormalization (Ioffe 2017, "Batch Renormalization: Towards Reducing
    Minibatch Dependence in Batch-Normalized Models", arXiv:1702.03275, Algorithm 1).

    Training mode, per channel, with the moving mean μ and moving standard deviation σ:

        μ_B = mean over (N, H, W) of x,   σ_B = sqrt((1/m) Σ (x − μ_B)² + ε)
        r = stop_grad(clip(σ_B / σ, 1/r_max, r_max))
        d = stop_grad(clip((μ_B − μ) / σ, −d_max, d_max))
        x̂ = (x − μ_B) / σ_B · r + d,   y = γ x̂ + β

    then the moving averages are updated (α = ``momentum``):

        μ ← μ + α (μ_B − μ),   σ ← σ + α (σ_B − σ).

    r and d are computed with μ, σ *before* this step's update and are constants for
    autograd; gradients flow through μ_B and σ_B as in BatchNorm. With r_max = 1 and
    d_max = 0, r = 1 and d = 0, and the layer is exactly BatchNorm in training mode.

    Eval mode: x̂ = (x − μ) / σ.

    Storage: as in the paper the layer keeps a standard deviation, not a variance. The
    buffer ``running_std`` holds σ, the moving average of σ_B, which already includes ε
    (so eval divides by σ with no further ε); it starts at 1 and ``running_mean`` at 0.

    Schedule: (r_max, d_max) = ``schedule.bounds(step)`` (:class:`RenormSchedule`),
    where ``step`` is the number of training-mode forward passes this layer has run
    before the current one (0 on the first). The count is the buffer ``num_steps``, so it is
    saved and restored with the state dict; a Python mirror of it is read in the forward
    pass so that no device synchronization is needed, and loading a state dict refreshes it.
    """

    def __init__(
        self,
        num_features: int,
        schedule: RenormSchedule | None = None,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
    ):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.schedule = schedule if schedule is not None else RenormSchedule()
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_std", torch.ones(num_features))
        self.register_buffer("num_steps", torch.tensor(0, dtype=torch.long))
        self._steps = 0

    @property
    def steps(self) -> int:
        """Training-mode forward passes run so far (the schedule's ``step``)."""
        return self._steps

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._steps = int(self.num_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_features("BatchRenorm", x, self.num_features)
        if not self.training:
            a = 1.0 / self.running_std
            return _affine(x, a, -self.running_mean * a, self.weight, self.bias)
        r_max, d_max = self.schedule.bounds(self._steps)
        var_b, mean_b = torch.var_mean(x, dim=_reduce_dims(x.dim()), correction=0)
        std_b = torch.sqrt(var_b + self.eps)
        with torch.no_grad():
            sigma, mu = self.running_std.to(x.dtype), self.running_mean.to(x.dtype)
            r = (std_b / sigma).clamp(1.0 / r_max, r_max)
            d = ((mean_b - mu) / sigma).clamp(-d_max, d_max)
            self.running_mean.lerp_(mean_b.to(self.running_mean.dtype), self.momentum)
            self.running_std.lerp_(std_b.to(self.running_std.dtype), self.momentum)
            self.num_steps.add_(1)
        self._steps += 1
        a = r / std_b  # x̂ = x · a + b = (x − μ_B) / σ_B · r + d
        return _affine(x, a, d - mean_b * a, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.weight is not None}, "
            f"schedule={self.schedule}"
        )


class EstimatedBatchNorm(nn.Module):
    """The batch-normalization step of Batch-Channel Normalization with *estimated*
    statistics (Qiao et al. 2019, arXiv:1903.10520, §5; the authors' ``EstBN`` in
    joe-siyuan-qiao/Batch-Channel-Normalization, README.md).

    It normalizes with running estimates μ̂, σ̂² in training *and* eval; in training mode the
    estimates are first moved toward the current batch (rate α = ``momentum``), without
    gradient:

        μ_B  = mean over (N, H, W) of x
        v_B  = mean over (N, H, W) of (x − μ̂)²      (second moment about the *old* μ̂)
        μ̂  ← (1 − α) μ̂  + α μ_B
        σ̂² ← (1 − α) σ̂² + α v_B
        x̂ = (x − μ̂) / sqrt(σ̂² + ε)   with the updated μ̂, σ̂²,   y = γ x̂ + β (per channel).

    v_B = σ²_B + (μ_B − μ̂)² is the batch's spread about the estimate, so a shifted mean
    widens the variance estimate. μ̂, σ̂² are treated as constants by autograd. Buffers:
    ``running_mean`` (μ̂, from 0) and ``running_var`` (σ̂², from 1).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_features("EstimatedBatchNorm", x, self.num_features)
        if self.training:
            with torch.no_grad():
                dims = _reduce_dims(x.dim())
                mean_b = x.mean(dim=dims)
                spread_b = (x - _channel_view(self.running_mean.to(x.dtype), x.dim())).square().mean(dim=dims)
                self.running_mean.lerp_(mean_b.to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(spread_b.to(self.running_var.dtype), self.momentum)
        a = torch.rsqrt(self.running_var + self.eps).to(x.dtype)
        return _affine(x, a, -self.running_mean.to(x.dtype) * a, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.weight is not None}"


class BatchChannelNorm(nn.Module):
    """Batch-Channel Normalization (Qiao, Wang, Liu, Shen & Yuille 2019, "Micro-Batch
    Training with Batch-Channel Normalization and Weight Standardization", arXiv:1903.10520).

    Two steps, as in the authors' ``BCNorm`` (joe-siyuan-qiao/Batch-Channel-Normalization,
    README.md, constructed with ``estimate=True``):

    1. batch step: :class:`EstimatedBatchNorm`, per-channel normalization with running
       estimates μ̂, σ̂² updated from each training batch, and a per-channel affine γ_c, β_c;
    2. channel step: group normalization of each sample over G groups of C/G channels
       (statistics over (C/G, H, W), biased variance, ε), then a *per-group* affine
       γ'_g, β'_g (one scalar pair per group, not per channel as in GroupNorm):

        z = γ_c (x − μ̂_c) / sqrt(σ̂²_c + ε) + β_c
        y = γ'_g (z − μ_{n,g}) / sqrt(σ²_{n,g} + ε) + β'_g.

    The estimated batch step is used, not BatchNorm's batch statistics: it is the variant
    the paper proposes for micro-batches, where statistics of one or two examples are too
    noisy to normalize with, while estimates averaged over many batches still give the
    network the batch knowledge that keeps it away from elimination singularities. (The
    authors' code also offers ``nn.BatchNorm2d`` for large batches.) The estimation rate,
    which the authors' ``EstBN`` reads from a buffer ``estbn_moving_speed`` that is 0 at
    construction and set by the user, is here ``momentum`` (``norm_momentum``); ε is
    ``eps`` in both steps. With the estimates equal to the batch's own mean and biased
    variance the forward pass is BatchNorm (training mode) followed by GroupNorm.
    """

    def __init__(
        self, num_channels: int, groups: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True
    ):
        super().__init__()
        if groups < 1 or num_channels % groups:
            raise ValueError(f"BatchChannelNorm needs groups dividing {num_channels} channels; got groups={groups}.")
        self.num_channels, self.groups, self.eps = num_channels, groups, eps
        self.bn = EstimatedBatchNorm(num_channels, eps=eps, momentum=momentum, affine=affine)
        self.weight = nn.Parameter(torch.ones(groups)) if affine else None
        self.bias = nn.Parameter(torch.zeros(groups)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_features("BatchChannelNorm", x, self.num_channels)
        z = F.group_norm(self.bn(x), self.groups, eps=self.eps)
        if self.weight is None:
            return z
        zg = z.reshape(z.shape[0], self.groups, -1)
        return torch.addcmul(self.bias.view(1, -1, 1), zg, self.weight.view(1, -1, 1)).view_as(x)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, groups={self.groups}, eps={self.eps}, affine={self.weight is not None}"


@NORMS.register(
    "bn-ghost",
    "Ghost BatchNorm: batch statistics per virtual batch of norm_virtual_batch examples (unset: the whole "
    "batch); running statistics from their mean; eval as BatchNorm.",
    paper="Hoffer et al. 2017, arXiv:1705.08741",
    options=(NORM_VIRTUAL_BATCH, *BATCH_NORM_OPTIONS),
    tags=("batch", "unit-invariant"),
)
def bn_ghost(
    num_channels: int, dims: int, *, norm_virtual_batch: int | None, norm_eps: float, norm_momentum: float,
    norm_affine: bool,
) -> nn.Module:
    if dims == 1 and norm_virtual_batch == 1:
        raise ConfigError(
            "Ghost BatchNorm with norm_virtual_batch=1 on vector features (N, C), as in the MLP, normalizes each "
            "value by itself (one value per channel per virtual batch), which leaves no batch statistics. Use "
            "norm_virtual_batch ≥ 2 for the MLP."
        )
    return GhostBatchNorm(
        num_channels, virtual_batch=norm_virtual_batch, eps=norm_eps, momentum=norm_momentum, affine=norm_affine
    )


@NORMS.register(
    "bn-frozen",
    "Frozen BatchNorm: fixed running statistics in training and eval, never updated, learnable γ, β; from scratch "
    "(mean 0, var 1) a per-channel affine control, with loaded statistics the fine-tuning layer.",
    paper="He et al. 2016, arXiv:1512.03385 (App. A, BN fixed when fine-tuning)",
    options=(NORM_EPS, NORM_AFFINE),
    tags=("batch",),
)
def bn_frozen(num_channels: int, dims: int, *, norm_eps: float, norm_affine: bool) -> nn.Module:
    return FrozenBatchNorm(num_channels, eps=norm_eps, affine=norm_affine)


@NORMS.register(
    "brn",
    "Batch Renormalization: batch statistics corrected toward moving μ, σ by r, d, clipped to r_max, d_max on the "
    "renorm_* schedule; eval uses the moving μ, σ.",
    paper="Ioffe 2017, arXiv:1702.03275",
    options=(*RENORM_OPTIONS, *BATCH_NORM_OPTIONS),
    tags=("batch",),
)
def brn(
    num_channels: int, dims: int, *, renorm_rmax: float, renorm_dmax: float, renorm_start: int, renorm_rmax_at: int,
    renorm_dmax_at: int, norm_eps: float, norm_momentum: float, norm_affine: bool,
) -> nn.Module:
    schedule = RenormSchedule(renorm_rmax, renorm_dmax, renorm_start, renorm_rmax_at, renorm_dmax_at)
    return BatchRenorm(num_channels, schedule=schedule, eps=norm_eps, momentum=norm_momentum, affine=norm_affine)


@NORMS.register(
    "bcn",
    "Batch-Channel Normalization: BatchNorm with estimated (running) statistics, then GroupNorm over norm_groups "
    "groups (or norm_group_size) with a per-group affine.",
    paper="Qiao et al. 2019, arXiv:1903.10520",
    options=(*GROUP_OPTIONS, *BATCH_NORM_OPTIONS),
    tags=("batch",),
)
def bcn(
    num_channels: int, dims: int, *, norm_groups: int, norm_group_size: int | None, norm_eps: float,
    norm_momentum: float, norm_affine: bool,
) -> nn.Module:
    groups = groups_for(num_channels, norm_groups, norm_group_size)
    return BatchChannelNorm(num_channels, groups, eps=norm_eps, momentum=norm_momentum, affine=norm_affine)
