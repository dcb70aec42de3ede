"""The plain conv and linear layers that weight constraints act on, and their weights as matrices.

Singular Value Bounding (:mod:`.svb`) and the orthonormal regularizer (:mod:`.orthonormal`)
treat each conv or linear weight as the matrix W ∈ ℝ^{out × fan-in}, one row per output
unit (fan-in C_in·k·k for a conv), the reshape both papers use. They act on the stored
weight, so a layer whose effective weight is computed from it (conv ws, wn, cos, centered,
sws; MimicNorm's centred convs; nf-resnet's scaled weight-standardized convs) is refused:
bounding or orthonormalizing the stored tensor would constrain something the layer does
not use as its weight.
"""

from __future__ import annotations

from torch import Tensor, nn

from bench.errors import ConfigError

PLAIN = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def plain_layers(model: nn.Module, technique: str) -> list[nn.Module]:
    """The model's conv and linear layers, in ``model.modules()`` order; a ConfigError
    naming ``technique`` when one of them reparametrizes its weight or there is none."""
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, PLAIN):
            continue
        if type(module) not in PLAIN or not isinstance(module.weight, nn.Parameter):
            raise ConfigError(
                f"{technique} acts on the stored weights of plain conv and linear layers, but the model's layer "
                f"{name!r} is a {type(module).__name__}, whose weight is computed from its parameters (a conv "
                "reparametrization, MimicNorm's centred convs or nf-resnet's scaled weight-standardized convs). "
                "Use conv=standard with a norm and an architecture that build plain layers."
            )
        layers.append(module)
    if not layers:
        raise ConfigError(f"{technique} acts on the weights of conv and linear layers, but the model has none.")
    return layers


def as_matrix(weight: Tensor) -> Tensor:
    """``weight`` as (out, fan-in): one row per output channel or output feature."""
    return weight.reshape(weight.shape[0], -1)
