"""SGD-G and Adam-G: Riemannian optimization of scale-invariant weights on the Grassmann
manifold (Cho & Lee 2017, "Riemannian approach to batch normalization", NeurIPS 2017,
arXiv:1709.09603).

A layer whose output a normalization standardizes channel by channel computes the same
function when one unit's weight vector w ∈ Rⁿ (a row of a linear weight, one output
filter of a conv, n its fan-in) is multiplied by any c > 0, so w is really a point of the
Grassmann manifold G(1, n), represented by the unit vector y = w/‖w‖. For each such unit,
with g the Euclidean gradient ∂L/∂y:

    h  = g − (yᵀg) y                                   the Riemannian gradient      (Eq. 6)
    exp_y(h)       = y cos‖h‖ + (h/‖h‖) sin‖h‖          the exponential map           (Eq. 7)
    pt_y(Δ; h)     = Δ − (uᵀΔ)(y sin‖h‖ + u (1 − cos‖h‖)),   u = h/‖h‖
                     Δ moved along the geodesic of h                                   (Eq. 8)
    pt_y(h; h)     = (u cos‖h‖ − y sin‖h‖) ‖h‖                                         (Eq. 9)

and the paper's clipping and regularization: the tangent gradient of each unit is clipped
to norm ν, ĥ = h · min(1, ν/‖h‖) (a step moves y by at most η_g·ν radians before
momentum), and the orthogonality regularizer α/2 ‖YYᵀ − I‖²_F over the unit rows Y of a layer (k × n)
enters as its gradient 2α(YYᵀY − Y), added to g before the projection. Then, per unit,

    SGD-G   d = μ τ − η_g ĥ;   y ← exp_y(d);   τ ← pt_y(d; d)
    Adam-G  m ← β1 m + (1 − β1) ĥ;   v ← β2 v + (1 − β2) ‖ĥ‖²   (v one scalar per unit)
            Δ = −η_g √(1 − β2ᵗ)/(1 − β1ᵗ) · m / √(v + ε);   y ← exp_y(Δ);   m ← pt_y(m; Δ)

τ and m live in the tangent space of the current point and are carried to the new one by
parallel transport. Every other parameter (biases, norm γ and β, the classifier, layers
whose output is not normalized per unit) takes an ordinary SGD step with momentum μ
(``nesterov`` optional) and L2 weight decay, for Adam-G too: that is the authors' code,
whose Euclidean part is a copy of ``torch.optim.SGD`` (here the same function, torch's
``torch.optim.sgd.sgd``). Weight decay does not touch the manifold weights: it only
rescales w, which the loss cannot see.

The update is the authors' PyTorch code, MinhyungCho/riemannian-batch-normalization-pytorch
``grassmann_optimizer.py`` (``SGDG.step`` and ``AdamG.step``) with ``gutils.py`` (the same
operators as the TensorFlow code the paper's experiments ran, MinhyungCho/riemannian-batch-
normalization ``grassmann_optimizer.py``/``gutils.py``): y = w/(‖w‖ + 1e-8) is re-read from
the weights at every step, u = h/(‖h‖ + 1e-8), ε inside the square root, β-powers from
β itself at the first step. Written here because neither torch.optim nor timm ships it,
and the paper's parts (one Adam-G second moment per unit, clipping in the tangent space,
the orthogonality term, the Euclidean SGD beside them) are what is being measured; a
general Riemannian library (geoopt, not a dependency here) would still need them all.

**Which weights are on the manifold** (:func:`manifold_weights`). The paper treats the
weights "in the BN layer", the authors' code the conv kernels by name with fewer units
than inputs. Here it follows from the model: a conv or linear layer with a plain ``weight``
parameter (not a Weight-Normalization g and v), whose output is read only by a norm layer
tagged ``unit-invariant`` (one that standardizes each channel with that channel's own
mean and variance in training: bn, bn-ghost, bn-example-weighted, in), found by tracing
the model with ``torch.fx``. As in the authors' code, the layer must be undercomplete,
k < n (more units than inputs cannot be orthogonal, and the regularizer would pull them
toward what they cannot reach), and its weight trainable. The classifier is followed by
no norm, so it stays Euclidean; so do all weights of a layer-, group-normalized or
normalizer-free network, which the optimizer then refuses as plain SGD under another name.
The weights chosen are scaled to unit rows when the optimizer is built (the authors' unit
initialization; the network's function does not change).

**Defaults** are the authors' CIFAR recipe (their README): momentum 0.9 for both parts
(they use Nesterov on the Euclidean part: ``nesterov: true``), ν = 0.1, α = 0.1, learning
rates η_e = 0.01 and η_g = 0.2 (SGD-G) or 0.05 (Adam-G), i.e. ``grassmann_lr_ratio``
η_g/η_e = 20 or 5, Adam-G's β2 = 0.99 and ε = 1e-8, weight decay 5e-4 on the Euclidean
weights but not on biases and norm parameters (``wd_exclude_1d: true``). The manifold learning rate is the trial's learning rate
times the ratio, so it follows the schedule (the authors decay both by the same factor)
and the batch-size scaling rule.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn
from torch.optim.sgd import sgd as euclidean_sgd

from bench.errors import ConfigError
from bench.zoo.optimizers import BETA1, EPS, MOMENTUM, NESTEROV, eps_or
from bench.zoo.optimizers.weight_decay import DECAY_KEY
from bench.zoo.registry import NORMS, OPTIMIZERS, Option

GRASSMANN_LR_RATIO = Option(
    "grassmann_lr_ratio", float, None, "the manifold weights' learning rate η_g as a multiple of lr; null: the "
    "authors' η_g/η_e, 20 for sgd-g (0.2/0.01) and 5 for adam-g (0.05/0.01)", gt=0, nullable=True,
)
GRASSMANN_CLIP = Option(
    "grassmann_clip", float, 0.1, "ν: each unit's tangent gradient is clipped to norm ν (0: no clipping)", ge=0
)
GRASSMANN_ORTHO = Option(
    "grassmann_ortho", float, 0.1, "α: orthogonality regularizer α/2·‖YYᵀ − I‖² of each layer's unit rows Y", ge=0
)
ADAMG_BETA2 = Option("adamg_beta2", float, 0.99, "Adam-G: decay of each unit's mean squared tangent-gradient norm",
                     ge=0, lt=1)
GRASSMANN_OPTIONS = (GRASSMANN_LR_RATIO, GRASSMANN_CLIP, GRASSMANN_ORTHO)

UNIT_EPS = 1e-8  # added to a norm before dividing by it (the authors' ``unit``)
INVARIANT_TAG = "unit-invariant"  # the norms after which each unit's weights are scale invariant


# -- the manifold's operators, one row per unit -----------------------------------------------


def rows(t: Tensor) -> Tensor:
    """The tensor as (units, fan-in): one row per output channel or output feature."""
    return t.reshape(t.shape[0], -1)


def unit(v: Tensor) -> tuple[Tensor, Tensor]:
    """Each row over (its norm + 1e-8), and the norms (k, 1)."""
    norm = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    return v / (norm + UNIT_EPS), norm


def project(y: Tensor, g: Tensor) -> Tensor:
    """Eq. 6: g − (yᵀg) y, the component of g tangent to the sphere at y."""
    return g - (y * g).sum(dim=1, keepdim=True) * y


def exp_map(y: Tensor, h: Tensor) -> Tensor:
    """Eq. 7: y cos‖h‖ + (h/‖h‖) sin‖h‖, the point a geodesic from y reaches along h."""
    u, norm = unit(h)
    return y * norm.cos() + u * norm.sin()


def transport(y: Tensor, h: Tensor, delta: Tensor) -> Tensor:
    """Eq. 8: the tangent vector Δ at y carried along the geodesic of h to exp_y(h)."""
    u, norm = unit(h)
    return delta - (u * delta).sum(dim=1, keepdim=True) * (norm.sin() * y + (1 - norm.cos()) * u)


def transport_along_itself(y: Tensor, h: Tensor) -> Tensor:
    """Eq. 9: h carried along its own geodesic, (u cos‖h‖ − y sin‖h‖)‖h‖."""
    u, norm = unit(h)
    return (u * norm.cos() - y * norm.sin()) * norm


def clip_rows(h: Tensor, clip: float) -> Tensor:
    """Each row scaled to norm at most ``clip`` (0: unchanged)."""
    if not clip:
        return h
    norm = torch.linalg.vector_norm(h, dim=1, keepdim=True)
    return h * (clip / norm).clamp(max=1.0)  # a zero row gives inf → 1


def tangent_gradient(y: Tensor, grad: Tensor, clip: float, ortho: float) -> Tensor:
    """ĥ: the gradient with the orthogonality term 2α(YYᵀY − Y), projected, clipped."""
    if ortho:
        grad = grad + 2 * ortho * ((y @ y.T) @ y - y)
    return clip_rows(project(y, grad), clip)


# -- the optimizers ----------------------------------------------------------------------------


class _Grassmann(torch.optim.Optimizer, metaclass=ABCMeta):
    """Groups with ``grassmann=True`` take the manifold step (:meth:`_manifold_step`),
    the others SGD with momentum and L2 weight decay (``torch.optim.sgd.sgd``)."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]):
        super().__init__(params, {"grassmann": False, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0,
                                  "clip": 0.0, "ortho": 0.0, **defaults})
        with torch.no_grad():
            for group in self.param_groups:
                if group["grassmann"]:
                    for p in group["params"]:
                        check_manifold_shape(p)
                        p.copy_(unit(rows(p))[0].view_as(p))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["grassmann"]:
                for p in group["params"]:
                    if p.grad is not None:
                        y = unit(rows(p))[0]
                        h = tangent_gradient(y, rows(p.grad), group["clip"], group["ortho"])
                        p.copy_(self._manifold_step(group, self.state[p], y, h).view_as(p))
            else:
                self._euclidean_step(group)
        return loss

    def _euclidean_step(self, group: dict[str, Any]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        buffers = [self.state[p].get("momentum_buffer") for p in params]
        euclidean_sgd(params, [p.grad for p in params], buffers, weight_decay=group["weight_decay"],
                      momentum=group["momentum"], lr=group["lr"], dampening=0.0, nesterov=group["nesterov"],
                      maximize=False)
        if group["momentum"]:
            for p, buffer in zip(params, buffers):
                self.state[p]["momentum_buffer"] = buffer

    @abstractmethod
    def _manifold_step(self, group: dict[str, Any], state: dict[str, Any], y: Tensor, h: Tensor) -> Tensor:
        """One manifold step of a scale-invariant weight's rows ``y`` along the tangent gradient ``h``
        (SGD-G's or Adam-G's), updating ``state``; the new rows."""


class SGDG(_Grassmann):
    """SGD-G: momentum τ in the tangent space, exponential-map step."""

    def _manifold_step(self, group: dict[str, Any], state: dict[str, Any], y: Tensor, h: Tensor) -> Tensor:
        tau = state.get("momentum_buffer")
        d = -group["lr"] * h if tau is None else group["momentum"] * tau - group["lr"] * h
        state["momentum_buffer"] = transport_along_itself(y, d)
        return exp_map(y, d)


class AdamG(_Grassmann):
    """Adam-G: first moment in the tangent space, one second moment per unit."""

    def _manifold_step(self, group: dict[str, Any], state: dict[str, Any], y: Tensor, h: Tensor) -> Tensor:
        beta1, beta2 = group["betas"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(h)
            state["exp_avg_sq"] = torch.zeros_like(h[:, :1])
        state["step"] += 1
        t = state["step"]
        m = state["exp_avg"].mul(beta1).add_(h, alpha=1 - beta1)
        v = state["exp_avg_sq"].mul_(beta2).add_((h * h).sum(dim=1, keepdim=True), alpha=1 - beta2)
        delta = m / (v + group["eps"]).sqrt() * (-group["lr"] * (1 - beta2**t) ** 0.5 / (1 - beta1**t))
        state["exp_avg"] = transport(y, delta, m)
        return exp_map(y, delta)


def check_manifold_shape(p: Tensor) -> None:
    """A weight with one unit per row and more inputs than units (the authors' rule)."""
    if p.dim() < 2 or p.shape[0] >= p[0].numel():
        raise ConfigError(
            f"A weight on the Grassmann manifold needs fewer units than inputs per unit (k < n, so that its unit "
            f"rows can be orthonormal); got shape {tuple(p.shape)}. Leave it in a Euclidean group."
        )


# -- which weights go on the manifold ----------------------------------------------------------


def _plain_weight(module: nn.Module) -> nn.Parameter | None:
    """The ``weight`` parameter of a conv or linear layer that stores one (not a
    Weight-Normalization layer, whose weight is computed from g and v)."""
    if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        return None
    weight = dict(module.named_parameters(recurse=False)).get("weight")
    return weight if isinstance(weight, nn.Parameter) else None


def _norm_name(module: nn.Module) -> str | None:
    return getattr(module, "bench_norm", None)


def _unit_invariant(module: nn.Module) -> bool:
    name = _norm_name(module)
    return name is not None and INVARIANT_TAG in NORMS.entry(name).tags


class _LayerTracer(torch.fx.Tracer):
    """Keeps conv/linear layers and norm layers as single calls, to read who feeds whom."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _plain_weight(m) is not None or _norm_name(m) is not None or super().is_leaf_module(m, qualname)


def manifold_weights(model: nn.Module, optimizer: str = "sgd-g") -> list[nn.Parameter]:
    """The weights ``optimizer`` moves on the manifold: each trainable, undercomplete
    conv/linear weight whose layer's output only a ``unit-invariant`` norm reads, at every
    call of the layer. Refuses a model with none (the optimizer would be plain SGD)."""
    why = (f"optimizer={optimizer} moves on the Grassmann manifold the weights of each unit that a norm layer "
           f"standardizes channel by channel, so that the loss does not change when the unit's weights are scaled "
           f"(norms {', '.join(e.name for e in NORMS.entries() if INVARIANT_TAG in e.tags)})")
    _check_norms(model, why)
    fed = _weights_feeding_invariant_norms(model, why)
    chosen = [w for w in fed if w.requires_grad and w.shape[0] < w[0].numel()]
    if not chosen:
        detail = (f"{len(fed)} layer(s) feed such a norm, but none has a trainable weight with fewer units than inputs "
                  "per unit (k < n, the authors' rule: wider layers cannot have orthonormal unit rows; train_only_norm "
                  "freezes the weights)"
                  if fed else "no conv or linear layer with a weight parameter has its output read only by such a norm "
                  "(conv=wn stores g and v instead of the weight; in a pre-norm transformer the norms read sums)")
        raise ConfigError(f"{why}; in this model {detail}, so it would be plain SGD. Use optimizer=sgd or adam here.")
    return chosen


def _check_norms(model: nn.Module, why: str) -> None:
    if any(_unit_invariant(m) for m in model.modules()):
        return
    norms = sorted({n for m in model.modules() if (n := _norm_name(m)) not in (None, "none")})
    found = f"its norm layers are {', '.join(norms)}, which do not" if norms else "it has no norm layer to"
    raise ConfigError(
        f"{why}; {found} make a single unit's weights scale invariant (GroupNorm and LayerNorm standardize channels "
        "together, Batch Renorm, BCN and frozen BN use running statistics). Choose one of those norms, or "
        "optimizer=sgd / adam."
    )


def _weights_feeding_invariant_norms(model: nn.Module, why: str) -> list[nn.Parameter]:
    """Plain conv/linear weights whose layer's output, at every call, is read by one
    ``unit-invariant`` norm and nothing else (read from the model's torch.fx graph)."""
    try:
        graph = _LayerTracer().trace(model)
    except Exception as exc:  # torch.fx raises many kinds on untraceable Python
        raise ConfigError(
            f"{why}; it finds them by tracing the model with torch.fx, which cannot trace this architecture "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]}). Use an architecture torch.fx can trace, or another "
            "optimizer."
        ) from None
    modules = dict(model.named_modules())
    verdicts: dict[int, tuple[nn.Parameter, bool]] = {}
    for node in graph.nodes:
        weight = _plain_weight(modules[node.target]) if node.op == "call_module" else None
        if weight is None:
            continue
        users = list(node.users)
        feeds = (len(users) == 1 and users[0].op == "call_module" and users[0].args[:1] == (node,)
                 and _unit_invariant(modules[users[0].target]))
        verdicts[id(weight)] = (weight, feeds and verdicts.get(id(weight), (weight, True))[1])
    return [w for w, ok in verdicts.values() if ok]


