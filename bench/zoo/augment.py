"""Data augmentation, by name (the ``augment`` choice).

Datasets live on the device as one tensor (see :mod:`bench.zoo.datasets`), so augmentation runs
on a whole batch at a time. An augmentation is a function
``(images, labels, generator) -> (images, targets)``: images keep their shape, device and
dtype; targets are the labels (N,) int64 class indices, unchanged by label-preserving
augmentations, or (N, K) float class probabilities summing to one per row after mixing
(mixup, cutmix), which the trainer's cross-entropy accepts as they are. All randomness
comes from the trial's generator, so a trial's seed fixes its augmented batches.

Registered entries are builders ``builder(context, **options) -> Augment`` taking an
:class:`AugmentContext` (image size, classes, the training images' value range) and the
options they declare.

- ``flip-crop``: the CIFAR recipe, vectorized over the batch (index arithmetic, no loop).
- ``autoaugment``, ``randaugment``, ``trivialaugment``: torchvision's
  ``transforms.v2`` policies. torchvision draws one random operation per call, so a
  batched tensor would get the same operation on every image; here the policy is
  called image by image. The policies expect images in [0, 1] (or uint8), while the
  harness holds images standardized per channel, x = (raw − mean) / std, an affine map of
  the raw pixels: each channel is mapped to [0, 1] by the per-channel minimum and maximum
  of the training images (for 8-bit datasets whose pixels span 0…255 this is exactly
  raw / 255), the policy is applied (areas that geometric operations uncover are filled
  with 0, the channel's minimum, torchvision's default), and the result is mapped back.
  They run on the CPU, the batch copied there and back (per-image operations on a
  28-pixel image cannot keep a GPU busy), under torch's CPU random stream seeded from the
  trial's generator and restored afterwards. One-channel images work (colour operations
  leave them unchanged).
- ``mixup``, ``cutmix``, ``mixup-cutmix``: torchvision's ``MixUp`` / ``CutMix`` (one λ ~
  Beta(α, α) per batch, each image mixed with its neighbour in the batch), the last
  choosing one of the two per batch, as torchvision's reference recipe does; the targets
  become probabilities.

Label smoothing is not an entry here: it is the ``label_smoothing`` config field, applied
by the loss (``F.cross_entropy(..., label_smoothing=ε)``), so it combines with any
augmentation, mixing ones included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import ConfigError
from bench.zoo.registry import AUGMENTS, Option

Augment = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
ImageOp = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
AUTOAUGMENT_POLICIES = ("imagenet", "cifar10", "svhn")  # torchvision's AutoAugmentPolicy values
MAGNITUDE_BINS = 31  # torchvision's default number of magnitude levels (RandAugment: magnitude 0–30)


@dataclass(frozen=True)
class AugmentContext:
    """What a builder may need. ``low`` / ``high``: per-channel minimum and maximum of the
    training images in the harness's standardized layout (:func:`value_range`); None
    where no data is at hand (validation before a trial), which is enough to build."""

    image_size: int
    num_classes: int
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None


MIXUP_ALPHA = Option("mixup_alpha", float, 1.0, "mixup: λ ~ Beta(α, α)", gt=0)
CUTMIX_ALPHA = Option("cutmix_alpha", float, 1.0, "CutMix: λ ~ Beta(α, α)", gt=0)


def value_range(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel minimum and maximum of a batch of images (N, C, H, W)."""
    return tuple(x.amin(dim=(0, 2, 3)).tolist()), tuple(x.amax(dim=(0, 2, 3)).tolist())


def target_classes(targets: torch.Tensor) -> torch.Tensor:
    """The class each target stands for: the label itself, or for a mixed target the class
    with the largest probability (the dominant label: for mixup/cutmix with λ ≥ 0.5 the
    image's own label, else its partner's)."""
    return targets if targets.dim() == 1 else targets.argmax(dim=1)


def _draw_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))


