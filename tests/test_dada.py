"""DADA's published policies against the authors' repository (VDIGPKU/DADA, commit 7e113677):
the policy lists verbatim (``fast-autoaugment/FastAutoAugment/genotype.py``), the value ranges
and the application rule (``augmentations.py``: ``augment_list``, ``apply_augment``;
``data.py``: ``Augmentation``), and each operation against a PIL re-implementation of the
authors' operation functions (``ShearX`` ... ``CutoutAbs``)."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageEnhance
import PIL.ImageOps
import pytest
import torch

import bench.zoo.dada as dada
from bench.errors import ConfigError
from bench.spec import DEFAULTS, TrialConfig
from bench.zoo.augment import AUGMENTS, AugmentContext, value_range

# sha256 of repr() of each list as parsed from the authors' genotype.py (a list of lists of tuples)
AUTHORS_DIGESTS = {
    "cifar10": "3891be9122c2010faa9b121c8b61cd497390cc0119c79fa5d485826423014263",
    "cifar100": "44c575df5395c53c13ae932ef4a0965987673d62089c06a07c2bc7ba9c93866d",
    "svhn": "be432d383bf2858bdaef48f338f9494145ab52446a0cd1a142f477128b232979",
    "imagenet": "79257eab47d979b57ce6b11b2bb1b6ae38020df1f5f5c2cd4b15ca3d5cc07605",
}
# first and last sub-policy of each list, copied from the same file
AUTHORS_ENDS = {
    "cifar10": ([("TranslateX", 0.5183464288711548, 0.5752825736999512), ("Rotate", 0.5693835616111755, 0.5274667739868164)],
                [("ShearX", 0.5757555961608887, 0.563892662525177), ("TranslateX", 0.4761257469654083, 0.49035176634788513)]),
    "cifar100": ([("ShearY", 0.5558360815048218, 0.2755777835845947), ("Sharpness", 0.4881928265094757, 0.21691159904003143)],
                 [("ShearY", 0.4626863896846771, 0.08647401630878448), ("Posterize", 0.5513173341751099, 0.3414877951145172)]),
    "svhn": ([("Solarize", 0.6144442558288574, 0.5266356468200684), ("Brightness", 0.6407432556152344, 0.49594756960868835)],
             [("Rotate", 0.5409624576568604, 0.5262851119041443), ("Equalize", 0.5241876244544983, 0.5)]),
    "imagenet": ([("TranslateY", 0.8485236167907715, 0.6384843587875366), ("Contrast", 0.6994985342025757, 0.4658013582229614)],
                 [("Posterize", 0.1463455855846405, 0.3278478980064392), ("Color", 0.49619558453559875, 0.5923987030982971)]),
}
# augment_list() of the authors' augmentations.py (the operations the policies use)
AUTHORS_RANGES = {
    "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3), "TranslateX": (-0.45, 0.45), "TranslateY": (-0.45, 0.45),
    "Rotate": (-30, 30), "AutoContrast": (0, 1), "Invert": (0, 1), "Equalize": (0, 1), "Solarize": (0, 256),
    "Posterize": (4, 8), "Contrast": (0.1, 1.9), "Color": (0.1, 1.9), "Brightness": (0.1, 1.9),
    "Sharpness": (0.1, 1.9), "Cutout": (0, 0.2),
}


# -- the policies, verbatim ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(AUTHORS_DIGESTS))
def test_policies_are_the_authors_lists_verbatim(name):
    policy = dada.POLICIES[name]
    as_authors = [list(sub) for sub in policy]  # their layout: a list of lists of (op, probability, level)
    assert hashlib.sha256(repr(as_authors).encode()).hexdigest() == AUTHORS_DIGESTS[name]
    assert (as_authors[0], as_authors[-1]) == AUTHORS_ENDS[name]
    assert len(policy) == 25 and all(len(sub) == 2 for sub in policy)
    assert all(0 <= p <= 1 and 0 <= m <= 1 and op in AUTHORS_RANGES for sub in policy for op, p, m in sub)


def test_ranges_and_the_level_to_value_map_are_the_authors():
    assert dada.RANGES == AUTHORS_RANGES
    for op, (low, high) in AUTHORS_RANGES.items():
        for level in (-0.2, 0.0, 0.3, 0.5, 1.0, 1.7):  # apply_augment clips the level to [0, 1]
            assert dada.value(op, level) == pytest.approx(min(max(level, 0), 1) * (high - low) + low)
    assert dada.value("ShearX", 0.5) == 0 and dada.value("Contrast", 0.5) == pytest.approx(1.0)
    assert dada.MIRRORED == {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}


# -- each operation against the authors' PIL functions --------------------------------------------


def authors_op(img: PIL.Image.Image, name: str, v: float) -> PIL.Image.Image:
    """The authors' operation at value v (after their random sign), as in augmentations.py."""
    w, h = img.size
    if name == "ShearX":
        return img.transform(img.size, PIL.Image.AFFINE, (1, v, 0, 0, 1, 0))
    if name == "ShearY":
        return img.transform(img.size, PIL.Image.AFFINE, (1, 0, 0, v, 1, 0))
    if name == "TranslateX":
        return img.transform(img.size, PIL.Image.AFFINE, (1, 0, v * w, 0, 1, 0))
    if name == "TranslateY":
        return img.transform(img.size, PIL.Image.AFFINE, (1, 0, 0, 0, 1, v * h))
    if name == "Rotate":
        return img.rotate(v)
    if name in ("AutoContrast", "Invert", "Equalize"):
        return {"AutoContrast": PIL.ImageOps.autocontrast, "Invert": PIL.ImageOps.invert,
                "Equalize": PIL.ImageOps.equalize}[name](img)
    if name == "Solarize":
        return PIL.ImageOps.solarize(img, v)
    if name == "Posterize":
        return PIL.ImageOps.posterize(img, int(v))
    enhancer = {"Contrast": PIL.ImageEnhance.Contrast, "Color": PIL.ImageEnhance.Color,
                "Brightness": PIL.ImageEnhance.Brightness, "Sharpness": PIL.ImageEnhance.Sharpness}[name]
    return enhancer(img).enhance(v)


