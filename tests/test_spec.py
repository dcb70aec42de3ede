from __future__ import annotations

import math
import textwrap

import pytest

from bench.errors import ConfigError, UnknownNameError
from pathlib import Path

from bench.spec import TrialConfig, from_mapping, list_specs, load_spec, parse_assignment, scaled_lr

ABLATIONS = Path(__file__).resolve().parent.parent / "ablations"


def write(tmp_path, text: str):
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(text))
    return path


SPEC = """
    name: demo
    description: a demo
    base: {dataset: synthetic, epochs: 1, lr: 0.1, lr_scaling: linear, lr_base_batch: 16}
    axes:
      norm: [bn, gn]
      batch_size: [4, 16]
    repeats: 2
    report: {rows: norm, columns: batch_size, metric: final_val_acc}
    profiles:
      quick: {base: {epochs: 2}, axes: {batch_size: [8]}, repeats: 1}
"""


def test_trial_id_is_a_stable_hash_of_the_full_config():
    a = TrialConfig(norm="gn", batch_size=4)
    b = from_mapping({"batch_size": 4, "norm": "gn"})
    assert a.trial_id == b.trial_id and len(a.trial_id) == 16
    assert a.trial_id != TrialConfig(norm="gn", batch_size=4, seed=1).trial_id
    # spelling out a default is the same trial
    assert TrialConfig(norm="gn", batch_size=4, epochs=5).trial_id == a.trial_id
    assert a.canonical() == {"norm": "gn", "batch_size": 4}


def test_defaults_and_ids_are_pinned():
    """Trial ids leave defaults out, so a default must never change (stored results would
    silently mean something else). Adding an option with a default is fine: its
    technique's own test pins it (e.g. tests/test_frn.py); these must stay as they are."""
    from bench.spec import DEFAULTS

    pinned = {
        "dataset": "digits", "train_subset": None, "val_subset": None, "augment": "none", "arch": "cnn", "width": None,
        "depth": None, "norm": "bn", "norm_groups": 8, "norm_group_size": None, "norm_affine": True, "norm_eps": 1e-5,
        "norm_momentum": 0.1, "norm_virtual_batch": None, "renorm_rmax": 3.0, "renorm_dmax": 5.0, "renorm_start": 5000,
        "renorm_rmax_at": 40000, "renorm_dmax_at": 25000, "conv": "standard", "wn_init": False, "train_only_norm": False,
        "agc_clip": 0.0, "nf_alpha": 0.2, "optimizer": "sgd",
        "lr": 0.05, "lr_scaling": "linear", "lr_base_batch": 32, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
        "beta1": 0.9, "beta2": 0.999, "schedule": "cosine", "warmup_epochs": 0.0, "lr_milestones": [0.5, 0.75],
        "lr_gamma": 0.1, "batch_size": 32, "epochs": 5, "seed": 0, "diverge_factor": 10.0, "log_steps": False,
    } | {
        # optimizer and schedule options
        "optimizer_eps": None, "weight_decay_mode": "native", "wd_exclude_1d": False, "lars_eta": 0.001,
        "rmsprop_alpha": 0.99, "adadelta_rho": 0.9, "adax_beta2": 1e-4, "adabound_final_lr": 0.1,
        "adabound_gamma": 0.001, "lawn": False, "lawn_free_epochs": 1.0, "lawn_layers": 1, "sgdr_t0": 1.0,
        "sgdr_t_mult": 2.0, "poly_power": 2.0, "onecycle_pct": 0.3, "onecycle_div": 25.0, "onecycle_final_div": 10000.0,
    } | {
        # augmentation and loss options; vision transformer
        "label_smoothing": 0.0, "mixup_alpha": 1.0, "cutmix_alpha": 1.0, "autoaugment_policy": "cifar10",
        "randaugment_ops": 2, "randaugment_magnitude": 9, "patch_size": 4, "vit_heads": 4, "vit_mlp_ratio": 2.0,
        "vit_pos_embed": "learned", "vit_cls_token": True, "vit_freeze_patch": False, "vit_conv_stem": False,
        "vit_residual_scale": 1.0, "drop_path": 0.0, "vit_mlp_head": False,
    }
    assert {k: DEFAULTS.get(k, "missing") for k in pinned} == pinned
    assert TrialConfig().trial_id == "44136fa355b3678a"
    # options that do nothing for a trial do not change its id
    assert TrialConfig(norm="bn", norm_groups=4).trial_id == TrialConfig(norm="bn").trial_id
    assert TrialConfig(norm="gn", norm_groups=4).trial_id != TrialConfig(norm="gn").trial_id
    assert TrialConfig(norm="gn", batch_size=2, dataset="fashion-mnist").trial_id == "5da90a3840c3c9f6"