def manifold_groups(params: Any, groups: list[dict[str, Any]], optimizer: str) -> list[dict[str, Any]]:
    """``groups`` with the manifold weights of ``params`` (a model) moved to groups of
    their own (``grassmann=True``), after the Euclidean ones, so the
    first group's lr is the trial's. Tensors or group dicts are kept as they are: there
    is no model to read (a group dict may set ``grassmann: True`` itself)."""
    if not isinstance(params, nn.Module):
        return groups
    chosen = {id(p) for p in manifold_weights(params, optimizer)}
    euclidean = [{**g, "params": [p for p in g["params"] if id(p) not in chosen]} for g in groups]
    manifold = [{**g, "params": [p for p in g["params"] if id(p) in chosen], "grassmann": True} for g in groups]
    return [g for g in euclidean + manifold if g["params"]]


def _prepare(groups: list[dict[str, Any]], lr: float, ratio: float, momentum: float, nesterov: bool) -> list[dict[str, Any]]:
    if nesterov and momentum <= 0:
        raise ConfigError(
            f"Nesterov momentum needs momentum > 0; got momentum={momentum} with nesterov=true. "
            "Set momentum (e.g. 0.9) or nesterov=false."
        )
    out = []
    for g in groups:
        g = {k: v for k, v in g.items() if k != "adapt"}  # LARS/LAMB's mark; no layer-wise adaptation here
        if g.get("grassmann"):  # no decay: it would only rescale w (DECAY_KEY: an l2/decoupled override's)
            g.update({k: 0.0 for k in ("weight_decay", DECAY_KEY) if k in g}, lr=ratio * g.get("lr", lr))
        out.append(g)
    return out