@contextlib.contextmanager
def _cpu_stream(seed: int) -> Iterator[None]:
    """torchvision's transforms draw from torch's default CPU generator: seed it for the
    duration and restore its state afterwards (other devices' streams are untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


@dataclass(frozen=True)
class LabelPreserving:
    """An image-only augmentation ``(images, generator) -> images`` as an :data:`Augment`."""

    op: ImageOp

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.op(x, generator), y


def _identity(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return x, y


@AUGMENTS.register("none", "No augmentation: the batch is used as is")
def none(context: AugmentContext) -> Augment:
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
def flip_crop(context: AugmentContext) -> Augment:
    """The standard CIFAR augmentation, with padding scaled to the image size."""
    if context.image_size < 2:
        raise ConfigError(
            f"flip-crop needs images of at least 2×2 pixels, got image_size={context.image_size}."
        )
    return LabelPreserving(FlipCrop(pad=max(1, context.image_size // 8)))


# --------------------------------------------------------------------------------------
# torchvision's policies, image by image
# --------------------------------------------------------------------------------------


class PerImagePolicy:
    """A torchvision policy applied to each image of the batch on its own.

    Channel c is mapped to [0, 1] by u = (x − low_c) / (high_c − low_c), the policy runs
    on each image of u on the CPU with the CPU stream seeded from ``generator``, and the
    results are mapped back by x = low_c + u · (high_c − low_c) to the input's device and
    dtype. A constant channel (high_c = low_c) is mapped with a unit span.
    """

    def __init__(self, policy: nn.Module, low: tuple[float, ...] | None, high: tuple[float, ...] | None):
        self.policy, self.low, self.high = policy, low, high

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.low is None or self.high is None or len(self.low) != x.shape[1]:
            raise ValueError(
                f"{type(self.policy).__name__} needs the per-channel value range of the {x.shape[1]}-channel "
                "training images (AugmentContext.low / high, see value_range)"
            )
        low = torch.tensor(self.low, dtype=torch.float32).view(1, -1, 1, 1)
        span = torch.tensor(self.high, dtype=torch.float32).view(1, -1, 1, 1) - low
        span = torch.where(span > 0, span, torch.ones_like(span))
        unit = ((x.detach().to("cpu", torch.float32) - low) / span).clamp_(0.0, 1.0)
        with _cpu_stream(_draw_seed(generator)):
            out = torch.stack([self.policy(image) for image in unit])
        return (out * span + low).to(x.device, x.dtype)

    def __repr__(self) -> str:
        return f"PerImagePolicy({self.policy!r})"


@AUGMENTS.register(
    "autoaugment",
    "AutoAugment: torchvision's learned policy (autoaugment_policy: imagenet, cifar10 (default) or svhn), "
    "one random sub-policy per image",
    paper="Cubuk et al. 2019, arXiv:1805.09501",
    options=(
        Option("autoaugment_policy", str, "cifar10", "the learned policy torchvision ships", choices=AUTOAUGMENT_POLICIES),
    ),
)
def autoaugment(context: AugmentContext, *, autoaugment_policy: str) -> Augment:
    from torchvision.transforms import v2

    if autoaugment_policy not in AUTOAUGMENT_POLICIES:
        raise ConfigError(
            f"autoaugment_policy must be one of {', '.join(AUTOAUGMENT_POLICIES)} (the policies torchvision ships); "
            f"got {autoaugment_policy!r}."
        )
    policy = v2.AutoAugment(v2.AutoAugmentPolicy(autoaugment_policy))
    return LabelPreserving(PerImagePolicy(policy, context.low, context.high))


@AUGMENTS.register(
    "randaugment",
    "RandAugment: randaugment_ops random operations (default 2) at magnitude randaugment_magnitude "
    "(0–30, default 9) per image, torchvision's implementation",
    paper="Cubuk et al. 2020, arXiv:1909.13719",
    options=(
        Option("randaugment_ops", int, 2, "RandAugment N: operations per image", ge=1),
        Option("randaugment_magnitude", int, 9, "RandAugment M (torchvision's 31 magnitude bins)", ge=0, lt=MAGNITUDE_BINS),
    ),
)
def randaugment(context: AugmentContext, *, randaugment_ops: int, randaugment_magnitude: int) -> Augment:
    from torchvision.transforms import v2

    if randaugment_ops < 1:
        raise ConfigError(f"randaugment_ops (operations per image) must be ≥ 1; got {randaugment_ops}.")
    if not 0 <= randaugment_magnitude < MAGNITUDE_BINS:
        raise ConfigError(
            f"randaugment_magnitude must lie in 0–{MAGNITUDE_BINS - 1} (torchvision's magnitude bins); "
            f"got {randaugment_magnitude}."
        )
    policy = v2.RandAugment(num_ops=randaugment_ops, magnitude=randaugment_magnitude)
    return LabelPreserving(PerImagePolicy(policy, context.low, context.high))


@AUGMENTS.register(
    "trivialaugment",
    "TrivialAugment (wide): one random operation at a random magnitude per image, torchvision's "
    "TrivialAugmentWide",
    paper="Müller & Hutter 2021, arXiv:2103.10158",
)
def trivialaugment(context: AugmentContext) -> Augment:
    from torchvision.transforms import v2

    return LabelPreserving(PerImagePolicy(v2.TrivialAugmentWide(), context.low, context.high))


# --------------------------------------------------------------------------------------
# Mixing augmentations: soft targets
# --------------------------------------------------------------------------------------


class Mixing:
    """torchvision's MixUp / CutMix (or a random choice of them) on the batch: one λ per
    batch, image i mixed with image i − 1; the targets become class probabilities
    λ·onehot(y_i) + (1 − λ)·onehot(y_{i−1}) (CutMix: λ the area actually kept)."""

    def __init__(self, transform: nn.Module):
        self.transform = transform

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        with _cpu_stream(_draw_seed(generator)):
            return self.transform(x, y)

    def __repr__(self) -> str:
        return f"Mixing({self.transform!r})"


def _alpha(name: str, value: float) -> float:
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name} is the α of λ ~ Beta(α, α), so it must be a finite number > 0; got {value}.")
    return value


def _mixup(context: AugmentContext, alpha: float) -> nn.Module:
    from torchvision.transforms import v2

    return v2.MixUp(alpha=_alpha("mixup_alpha", alpha), num_classes=context.num_classes)


def _cutmix(context: AugmentContext, alpha: float) -> nn.Module:
    from torchvision.transforms import v2

    return v2.CutMix(alpha=_alpha("cutmix_alpha", alpha), num_classes=context.num_classes)


@AUGMENTS.register(
    "mixup",
    "mixup: each image blended with its batch neighbour, λ ~ Beta(mixup_alpha, mixup_alpha) per batch "
    "(default α 1), soft targets",
    paper="Zhang et al. 2018, arXiv:1710.09412",
    options=(MIXUP_ALPHA,),
)
def mixup(context: AugmentContext, *, mixup_alpha: float) -> Augment:
    return Mixing(_mixup(context, mixup_alpha))


@AUGMENTS.register(
    "cutmix",
    "CutMix: a box of each image replaced by its batch neighbour's, area 1 − λ, λ ~ Beta(cutmix_alpha, "
    "cutmix_alpha) per batch (default α 1), soft targets",
    paper="Yun et al. 2019, arXiv:1905.04899",
    options=(CUTMIX_ALPHA,),
)
def cutmix(context: AugmentContext, *, cutmix_alpha: float) -> Augment:
    return Mixing(_cutmix(context, cutmix_alpha))


@AUGMENTS.register(
    "mixup-cutmix",
    "mixup or CutMix, chosen with equal probability per batch (torchvision's reference recipe), soft targets",
    paper="Zhang et al. 2018, arXiv:1710.09412; Yun et al. 2019, arXiv:1905.04899",
    options=(MIXUP_ALPHA, CUTMIX_ALPHA),
)
def mixup_cutmix(context: AugmentContext, *, mixup_alpha: float, cutmix_alpha: float) -> Augment:
    from torchvision.transforms import v2

    return Mixing(v2.RandomChoice([_mixup(context, mixup_alpha), _cutmix(context, cutmix_alpha)]))