def authors_cutout(img: PIL.Image.Image, v: float, ux: float, uy: float) -> PIL.Image.Image:
    """Cutout/CutoutAbs with np.random.uniform(w) = w + (1 − w)·u."""
    if v <= 0:
        return img
    v = v * img.size[0]
    w, h = img.size
    x0, y0 = w + (1 - w) * ux, h + (1 - h) * uy
    x0, y0 = int(max(0, x0 - v / 2.0)), int(max(0, y0 - v / 2.0))
    x1, y1 = min(w, x0 + v), min(h, y0 + v)
    img = img.copy()
    PIL.ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), (125, 123, 114))
    return img


def _ours(arr: np.ndarray, name: str, level: float, draws: list[float], monkeypatch) -> np.ndarray:
    stream = iter(draws)
    monkeypatch.setattr(dada, "_uniform", lambda: next(stream))
    out = dada.apply_op(torch.from_numpy(arr).permute(2, 0, 1).contiguous(), name, level)
    return out.permute(1, 2, 0).numpy().astype(int)


EXACT = ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Invert", "Equalize", "Solarize", "Posterize",
         "Brightness"]
ONE_LEVEL = ["AutoContrast", "Contrast", "Color", "Sharpness"]  # torchvision's PIL emulation rounds differently


@pytest.mark.parametrize("name", EXACT + ONE_LEVEL)
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_each_operation_is_the_authors_pil_operation(name, mode, monkeypatch):
    rng = np.random.default_rng(0)
    channels = 3 if mode == "RGB" else 1
    for level in (0.0, 0.13, 0.37, 0.5, 0.61, 0.83, 1.0):
        for flip in (False, True):
            arr = rng.integers(0, 256, (24, 20, channels), dtype=np.uint8)
            img = PIL.Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
            v = dada.value(name, level)
            expected = np.asarray(authors_op(img, name, -v if flip and name in dada.MIRRORED else v)).astype(int)
            expected = expected.reshape(arr.shape)
            got = _ours(arr, name, level, [0.9 if flip else 0.1], monkeypatch)
            diff = np.abs(got - expected).max()
            assert diff == 0 if name in EXACT else diff <= 1, (name, level, flip, diff)