@OPTIMIZERS.register(
    "sgd-g",
    "SGD-G: the conv/linear weights a per-channel norm (bn, in) follows, with fewer units than inputs, move on the "
    "Grassmann manifold, one unit vector per output unit: tangent gradient clipped to grassmann_clip, exponential-map step of lr × "
    "grassmann_lr_ratio with momentum carried by parallel transport, orthogonality regularizer grassmann_ortho; "
    "every other parameter takes SGD with momentum. Native decay: L2 on the Euclidean parameters, none on the "
    "manifold (scale invariant).",
    paper="Cho & Lee 2017, NeurIPS, arXiv:1709.09603",
    options=(MOMENTUM, NESTEROV, *GRASSMANN_OPTIONS),
    tags=("grassmann",),
)
def sgd_g(
    groups: list[dict[str, Any]], *, lr: float, momentum: float, nesterov: bool, grassmann_lr_ratio: float | None,
    grassmann_clip: float, grassmann_ortho: float,
) -> torch.optim.Optimizer:
    ratio = 20.0 if grassmann_lr_ratio is None else grassmann_lr_ratio
    return SGDG(_prepare(groups, lr, ratio, momentum, nesterov),
                dict(lr=lr, momentum=momentum, nesterov=nesterov, clip=grassmann_clip, ortho=grassmann_ortho))


