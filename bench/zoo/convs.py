"""Weight reparametrizations of conv and linear layers, by name (the ``conv`` choice).

Orthogonal to the activation norm: a study can cross ``conv`` {standard, ws, ...} with
``norm`` {bn, gn, ...} (gn + ws is the Weight Standardization paper's recipe). Each entry
provides a conv and a linear constructor with torch's signatures; architectures build
every layer through a :class:`ConvFactory`, so any reparametrization fits any architecture.

Definitions, for a weight W with output units i and fan-in N (C_in·k·k for a conv, the
input features for a linear layer); μ_i, σ_i are the mean and standard deviation of W_i
over its fan-in:

- ``standard``  plain layers.
- ``ws``        Weight Standardization (Qiao et al. 2019): Ŵ_i = (W_i − μ_i) / (σ_i + ε),
  σ_i the unbiased standard deviation, ε = 1e-5 (the authors' PyTorch code), no affine on
  Ŵ; convs only.
- ``wn``        Weight Normalization (Salimans & Kingma 2016): w_i = g_i · v_i / ‖v_i‖ on
  convs and linears, with the data-dependent initialization
  :func:`weight_norm_data_init`.
- ``cos``       Cosine Normalization (Luo et al. 2017): the layer outputs
  cos(w_i, x) = w_i·x / (‖w_i‖‖x‖), x a receptive-field patch (conv) or the input vector
  (linear); no bias.
- ``centered``  weight centring, MimicNorm's convs (Fei et al. 2021): Ŵ_i = W_i − μ_i.
- ``sws``       Scaled Weight Standardization (Brock et al. 2021):
  Ŵ_i = g_i · γ · (W_i − μ_i) / (σ_i √N), σ_i biased, learnable gain g_i (init 1), γ the
  ReLU gain sqrt(2 / (1 − 1/π)); convs only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import ScaledStdConv2d
from torch import Tensor, nn
from torch.nn.utils import parametrize
# _WeightNorm is the parametrization torch's weight_norm registers; matching on it is how
# weight-normed layers are recognized (torch has no public predicate for it).
from torch.nn.utils.parametrizations import _WeightNorm, weight_norm

from bench.errors import ConfigError
from bench.zoo.registry import CONVS, Option


@dataclass(frozen=True)
class ConvKind:
    """Constructors with torch's signatures: ``conv(cin, cout, kernel_size, stride=, padding=,
    bias=)`` as ``nn.Conv2d`` and ``linear(fin, fout, bias=)`` as ``nn.Linear``; a layer class
    with those signatures is its own constructor. ``data_init(model, images)``, when set,
    initializes the built model from a batch before training. ``prepare(model)``, when set,
    runs on every model built with the kind (resumed ones too), after the architecture: it
    may mark layers (meProp's classifier keeps its full gradient) and raises a ConfigError
    for a model the kind cannot act on. ``from_stage``: in an architecture with stages, the
    first one built with the kind (:meth:`ConvFactory.for_stage`); 1 is everywhere."""

    conv: Callable[..., nn.Module]
    linear: Callable[..., nn.Module]
    data_init: Callable[[nn.Module, Tensor], None] | None = None
    prepare: Callable[[nn.Module], None] | None = None
    from_stage: int = 1


@CONVS.register("standard", "Plain conv and linear layers (no reparametrization).")
def standard() -> ConvKind:
    return ConvKind(conv=nn.Conv2d, linear=nn.Linear)


def _per_unit(weight: Tensor) -> Tensor:
    """The weight as (units, fan-in): one row per output channel or output feature."""
    return weight.reshape(weight.shape[0], -1)


# --------------------------------------------------------------------------------------
# Weight Standardization
# --------------------------------------------------------------------------------------

WS_EPS = 1e-5


class WSConv2d(nn.Conv2d):
    """Conv2d with Weight Standardization (Qiao et al. 2019, arXiv:1903.10520):

        Ŵ_i = (W_i − μ_i) / (σ_i + ε),   μ_i, σ_i over the fan-in C_in·k·k of output channel i,

    with no affine on Ŵ (the norm layer that follows carries it), σ_i the *unbiased*
    standard deviation and ε = 1e-5 added to it: the authors' PyTorch layer
    (joe-siyuan-qiao/WeightStandardization README and its pytorch-classification code,
    ``weight.view(O, -1).std(dim=1) + 1e-5``). The paper's equation writes σ with a 1/I
    normalizer, and the authors' TensorFlow snippet uses the biased std; the two differ by
    the factor sqrt(N / (N − 1)) (2% for the 27-weight filters of an RGB stem, nothing a
    following norm layer does not absorb).

    Written here rather than taken from ``timm.layers.StdConv2d``, which computes
    (W − μ) / sqrt(σ²_biased + ε) with ε = 1e-6 (the BiT variant): with ε under the square
    root the layer stops being scale invariant once the filters are small (at σ = 1e-3,
    Ŵ shrinks by 29%; weight decay keeps shrinking weights the loss is invariant to the
    scale of), whereas ε added to σ changes Ŵ by 1% there.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        fan_in = self.weight[0].numel()
        if fan_in < 2:
            raise ConfigError(
                f"Weight Standardization divides each filter by the standard deviation of its fan-in, which needs "
                f"at least 2 weights per filter; a {kernel_size}×{kernel_size} conv from {in_channels} channel(s) "
                "has 1. Use conv=standard for this layer's architecture, or a wider input."
            )
        self.eps = WS_EPS

    def reparametrized_weight(self) -> Tensor:
        """Ŵ = (W − mean) / (unbiased std + ε), per output channel."""
        flat = _per_unit(self.weight)
        std, mean = torch.std_mean(flat, dim=1, keepdim=True)
        return ((flat - mean) / (std + self.eps)).view_as(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.reparametrized_weight(), self.bias)


@CONVS.register(
    "ws",
    "Weight Standardization: conv filters standardized over their fan-in, (W − μ)/(σ + 1e-5); linears standard.",
    paper="Qiao et al. 2019, arXiv:1903.10520",
)
def ws() -> ConvKind:
    return ConvKind(conv=WSConv2d, linear=nn.Linear)


# --------------------------------------------------------------------------------------
# Weight Normalization
# --------------------------------------------------------------------------------------

WN_INIT_EPS = 1e-10  # added to the variance, as in the authors' code (openai/weightnorm)


def _weight_normed(module: nn.Module) -> nn.Module:
    """``torch.nn.utils.parametrizations.weight_norm`` over every dim but the first:
    w_i = g_i · v_i / ‖v_i‖ with g stored as ``parametrizations.weight.original0`` and v
    as ``original1``; g starts at ‖v_i‖, so the layer starts at its default init."""
    return weight_norm(module, name="weight", dim=0)


@CONVS.register(
    "wn",
    "Weight Normalization: w = g·v/‖v‖ per output unit on convs and linears (wn_init: data-dependent init).",
    paper="Salimans & Kingma 2016, arXiv:1602.07868",
    options=(Option("wn_init", bool, False, "data-dependent initialization on a batch of up to 512 training images"),),
)
def wn(*, wn_init: bool) -> ConvKind:
    return ConvKind(
        conv=lambda cin, cout, kernel_size, stride=1, padding=0, bias=True: _weight_normed(
            nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=bias)
        ),
        linear=lambda fin, fout, bias=True: _weight_normed(nn.Linear(fin, fout, bias=bias)),
        data_init=weight_norm_data_init if wn_init else None,
    )