def test_cutout_is_the_authors_square_with_their_centre_draw(monkeypatch):
    rng = np.random.default_rng(1)
    for _ in range(200):
        w = int(rng.integers(8, 40))
        arr = rng.integers(0, 256, (w, w, 3), dtype=np.uint8)
        level, ux, uy = float(rng.uniform()), float(rng.uniform()), float(rng.uniform())
        expected = np.asarray(authors_cutout(PIL.Image.fromarray(arr), dada.value("Cutout", level), ux, uy))
        assert np.array_equal(_ours(arr, "Cutout", level, [ux, uy], monkeypatch), expected)


# -- how a policy is applied ------------------------------------------------------------------------


def test_one_sub_policy_per_image_each_operation_with_its_probability(monkeypatch):
    """The authors' Augmentation: a uniform sub-policy, then each operation, in order, when
    U[0, 1) ≤ its probability. Counted over many images with the operations recorded."""
    applied: list[tuple[str, float]] = []
    monkeypatch.setattr(dada, "apply_op", lambda img, name, level: applied.append((name, level)) or img)
    policy = dada.DadaPolicy("cifar10")
    image = torch.rand(3, 8, 8)
    n = 25_000
    torch.manual_seed(0)
    subs = [[(name, level) for name, _, level in sub] for sub in dada.POLICIES["cifar10"]]
    for _ in range(n):
        start = len(applied)
        policy(image)
        ops = applied[start:]  # what one image got: some of one sub-policy's operations, in its order
        assert any(ops in ([], sub[:1], sub[1:], sub) for sub in subs), ops
    counts = Counter(applied)
    expected: Counter = Counter()
    for sub in dada.POLICIES["cifar10"]:
        for name, probability, level in sub:
            expected[(name, level)] += probability / 25
    for key, rate in expected.items():
        sd = math.sqrt(n * rate * (1 - rate))
        assert abs(counts[key] - n * rate) < 5 * sd, (key, counts[key], n * rate)


def test_an_image_no_operation_touches_is_returned_unquantized(monkeypatch):
    monkeypatch.setattr(dada, "_uniform", lambda: 1.0)  # U > every probability: nothing applies
    image = torch.rand(3, 8, 8)
    assert dada.DadaPolicy("svhn")(image) is image


# -- the registry entry in the harness -----------------------------------------------------------


def _standardized(n=16, c=3, size=12, seed=0):
    raw = torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(seed)).float()
    raw[0, :, 0, 0], raw[0, :, 0, 1] = 0, 255
    mean, std = raw.mean(dim=(0, 2, 3), keepdim=True), raw.std(dim=(0, 2, 3), keepdim=True)
    return (raw - mean) / std, raw


def _build(x, **options):
    low, high = value_range(x)
    return AUGMENTS.build("dada", options, AugmentContext(image_size=x.shape[-1], num_classes=10, low=low, high=high))


@pytest.mark.parametrize("policy", list(AUTHORS_DIGESTS))
@pytest.mark.parametrize("channels", [1, 3])
def test_the_entry_keeps_shape_dtype_range_and_is_seeded(policy, channels):
    x, raw = _standardized(c=channels)
    y = torch.arange(16) % 10
    aug = _build(x, dada_policy=policy)
    g = torch.Generator().manual_seed(3)
    state = torch.get_rng_state()
    out, targets = aug(x, y, g)
    assert torch.equal(torch.get_rng_state(), state) and targets is y
    assert out.shape == x.shape and out.dtype == x.dtype and not torch.equal(out, x)
    low, high = (torch.tensor(v).view(1, -1, 1, 1) for v in value_range(x))
    assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()
    assert torch.equal(aug(x, y, torch.Generator().manual_seed(3))[0], out)
    # 8-bit images come back on the 8-bit grid: the operations ran on the raw pixels
    mean, std = raw.mean(dim=(0, 2, 3), keepdim=True), raw.std(dim=(0, 2, 3), keepdim=True)
    pixels = out * std + mean
    assert torch.allclose(pixels, pixels.round(), atol=2e-3)


def test_the_option_and_its_default():
    assert DEFAULTS["dada_policy"] == "cifar10"
    assert AUGMENTS.entry("dada").option_names == ("dada_policy",)
    assert TrialConfig(augment="dada", dada_policy="svhn").trial_id != TrialConfig(augment="dada").trial_id
    with pytest.raises(ConfigError, match="dada_policy must be one of cifar10, cifar100, svhn, imagenet"):
        TrialConfig(augment="dada", dada_policy="mnist")
    with pytest.raises(ConfigError, match="dada_policy"):
        dada.DadaPolicy("mnist")