@OPTIMIZERS.register(
    "adam-g",
    "Adam-G: the conv/linear weights a per-channel norm (bn, in) follows, with fewer units than inputs, move on the "
    "Grassmann manifold with an Adam step: first moment in the tangent space (β1, carried by parallel transport), one second moment per unit "
    "of the squared tangent-gradient norm (adamg_beta2, eps 1e-8 inside the root), bias correction, "
    "exponential-map step of lr × grassmann_lr_ratio, clipping and orthogonality as SGD-G; every other parameter "
    "takes SGD with momentum, as in the authors' code. Native decay: L2 on the Euclidean parameters, none on the "
    "manifold (scale invariant).",
    paper="Cho & Lee 2017, NeurIPS, arXiv:1709.09603",
    options=(MOMENTUM, NESTEROV, BETA1, ADAMG_BETA2, EPS, *GRASSMANN_OPTIONS),
    tags=("grassmann",),
)
def adam_g(
    groups: list[dict[str, Any]], *, lr: float, momentum: float, nesterov: bool, beta1: float, adamg_beta2: float,
    optimizer_eps: float | None, grassmann_lr_ratio: float | None, grassmann_clip: float, grassmann_ortho: float,
) -> torch.optim.Optimizer:
    ratio = 5.0 if grassmann_lr_ratio is None else grassmann_lr_ratio
    return AdamG(_prepare(groups, lr, ratio, momentum, nesterov),
                 dict(lr=lr, momentum=momentum, nesterov=nesterov, betas=(beta1, adamg_beta2),
                      eps=eps_or(optimizer_eps, 1e-8), clip=grassmann_clip, ortho=grassmann_ortho))