def is_weight_normed(module: nn.Module) -> bool:
    """Whether ``module.weight`` is reparametrized by torch's weight norm."""
    return parametrize.is_parametrized(module, "weight") and any(
        isinstance(p, _WeightNorm) for p in module.parametrizations["weight"]
    )


def weight_norm_data_init(model: nn.Module, x: Tensor) -> None:
    """Data-dependent initialization of Weight Normalization (Salimans & Kingma 2016,
    arXiv:1602.07868, §3).

    With the directions v at their random initialization, one forward pass over the batch
    ``x`` visits the weight-normed layers in execution order. At each, the pre-activation
    is computed with g = 1 and b = 0,

        t = v·x / ‖v‖,

    and per output unit (over the batch and, for a conv, the spatial positions) the layer
    is set to

        g ← 1 / σ[t],   b ← −μ[t] / σ[t]      (σ[t] = sqrt(Var[t] + 1e-10), biased Var),

    so that its output y = (t − μ[t]) / σ[t] has zero mean and unit variance per unit on
    this batch. The layer passes that initialized output on, so every later layer is
    initialized on the activations it will see. A layer without bias only gets g ← 1/σ[t]
    (its output has unit variance but keeps its mean).

    The pass runs in training mode, so norm layers between weight-normed layers (e.g.
    BatchNorm) normalize with the batch statistics, exactly as in the training forward
    this initialization prepares. Their state is not changed: every buffer of the model
    (BatchNorm running mean and variance, batch counters, ...) is restored afterwards,
    and the model is returned to the train/eval mode it was in. Runs without gradients.
    """
    layers = [m for m in model.modules() if is_weight_normed(m)]
    if not layers:
        raise ConfigError(
            "Weight Normalization's data-dependent initialization found no weight-normalized layer in the model. "
            "It applies to models built with conv=wn."
        )
    done: set[int] = set()

    def before(module: nn.Module, args: tuple[object, ...]) -> None:
        if id(module) in done:
            return
        module.parametrizations["weight"].original0.fill_(1.0)  # g = 1: w = v / ‖v‖
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()

    def after(module: nn.Module, args: tuple[object, ...], t: Tensor) -> Tensor | None:
        if id(module) in done:
            return None
        done.add(id(module))
        channel = 1 if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else t.dim() - 1
        dims = [d for d in range(t.dim()) if d != channel]
        var, mean = torch.var_mean(t, dim=dims, correction=0)
        inv_std = torch.rsqrt(var + WN_INIT_EPS)
        g = module.parametrizations["weight"].original0
        g.copy_(inv_std.view_as(g))
        shape = [1] * t.dim()
        shape[channel] = -1
        if getattr(module, "bias", None) is None:
            return t * inv_std.view(shape)
        module.bias.copy_(-mean * inv_std)
        return (t - mean.view(shape)) * inv_std.view(shape)

    was_training = {m: m.training for m in model.modules()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    handles = [h for m in layers for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        # Loading the saved buffers back through the state-dict path also resets what
        # layers derive from them (e.g. Batch Renorm's step count used by its schedule).
        persistent = model.state_dict().keys()
        model.load_state_dict({k: v for k, v in buffers.items() if k in persistent}, strict=False)
        for m, training in was_training.items():
            m.train(training)


# --------------------------------------------------------------------------------------
# Cosine Normalization
# --------------------------------------------------------------------------------------

COS_EPS = 1e-6  # added to both squared norms: keeps 0-input patches at 0 with finite gradients


class CosineConv2d(nn.Conv2d):
    """Conv2d with Cosine Normalization (Luo et al. 2017, arXiv:1702.05870): for
    output channel i and the receptive-field patch x at each position,

        y_i = w_i·x / (‖w_i‖ ‖x‖),   here w_i·x / sqrt((‖w_i‖² + ε)(‖x‖² + ε)), ε = 1e-6,

    bounded in [−1, 1]. ‖x‖² of every patch is one convolution of x² with a ones kernel
    (same stride and padding; zero padding contributes nothing, as to w·x).

    The layer has no bias, whatever the ``bias`` argument: the paper's pre-activation is
    the cosine itself, and adding b would undo its bound. The argument is accepted so the
    layer fits every architecture's constructor call.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.eps = COS_EPS

    def forward(self, x: Tensor) -> Tensor:
        dot = self._conv_forward(x, self.weight, None)
        ones = x.new_ones(1, self.in_channels, *self.kernel_size)
        patch_sq = F.conv2d(x * x, ones, None, self.stride, self.padding, self.dilation)
        w_sq = _per_unit(self.weight).pow(2).sum(dim=1).view(1, -1, 1, 1)
        return dot * torch.rsqrt((patch_sq + self.eps) * (w_sq + self.eps))


class CosineLinear(nn.Linear):
    """Linear layer with Cosine Normalization (Luo et al. 2017, arXiv:1702.05870):
    y_i = w_i·x / sqrt((‖w_i‖² + ε)(‖x‖² + ε)) ∈ [−1, 1], one cosine per output row; no
    bias, whatever the ``bias`` argument (see :class:`CosineConv2d`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=False)
        self.eps = COS_EPS

    def forward(self, x: Tensor) -> Tensor:
        dot = F.linear(x, self.weight)
        x_sq = x.pow(2).sum(dim=-1, keepdim=True)
        w_sq = self.weight.pow(2).sum(dim=1)
        return dot * torch.rsqrt((x_sq + self.eps) * (w_sq + self.eps))


@CONVS.register(
    "cos",
    "Cosine Normalization: every conv and linear outputs cos(w, x) ∈ [−1, 1] per patch / row; no bias.",
    paper="Luo et al. 2017, arXiv:1702.05870",
)
def cos() -> ConvKind:
    return ConvKind(
        conv=lambda cin, cout, kernel_size, stride=1, padding=0, bias=True: CosineConv2d(
            cin, cout, kernel_size, stride=stride, padding=padding
        ),
        linear=lambda fin, fout, bias=True: CosineLinear(fin, fout),
    )


# --------------------------------------------------------------------------------------
# Weight centring (MimicNorm)
# --------------------------------------------------------------------------------------


class CenteredConv2d(nn.Conv2d):
    """Conv2d whose filters have their mean removed, MimicNorm's "weight mean operation"
    (Fei et al. 2021, arXiv:2010.09278):

        Ŵ_i = W_i − μ_i,   μ_i the mean over the fan-in C_in·k·k of output channel i.

    The authors' code (Kid-key/MimicNorm, ``meanweigh``) projects the stored weights,
    ``W ← W − mean(W)`` over dims (1, 2, 3), at initialization and after every optimizer
    step. Here the projection is a reparametrization in the forward pass, so it needs no
    hook in the training loop; the gradient reaching W is then the projected gradient,
    and for SGD with momentum and weight decay (the authors' optimizer) the effective
    weights Ŵ follow exactly the trajectory of the projected W, because the projection is
    linear. (With an adaptive optimizer such as Adam the two differ slightly.) Linear
    layers are not centred, as in the authors' code, where the linear case is disabled.
    """

    def reparametrized_weight(self) -> Tensor:
        flat = _per_unit(self.weight)
        return (flat - flat.mean(dim=1, keepdim=True)).view_as(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.reparametrized_weight(), self.bias)


@CONVS.register(
    "centered",
    "Weight centring (MimicNorm's convs): conv filters minus their mean over the fan-in; linears standard.",
    paper="Fei et al. 2021, arXiv:2010.09278",
)
def centered() -> ConvKind:
    return ConvKind(conv=CenteredConv2d, linear=nn.Linear)


# --------------------------------------------------------------------------------------
# Scaled Weight Standardization
# --------------------------------------------------------------------------------------

RELU_GAIN = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))
"""γ for ReLU (Brock et al. 2021, arXiv:2101.08692): for z ~ N(0, 1),
Var(max(z, 0)) = (1 − 1/π) / 2, so γ·ReLU(z) has unit variance."""

