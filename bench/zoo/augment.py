"""Batched data augmentation on the device.

Datasets live on the device as one tensor (see :mod:`bench.data`), so augmentation
runs there too, on a whole batch at once: no Python loop over images and no host round
trip. An augmentation is a function ``(images, generator) -> images`` that keeps shape,
device and dtype; all randomness comes from the generator, which lives on the images'
device, so a trial's seed fixes its augmented batches.

Registered entries are builders ``builder(image_size) -> Augment``, since padding and
similar parameters depend on the image size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.errors import ConfigError
from bench.registry import Registry

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
AugmentBuilder = Callable[[int], Augment]
AUGMENTS: Registry[AugmentBuilder] = Registry("augment")


def _identity(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x


@AUGMENTS.register("none", "No augmentation: the batch is used as is")
def none(image_size: int) -> Augment:
    """Identity; the baseline every augmentation is compared against."""
    return _identity


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-size+1, 2*size-2] into [0, size) as reflect padding does."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def shift_flip(
    x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Crop each image from its reflect-padded version and optionally mirror it.

    Image ``n`` of the result is the H×W window at offset ``(dy[n], dx[n])`` (each in
    ``[0, 2*pad]``; ``pad`` is the unshifted position) of ``x[n]`` reflect-padded by
    ``pad`` pixels, reversed left-right where ``flip[n]`` is true. The window is
    gathered by index arithmetic on the unpadded batch, so no padded copy is built and
    any dtype works.
    """
    n, _, h, w = x.shape
    if pad >= min(h, w):
        raise ValueError(f"reflect padding by {pad} px needs images larger than that, got {h}×{w}")
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    src_rows = _reflect(dy.view(n, 1) - pad + rows, h)  # (N, H)
    cols = torch.where(flip.view(n, 1), w - 1 - cols, cols)  # mirror, then shift
    src_cols = _reflect(dx.view(n, 1) - pad + cols, w)  # (N, W)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    # Advanced indices separated by a slice put their broadcast dims first: (N, H, W, C).
    out = x[batch, :, src_rows.view(n, h, 1), src_cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class FlipCrop:
    """Random horizontal flip plus random crop after reflect padding (the CIFAR recipe)."""

    pad: int

    def sample(
        self, n: int, generator: torch.Generator, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw per-image crop offsets ``dy, dx`` in ``[0, 2*pad]`` and flip flags."""
        u = torch.rand(3, n, generator=generator, device=device)
        span = 2 * self.pad + 1
        dy = (u[0] * span).long().clamp_(max=span - 1)
        dx = (u[1] * span).long().clamp_(max=span - 1)
        return dy, dx, u[2] < 0.5

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        dy, dx, flip = self.sample(x.shape[0], generator, x.device)
        return shift_flip(x, self.pad, dy, dx, flip)


@AUGMENTS.register(
    "flip-crop",
    "Random horizontal flip (p=0.5) and random crop after reflect padding by "
    "max(1, image_size // 8) px, per image, vectorized over the batch",
    paper="He et al. 2016, Deep Residual Learning for Image Recognition (CIFAR recipe)",
)
def flip_crop(image_size: int) -> Augment:
    """The standard CIFAR augmentation, with padding scaled to the image size."""
    if image_size < 2:
        raise ConfigError(
            f"flip-crop needs images of at least 2×2 pixels, got image_size={image_size}."
        )
    return FlipCrop(pad=max(1, image_size // 8))
