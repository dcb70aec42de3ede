"""Weight reparametrizations of conv and linear layers, by name (the ``conv`` choice).

Orthogonal to the activation norm: a study can cross ``conv`` {standard, ws, ...} with
``norm`` {bn, gn, ...} (gn + ws is the Weight Standardization paper's recipe). Each entry
provides a conv and a linear constructor with torch's signatures; architectures build
every layer through a :class:`ConvFactory`, so any reparametrization fits any architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from bench.registry import Registry


@dataclass(frozen=True)
class ConvKind:
    """conv(cin, cout, kernel_size, stride, padding, bias) and linear(fin, fout, bias)."""

    conv: Callable[..., nn.Module]
    linear: Callable[..., nn.Module]


CONVS: Registry[ConvKind] = Registry("conv")

CONVS.register("standard", "Plain conv and linear layers (no reparametrization).")(
    ConvKind(
        conv=lambda cin, cout, kernel_size, stride=1, padding=0, bias=True: nn.Conv2d(
            cin, cout, kernel_size, stride=stride, padding=padding, bias=bias
        ),
        linear=lambda fin, fout, bias=True: nn.Linear(fin, fout, bias=bias),
    )
)


@dataclass(frozen=True)
class ConvFactory:
    name: str = "standard"

    def __post_init__(self) -> None:
        CONVS.check(self.name)

    def conv(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True) -> nn.Module:
        return CONVS.get(self.name).conv(cin, cout, kernel_size, stride=stride, padding=padding, bias=bias)

    def linear(self, fin: int, fout: int, bias: bool = True) -> nn.Module:
        return CONVS.get(self.name).linear(fin, fout, bias=bias)
