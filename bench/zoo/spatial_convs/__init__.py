"""Conv kinds that replace only a model's sliding-window convolutions.

Deformable convolution (:mod:`.deformable`, ``conv: deformable``) and DRConv
(:mod:`.region_aware`, ``conv: drconv``) change how a k×k window gathers its input: where
it samples, which filter it applies. A conv whose windows do not overlap has nothing of the
kind to change: a 1×1 conv (a per-position linear map: ResNet's projection shortcuts) or
a patchify conv with stride = kernel (a ViT's patch embedding, a linear map of each
flattened patch). So such a kind builds its own layer exactly where the windows overlap,

    stride < kernel along some axis   (3×3 / stride 1 or 2, 3×1, ...),

and plain ``nn.Conv2d`` / ``nn.Linear`` everywhere else, and a model in which no conv
qualifies (an MLP; a ViT without its conv stem) is refused before anything runs, since
the choice would change nothing. The rule lives here, in the package ``__init__``, so the
code fingerprint of each of these kinds covers it.

Where in the network: ``conv_from_stage`` (both kinds; default 1, everywhere) keeps the
kind out of the stages before the given one, in an architecture that has stages and says
how many (``conv_stages``: resnet's three, the stem in the first; cnn's pairs of convs
between poolings). Detection backbones put these layers late: DCNv2 (Zhu et al. 2019,
arXiv:1811.11168, §4) deforms every 3×3 conv of ResNet-50's conv3–conv5, all stages but
the first, highest-resolution one (DCNv1: the last three 3×3 convs of conv5); in a
three-stage CIFAR ResNet, ``conv_from_stage: 2`` is the DCNv2 placement. The stage count
is read off the built model, and a model without one, or with fewer stages than asked, is
refused before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.nn.modules.utils import _pair

from bench.errors import ConfigError
from bench.zoo.convs import ConvKind
from bench.zoo.registry import Option

CONV_FROM_STAGE = Option(
    "conv_from_stage", int, 1, "the first stage built with this conv in an architecture with stages (resnet: 1-3, "
    "the stem in 1; cnn: each pair of convs between poolings); earlier ones plain. 2: all but the first stage, "
    "DCNv2's placement", ge=1,
)


def sliding(kernel_size: int | tuple[int, int], stride: int | tuple[int, int]) -> bool:
    """Whether a conv's windows overlap: stride < kernel along some axis."""
    return any(s < k for k, s in zip(_pair(kernel_size), _pair(stride)))


def sliding_window_kind(name: str, layer: type[nn.Module], build: Callable[..., nn.Module],
                        from_stage: int = 1) -> ConvKind:
    """The conv kind ``name`` that builds ``build(cin, cout, kernel_size, stride=, padding=,
    bias=)`` (a ``layer``) for every sliding-window conv and plain layers otherwise, from
    stage ``from_stage`` on; its ``prepare`` refuses a model with no ``layer`` in it, or
    without that many stages."""

    def conv(cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True) -> nn.Module:
        if sliding(kernel_size, stride):
            return build(cin, cout, kernel_size, stride=stride, padding=padding, bias=bias)
        return nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=bias)

    def prepare(model: nn.Module) -> None:
        stages = getattr(model, "conv_stages", None)
        if from_stage > (stages or 1):
            asked = f"conv_from_stage={from_stage} builds {name} convs from that stage of the network on, but this model"
            if stages:
                raise ConfigError(f"{asked} has {stages} stage{'s' * (stages != 1)}. Use conv_from_stage between 1 and "
                                  f"{stages} (1: everywhere).")
            raise ConfigError(f"{asked} has no stages that conv_from_stage counts (resnet and cnn have them). Leave "
                              "conv_from_stage at 1 (everywhere) for this architecture, or choose resnet or cnn.")
        if not any(isinstance(m, layer) for m in model.modules()):
            raise ConfigError(
                f"conv={name} replaces the model's sliding-window convolutions (stride smaller than the kernel, "
                "such as the 3×3 convs of cnn, resnet and vgg) and leaves 1×1 convs and linear layers plain, but "
                "this model has none: an MLP has only linear layers, and a ViT's patch embedding "
                "is a patchify conv (stride = kernel, a linear map of each patch). Choose a convolutional "
                f"architecture (or a ViT with vit_conv_stem=true) for conv={name}, or leave conv unset."
            )

    return ConvKind(conv=conv, linear=nn.Linear, prepare=prepare, from_stage=from_stage)
