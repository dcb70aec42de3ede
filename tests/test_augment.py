"""Batched augmentations: determinism, shape/dtype/device, and agreement with a slow reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.errors import ConfigError, UnknownNameError
from bench.zoo.augment import AUGMENTS, FlipCrop, shift_flip


def _batch(n: int = 16, c: int = 3, size: int = 16, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(7)).to(dtype)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference(x: Tensor, pad: int, dy: Tensor, dx: Tensor, flip: Tensor) -> Tensor:
    """Per-image crop of the reflect-padded image, then an optional mirror."""
    h, w = x.shape[-2:]
    out = []
    for i in range(x.shape[0]):
        padded = F.pad(x[i : i + 1], (pad, pad, pad, pad), mode="reflect")[0]
        window = padded[:, int(dy[i]) : int(dy[i]) + h, int(dx[i]) : int(dx[i]) + w]
        out.append(window.flip(-1) if flip[i] else window)
    return torch.stack(out)


def _windows(image: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every shifted, possibly mirrored window of one reflect-padded image."""
    h, w = image.shape[-2:]
    padded = F.pad(image[None], (pad, pad, pad, pad), mode="reflect")[0]
    found = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[:, dy : dy + h, dx : dx + w]
            found += [window, window.flip(-1)]
    return found


def test_registry_lists_both_with_descriptions() -> None:
    assert {"none", "flip-crop"} <= set(AUGMENTS.names())
    for entry in AUGMENTS.entries():
        assert entry.description
    with pytest.raises(UnknownNameError, match="flip-crop"):
        AUGMENTS.get("mixup-typo")


def test_none_is_identity() -> None:
    x = _batch()
    assert AUGMENTS.get("none")(16)(x, _gen()) is x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.uint8])
def test_flip_crop_preserves_shape_dtype_device(dtype: torch.dtype) -> None:
    x = _batch(dtype=dtype)
    y = AUGMENTS.get("flip-crop")(16)(x, _gen())
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.is_contiguous()


def test_flip_crop_is_deterministic_given_the_generator() -> None:
    x = _batch(n=64)
    aug = AUGMENTS.get("flip-crop")(16)
    assert torch.equal(aug(x, _gen(3)), aug(x, _gen(3)))
    assert not torch.equal(aug(x, _gen(3)), aug(x, _gen(4)))


def test_padding_scales_with_image_size() -> None:
    assert AUGMENTS.get("flip-crop")(32) == FlipCrop(pad=4)
    assert AUGMENTS.get("flip-crop")(28) == FlipCrop(pad=3)
    assert AUGMENTS.get("flip-crop")(8) == FlipCrop(pad=1)
    with pytest.raises(ConfigError):
        AUGMENTS.get("flip-crop")(1)


def test_zero_shift_without_flip_is_identity() -> None:
    x = _batch()
    pad, n = 2, x.shape[0]
    centre = torch.full((n,), pad)
    assert torch.equal(shift_flip(x, pad, centre, centre, torch.zeros(n, dtype=torch.bool)), x)


def test_zero_shift_with_flip_mirrors() -> None:
    x = _batch()
    pad, n = 2, x.shape[0]
    centre = torch.full((n,), pad)
    flip = torch.ones(n, dtype=torch.bool)
    assert torch.equal(shift_flip(x, pad, centre, centre, flip), x.flip(-1))


def test_shift_flip_matches_per_image_reference() -> None:
    x = _batch(n=40, c=2, size=12)
    pad = 3
    g = _gen(11)
    dy = torch.randint(0, 2 * pad + 1, (40,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (40,), generator=g)
    flip = torch.rand(40, generator=g) < 0.5
    assert torch.equal(shift_flip(x, pad, dy, dx, flip), _reference(x, pad, dy, dx, flip))


def test_random_output_is_the_sampled_window_of_the_padded_input() -> None:
    x = _batch(n=48, c=3, size=16)
    aug = FlipCrop(pad=2)
    y = aug(x, _gen(5))
    dy, dx, flip = aug.sample(48, _gen(5), x.device)
    assert torch.equal(y, _reference(x, aug.pad, dy, dx, flip))
    for image, out in zip(x, y):
        assert any(torch.equal(out, window) for window in _windows(image, aug.pad))


def test_sampled_parameters_cover_all_offsets_and_both_flips() -> None:
    dy, dx, flip = FlipCrop(pad=2).sample(4000, _gen(0), torch.device("cpu"))
    assert set(dy.tolist()) == set(range(5)) == set(dx.tolist())
    assert 0.45 < flip.float().mean().item() < 0.55


def test_flip_crop_works_on_non_square_images() -> None:
    x = torch.randn(5, 1, 10, 14, generator=_gen(1))
    aug = FlipCrop(pad=2)
    dy, dx, flip = aug.sample(5, _gen(2), x.device)
    assert torch.equal(aug(x, _gen(2)), _reference(x, 2, dy, dx, flip))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_flip_crop_on_cuda_matches_cpu() -> None:
    x = _batch(n=32)
    aug = FlipCrop(pad=2)
    g = torch.Generator(device="cuda").manual_seed(0)
    y = aug(x.cuda(), g)
    g = torch.Generator(device="cuda").manual_seed(0)
    dy, dx, flip = aug.sample(32, g, torch.device("cuda"))
    assert y.device.type == "cuda"
    assert torch.equal(y.cpu(), _reference(x, 2, dy.cpu(), dx.cpu(), flip.cpu()))