def test_expand_is_the_cartesian_product_times_seeds(tmp_path):
    spec = load_spec(write(tmp_path, SPEC))
    trials = spec.expand()
    assert len(trials) == 2 * 2 * 2
    assert [(t.norm, t.batch_size, t.seed) for t in trials[:3]] == [("bn", 4, 0), ("bn", 4, 1), ("bn", 16, 0)]
    assert len({t.trial_id for t in trials}) == 8


def test_linear_lr_scaling_is_derived_from_the_batch_size(tmp_path):
    trials = load_spec(write(tmp_path, SPEC)).expand()
    by_batch = {t.batch_size: t.effective_lr for t in trials}
    assert by_batch == {4: pytest.approx(0.025), 16: pytest.approx(0.1)}
    assert scaled_lr(0.1, 64, 16, "sqrt") == pytest.approx(0.2)
    assert scaled_lr(0.1, 64, 16, "none") == 0.1


def test_profile_overrides_base_axes_and_repeats(tmp_path):
    spec = load_spec(write(tmp_path, SPEC), profile="quick")
    trials = spec.expand()
    assert spec.key == "demo@quick"
    assert [(t.norm, t.batch_size, t.epochs, t.seed) for t in trials] == [("bn", 8, 2, 0), ("gn", 8, 2, 0)]


def test_command_line_override_of_an_axis_fixes_it(tmp_path):
    spec = load_spec(write(tmp_path, SPEC), overrides={"batch_size": 4, "epochs": 3})
    trials = spec.expand()
    assert {t.batch_size for t in trials} == {4} and {t.epochs for t in trials} == {3}
    assert len(trials) == 4