SWS_EPS = 1e-6


def scaled_ws_conv(
    cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True, gamma: float = RELU_GAIN
) -> ScaledStdConv2d:
    """A conv with Scaled Weight Standardization (Brock et al. 2021, arXiv:2101.08692,
    with the learnable gain of the authors' code):

        Ŵ_i = g_i · γ · (W_i − μ_i) / (σ_i √N),   N = C_in·k·k,

    σ_i the biased standard deviation over the fan-in, g_i a learnable gain initialized
    at 1, γ the gain of the activation the conv's input comes from (``RELU_GAIN``; 1 for a
    conv on the network input). It is ``timm.layers.ScaledStdConv2d``, which computes
    σ_i as sqrt(Var_i + ε) with ε = 1e-6; the authors' JAX layer (deepmind-research
    nfnets/base.py) uses 1 / sqrt(max(N·Var_i, 1e-4)), the same away from Var_i ≈ 0, and
    multiplies γ into the activation function instead of the weights, which gives the
    same product. Linear layers stay standard under ``sws``: the reparametrization is
    defined for the convs, and the normalizer-free networks' classifier is a plain linear.
    """
    return ScaledStdConv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=bias, gamma=gamma, eps=SWS_EPS)


@CONVS.register(
    "sws",
    "Scaled Weight Standardization: gain·γ_ReLU·(W − μ)/(σ·√fan_in), learnable gain; linears standard.",
    paper="Brock et al. 2021, arXiv:2101.08692",
)
def sws() -> ConvKind:
    return ConvKind(conv=scaled_ws_conv, linear=nn.Linear)


