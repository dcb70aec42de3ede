"""Augmentations: determinism, shape/dtype/device, agreement with a slow reference, torchvision's
policies image by image in the harness's standardized layout, and mixed (soft) targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.errors import ConfigError, UnknownNameError
from bench.zoo.augment import (
    AUGMENTS,
    AugmentContext,
    FlipCrop,
    LabelPreserving,
    PerImagePolicy,
    shift_flip,
    target_classes,
    value_range,
)


def _batch(n: int = 16, c: int = 3, size: int = 16, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(7)).to(dtype)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _labels(n: int = 16, classes: int = 10) -> Tensor:
    return torch.randint(0, classes, (n,), generator=_gen(99))


def _build(name: str, size: int = 16, low=None, high=None, **options) -> object:
    """The augment with its options (config names; the others at their declared defaults)."""
    assert set(options) <= set(AUGMENTS.entry(name).option_names), f"{name} takes none of {sorted(options)}"
    return AUGMENTS.build(name, options, AugmentContext(image_size=size, num_classes=10, low=low, high=high))


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


def test_registry_lists_every_augment_with_descriptions() -> None:
    assert set(AUGMENTS.names()) == {
        "none", "flip-crop", "autoaugment", "randaugment", "trivialaugment", "mixup", "cutmix", "mixup-cutmix", "dada",
    }
    for entry in AUGMENTS.entries():
        assert entry.description
        assert entry.paper or entry.name == "none"
    with pytest.raises(UnknownNameError, match="flip-crop"):
        AUGMENTS.get("mixup-typo")


def test_none_is_identity() -> None:
    x, y = _batch(), _labels()
    out, targets = _build("none")(x, y, _gen())
    assert out is x and targets is y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.uint8])
def test_flip_crop_preserves_shape_dtype_device(dtype: torch.dtype) -> None:
    x, labels = _batch(dtype=dtype), _labels()
    y, targets = _build("flip-crop")(x, labels, _gen())
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.is_contiguous()
    assert targets is labels


def test_flip_crop_is_deterministic_given_the_generator() -> None:
    x, y = _batch(n=64), _labels(64)
    aug = _build("flip-crop")
    assert torch.equal(aug(x, y, _gen(3))[0], aug(x, y, _gen(3))[0])
    assert not torch.equal(aug(x, y, _gen(3))[0], aug(x, y, _gen(4))[0])


def test_padding_scales_with_image_size() -> None:
    assert _build("flip-crop", 32) == LabelPreserving(FlipCrop(pad=4))
    assert _build("flip-crop", 28) == LabelPreserving(FlipCrop(pad=3))
    assert _build("flip-crop", 8) == LabelPreserving(FlipCrop(pad=1))
    with pytest.raises(ConfigError):
        _build("flip-crop", 1)


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


# -- torchvision's policies, image by image ---------------------------------------------------

POLICIES = ["autoaugment", "randaugment", "trivialaugment"]


def _standardized(n: int = 16, c: int = 1, size: int = 12, seed: int = 0) -> tuple[Tensor, Tensor]:
    """8-bit images spanning 0…255 per channel, standardized per channel as bench.zoo.datasets does;
    returns (standardized, raw)."""
    raw = torch.randint(0, 256, (n, c, size, size), generator=_gen(seed)).float()
    raw[0, :, 0, 0], raw[0, :, 0, 1] = 0, 255
    mean, std = raw.mean(dim=(0, 2, 3), keepdim=True), raw.std(dim=(0, 2, 3), keepdim=True)
    return (raw - mean) / std, raw


def _policy(name: str, x: Tensor, **options) -> object:
    low, high = value_range(x)
    return _build(name, x.shape[-1], low=low, high=high, **options)


class _Record(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Tensor] = []

    def forward(self, image: Tensor) -> Tensor:
        self.seen.append(image.clone())
        return image


def test_policies_see_images_in_unit_range_and_map_back() -> None:
    x, raw = _standardized(c=3)
    low, high = value_range(x)
    record = _Record()
    out = PerImagePolicy(record, low, high)(x, _gen())
    assert len(record.seen) == len(x) and record.seen[0].shape == x.shape[1:]
    torch.testing.assert_close(torch.stack(record.seen), raw / 255, atol=1e-6, rtol=0)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("channels", [1, 3])
def test_policies_keep_shape_dtype_and_value_range(name: str, channels: int) -> None:
    x, _ = _standardized(c=channels)
    y = _labels()
    out, targets = _policy(name, x)(x, y, _gen())
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert targets is y
    low, high = (torch.tensor(v).view(1, -1, 1, 1) for v in value_range(x))
    assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()
    assert not torch.equal(out, x)


@pytest.mark.parametrize("name", POLICIES)
def test_policies_are_deterministic_for_a_seed_and_leave_the_global_stream_alone(name: str) -> None:
    x, _ = _standardized(n=32)
    y = _labels(32)
    aug = _policy(name, x)
    state = torch.get_rng_state()
    first = aug(x, y, _gen(3))[0]
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(12345)  # the global stream does not matter
    assert torch.equal(aug(x, y, _gen(3))[0], first)
    assert not torch.equal(aug(x, y, _gen(4))[0], first)


@pytest.mark.parametrize("name", POLICIES)
def test_policies_draw_an_operation_per_image(name: str) -> None:
    x, _ = _standardized(n=1, size=16)
    batch = x.expand(32, -1, -1, -1).contiguous()  # 32 copies of one image
    low, high = value_range(x)
    out = _build(name, 16, low=low, high=high)(batch, _labels(32), _gen(0))[0]
    distinct = {tuple(image.flatten().tolist()) for image in out}
    assert len(distinct) >= 8


def test_policy_matches_torchvision_image_by_image() -> None:
    from torchvision.transforms import v2

    x, raw = _standardized(n=8, c=3)
    low, high = value_range(x)
    ours = PerImagePolicy(v2.RandAugment(), low, high)(x, _gen(5))
    seed = int(torch.randint(0, 2**62, (), generator=_gen(5)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reference = torch.stack([v2.RandAugment()(image) for image in raw / 255])
    mean, std = raw.mean(dim=(0, 2, 3), keepdim=True), raw.std(dim=(0, 2, 3), keepdim=True)
    torch.testing.assert_close(ours, (reference * 255 - mean) / std, atol=1e-4, rtol=0)


def test_policy_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="autoaugment_policy"):
        _build("autoaugment", autoaugment_policy="mnist")
    with pytest.raises(ConfigError, match="randaugment_magnitude"):
        _build("randaugment", randaugment_magnitude=31)
    with pytest.raises(ConfigError, match="randaugment_ops"):
        _build("randaugment", randaugment_ops=0)
    for policy in ("imagenet", "cifar10", "svhn"):
        x, _ = _standardized()
        assert _policy("autoaugment", x, autoaugment_policy=policy)(x, _labels(), _gen())[0].shape == x.shape


# -- mixing: soft targets ----------------------------------------------------------------------


def _distinct_images(n: int = 8, size: int = 8) -> Tensor:
    """Image i is the constant i + 1: every pixel says which image it came from."""
    return (torch.arange(n, dtype=torch.float32) + 1).view(n, 1, 1, 1).expand(n, 1, size, size).contiguous()


def _classes(n: int = 8) -> Tensor:
    return torch.tensor([3, 1, 4, 0, 5, 9, 2, 6][:n])


@pytest.mark.parametrize("name", ["mixup", "cutmix", "mixup-cutmix"])
def test_mixed_targets_are_probabilities_over_the_two_mixed_labels(name: str) -> None:
    x, y = _distinct_images(), _classes()
    out, targets = _build(name, 8)(x, y, _gen(1))
    assert out.shape == x.shape and targets.shape == (8, 10) and targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
    assert (targets >= 0).all()
    partner = y.roll(1)
    for i in range(8):
        assert set(targets[i].nonzero().flatten().tolist()) <= {int(y[i]), int(partner[i])}


def test_mixup_blends_each_image_with_its_neighbour_by_the_target_weight() -> None:
    x, y = _distinct_images(), _classes()
    out, targets = _build("mixup", 8, mixup_alpha=0.4)(x, y, _gen(2))
    lam = targets[0, y[0]]
    assert 0 < lam < 1
    torch.testing.assert_close(targets[torch.arange(8), y], lam.expand(8))
    torch.testing.assert_close(out, lam * x + (1 - lam) * x.roll(1, 0))


def test_cutmix_target_weight_is_the_area_kept() -> None:
    x, y = _distinct_images(size=16), _classes()
    out, targets = _build("cutmix", 16)(x, y, _gen(4))
    own = (out == x).float().mean(dim=(1, 2, 3))
    from_partner = (out == x.roll(1, 0)).float().mean(dim=(1, 2, 3))
    torch.testing.assert_close(own + from_partner, torch.ones(8))
    torch.testing.assert_close(targets[torch.arange(8), y], own)
    assert 0 < own[0] < 1


def test_mixing_is_deterministic_for_a_seed() -> None:
    x, y = _distinct_images(), _classes()
    aug = _build("mixup", 8)
    a, b, c = aug(x, y, _gen(7)), aug(x, y, _gen(7)), aug(x, y, _gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_target_classes_are_the_dominant_labels() -> None:
    labels = torch.tensor([2, 0, 1])
    assert target_classes(labels) is labels
    soft = torch.tensor([[0.3, 0.0, 0.7], [0.6, 0.4, 0.0], [0.0, 0.45, 0.55]])
    assert target_classes(soft).tolist() == [2, 0, 2]


def test_mixing_alpha_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="mixup_alpha"):
        _build("mixup", mixup_alpha=0.0)
    with pytest.raises(ConfigError, match="cutmix_alpha"):
        _build("mixup-cutmix", cutmix_alpha=-1.0)


# -- the config and the trainer ------------------------------------------------------------------


def test_augment_options_are_inert_unless_their_augment_is_chosen() -> None:
    from bench.spec import TrialConfig

    base = TrialConfig()
    assert TrialConfig(mixup_alpha=0.2, randaugment_magnitude=5, autoaugment_policy="svhn").trial_id == base.trial_id
    assert TrialConfig(augment="mixup", mixup_alpha=0.2).trial_id != TrialConfig(augment="mixup").trial_id
    assert TrialConfig(augment="mixup", cutmix_alpha=0.2).trial_id == TrialConfig(augment="mixup").trial_id
    assert TrialConfig(label_smoothing=0.1).trial_id != base.trial_id
    with pytest.raises(ConfigError, match="autoaugment_policy must be one of imagenet, cifar10, svhn"):
        TrialConfig(autoaugment_policy="mnist")
    with pytest.raises(ConfigError, match="label_smoothing"):
        TrialConfig(label_smoothing=1.0)


def test_the_trainer_uses_soft_targets_and_label_smoothing(monkeypatch) -> None:
    import bench.trial.loop as train_mod
    from bench.spec import TrialConfig

    real = train_mod.F.cross_entropy
    calls: list[tuple[int, float]] = []

    def recording(logits, target, **kw):
        if logits.requires_grad:
            calls.append((target.dim(), kw.get("label_smoothing", 0.0)))
        return real(logits, target, **kw)

    monkeypatch.setattr(train_mod.F, "cross_entropy", recording)
    config = TrialConfig(dataset="synthetic", arch="cnn", width=8, batch_size=64, epochs=1, augment="mixup-cutmix",
                         label_smoothing=0.1)
    result = train_mod.run_trial(config, device="cpu")
    assert result.status == "completed", result.error
    assert calls and all(c == (2, 0.1) for c in calls)
    assert 0 <= result.summary["final_train_acc"] <= 1


@pytest.mark.parametrize("name", POLICIES)
def test_a_trial_with_a_policy_is_reproducible(name: str) -> None:
    from bench.spec import TrialConfig
    from bench.trial import run_trial

    config = TrialConfig(dataset="synthetic", arch="cnn", width=4, batch_size=64, epochs=1, augment=name)
    a, b = run_trial(config, device="cpu"), run_trial(config, device="cpu")
    assert a.status == "completed", a.error
    assert a.epochs[0]["train_loss"] == b.epochs[0]["train_loss"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", [*POLICIES, "mixup", "cutmix"])
def test_augments_run_on_cuda_deterministically(name: str) -> None:
    x, _ = _standardized(n=16, c=3)
    aug = _policy(name, x)
    x, y = x.cuda(), _labels().cuda()
    first = aug(x, y, torch.Generator(device="cuda").manual_seed(0))
    again = aug(x, y, torch.Generator(device="cuda").manual_seed(0))
    assert first[0].device.type == "cuda" and first[0].shape == x.shape and first[0].dtype == x.dtype
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