def test_zip_axes_vary_together(tmp_path):
    path = write(tmp_path, """
        name: z
        base: {dataset: synthetic}
        axes: {norm: [gn]}
        zip: {norm_groups: [1, 2, 4], width: [8, 16, 32]}
    """)
    trials = load_spec(path).expand()
    assert [(t.norm_groups, t.width) for t in trials] == [(1, 8), (2, 16), (4, 32)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nbase: {norm: batchnorm}\naxes: {}", "Unknown norm 'batchnorm'. Valid norm names: bcn, bn, "),
        ("name: x\nbase: {}\naxes: {optimizer: [sgd, lion]}", "Unknown optimizer 'lion'"),
        ("name: x\nbase: {arch: vgg99}\naxes: {}", "Unknown arch 'vgg99'"),
        ("name: x\nbase: {dataset: imagenet}\naxes: {}", "Unknown dataset 'imagenet'"),
        ("name: x\nbase: {schedule: cyclic}\naxes: {}", "Unknown schedule 'cyclic'"),
        ("name: x\nbase: {}\naxes: {}\nrepeat: 3", "Unknown study spec key 'repeat'. Valid study spec key names"),
        ("name: x\nbase: {batchsize: 3}\naxes: {}", "Unknown base config key 'batchsize'"),
        ("name: x\nbase: {}\naxes: {batch_size: [2, 0]}", "batch_size must be an integer ≥ 1; got batch_size=0"),
        ("name: x\nbase: {lr: -0.1}\naxes: {}", "lr must be a number ≥ 0; got lr=-0.1"),
        ("name: x\nbase: {lr: .inf}\naxes: {}", "lr must be a finite number ≥ 0; got lr=inf"),
        ("name: x\nbase: {batch_size: eight}\naxes: {}", "batch_size must be an integer; got 'eight'"),
        ("name: x\nbase: {}\naxes: {norm: gn}", "Axis 'norm' must be a non-empty list"),
        ("name: x\nbase: {}\naxes: {}\nrepeats: 0", "repeats must be a positive integer"),
    ],
)
def test_invalid_specs_fail_with_a_clear_message(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_spec(write(tmp_path, text)).expand()
    assert message in str(info.value)


def test_unknown_profile_lists_profiles(tmp_path):
    with pytest.raises(ConfigError, match="no profile 'full'. Profiles: default, quick"):
        load_spec(write(tmp_path, SPEC), profile="full")


def test_unknown_study_lists_studies(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\n")
    with pytest.raises(UnknownNameError, match="Valid study names: a"):
        load_spec("b", search=tmp_path)


def test_set_values_are_read_as_yaml():
    assert parse_assignment("batch_size=8") == ("batch_size", 8)
    assert from_mapping(dict([parse_assignment("lr=1e-3")])).lr == 0.001
    assert parse_assignment("nesterov=true") == ("nesterov", True)
    assert parse_assignment("lr_milestones=[0.3, 0.6]") == ("lr_milestones", [0.3, 0.6])
    assert parse_assignment("dataset=cifar10") == ("dataset", "cifar10")
    assert from_mapping({"lr_milestones": [0.3, 0.6]}).lr_milestones == (0.3, 0.6)
    with pytest.raises(UnknownNameError, match="Unknown config key 'epoch'"):  # refused where it is used
        from_mapping(dict([parse_assignment("epoch=3")]))
    with pytest.raises(UnknownNameError, match="Unknown --set key 'epoch'"):
        load_spec(ABLATIONS / "norm-vs-batch.yaml", overrides=dict([parse_assignment("epoch=3")]))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignment("epochs")


def test_values_are_validated():
    for bad in ({"momentum": 1.0}, {"lr": math.nan}, {"lr": math.inf}, {"epochs": 0}, {"warmup_epochs": 9, "epochs": 2},
                {"lr_scaling": "quadratic"}, {"nesterov": "yes"}):
        with pytest.raises(ConfigError):
            from_mapping(bad)


def test_shipped_studies_expand():
    spec = load_spec("norm-vs-batch")
    assert len(spec.expand()) == 2 * 5 * 3
    assert len(load_spec("norm-vs-batch", profile="quick").expand()) == 2 * 5
    assert len(load_spec("norm-vs-batch", profile="single-device").expand()) == 5 * 6 * 3


@pytest.mark.parametrize("path", list_specs(), ids=lambda p: p.stem)
def test_every_shipped_study_validates_in_every_profile(path):
    """Spec files are data: this catches a study that no longer loads, names a technique
    that is not registered, or builds a model that cannot work."""
    from bench.grid import validate

    spec = load_spec(path)
    for profile in ("default", *spec.profiles):
        trials = load_spec(path, profile=profile).expand()
        assert trials
        validate(trials)


def test_variants_are_named_combinations_crossed_with_the_axes(tmp_path):
    path = write(tmp_path, """
        name: v
        base: {dataset: synthetic, norm_groups: 4}
        variants:
          bn: {norm: bn}
          gn+ws: {norm: gn, conv: ws}
        axes: {batch_size: [8, 16]}
        repeats: 2
    """)
    spec = load_spec(path)
    trials = spec.expand()
    assert len(trials) == 2 * 2 * 2
    labels = spec.variant_of()
    assert [(labels[t.trial_id], t.norm, t.conv, t.batch_size) for t in trials[::2]] == [
        ("bn", "bn", "standard", 8), ("bn", "bn", "standard", 16), ("gn+ws", "gn", "ws", 8), ("gn+ws", "gn", "ws", 16)
    ]
    # a variant may pin an axis (duplicates collapse to one trial)
    pinned = write(tmp_path, """
        name: p
        base: {dataset: synthetic}
        variants: {bn: {norm: bn}, bn-at-16: {norm: bn, batch_size: 16, momentum: 0.5}}
        axes: {batch_size: [8, 32]}
    """)
    spec2 = load_spec(pinned)
    assert sorted((spec2.variant_of()[t.trial_id], t.batch_size) for t in spec2.expand()) == [
        ("bn", 8), ("bn", 32), ("bn-at-16", 16)
    ]
    # a command-line override wins over a variant's value
    fixed = load_spec(path, overrides={"conv": "standard"}).expand()
    assert {t.conv for t in fixed} == {"standard"}


def test_variant_with_unknown_key_fails(tmp_path):
    path = write(tmp_path, "name: v\nbase: {}\nvariants: {a: {nrom: gn}}\naxes: {}")
    with pytest.raises(UnknownNameError, match="Unknown variant 'a' key 'nrom'"):
        load_spec(path)


@pytest.mark.parametrize("path", list_specs(), ids=lambda p: p.stem)
def test_expanding_the_seeds_copies_one_validated_config_exactly(path):
    """Each configuration is validated once and copied per seed: the copies are the configs
    a full validation makes, ids included."""
    from bench.spec.config import from_mapping

    for config in load_spec(path).expand():
        full = from_mapping(config.to_dict())
        assert config == full and config.trial_id == full.trial_id