@dataclass(frozen=True)
class ConvFactory:
    """A conv reparametrization chosen by name with its declared options; architectures
    build every conv and linear layer through it."""

    name: str = "standard"
    options: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        entry = CONVS.entry(self.name)  # an unknown name fails here, listing the valid ones
        defaults = {o.name: o.default for o in entry.options}
        unknown = sorted(set(dict(self.options)) - set(defaults))
        if unknown:
            raise ConfigError(f"The conv {self.name!r} takes no option {unknown[0]!r}; it takes: "
                              f"{', '.join(defaults) or 'none'}.")
        object.__setattr__(self, "options", tuple({**defaults, **dict(self.options)}.items()))

    @property
    def kind(self) -> ConvKind:
        return CONVS.build(self.name, dict(self.options))

    def conv(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True) -> nn.Module:
        return self.kind.conv(cin, cout, kernel_size, stride=stride, padding=padding, bias=bias)

    def linear(self, fin: int, fout: int, bias: bool = True) -> nn.Module:
        return self.kind.linear(fin, fout, bias=bias)

    def for_stage(self, stage: int) -> ConvFactory:
        """The factory for the layers of stage ``stage`` (from 1) of an architecture with
        stages: this one from the kind's ``from_stage`` on, plain layers before it."""
        return self if stage >= self.kind.from_stage else ConvFactory()
