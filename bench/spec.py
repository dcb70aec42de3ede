"""Trial configurations and study specifications.

A :class:`TrialConfig` holds every knob of one trial. Its canonical JSON (sorted keys,
fields at their default left out) hashed with SHA-256 is the trial id: two identical
configs are the same trial, whichever study asks for it, and the store answers the second
request from the first run. The stored config always spells out every field.

A :class:`StudySpec` is a YAML file in ``ablations/`` (data, not code)::

    name: norm-vs-batch
    description: ...
    base: {arch: cnn, lr: 0.02, lr_scaling: linear, lr_base_batch: 32, ...}
    axes: {norm: [bn, gn, ln, in, none], batch_size: [2, 4, 8, 16, 32, 64]}
    zip: {norm_groups: [...], width: [...]}      # optional: lists that vary together
    variants: {gn+ws: {norm: gn, conv: ws}, ...}  # optional: named combinations, crossed with the axes
    repeats: 3                                   # seeds 0, 1, 2 (or `seeds: [..]`)
    report: {kind: pivot, rows: norm, columns: batch_size, metric: final_val_acc}
    profiles: {quick: {base: {...}, axes: {...}, repeats: 1}}

``expand()`` yields variants × the cartesian product of the axes × the zipped values ×
the seeds, each validated before anything runs. Precedence, lowest first: base, axes and
zip, the variant (a variant may pin an axis: a "BN at batch 32" reference row), then the
command-line overrides.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from bench.errors import ConfigError, UnknownNameError

LR_SCALING_RULES = ("none", "linear", "sqrt")


@dataclass(frozen=True)
class TrialConfig:
    """Every knob of one trial. Units are stated per field."""

    # data
    dataset: str = "digits"
    train_subset: int | None = None  # number of training images (a fixed subset), None = all
    val_subset: int | None = None  # number of validation images, None = all
    augment: str = "none"
    # -- augmentation and loss options (bench/zoo/augment.py) ---------------------------
    label_smoothing: float = 0.0  # ε of the cross-entropy's smoothed targets, any augment
    mixup_alpha: float = 1.0  # augment=mixup / mixup-cutmix: λ ~ Beta(α, α)
    cutmix_alpha: float = 1.0  # augment=cutmix / mixup-cutmix: λ ~ Beta(α, α)
    autoaugment_policy: str = "cifar10"  # augment=autoaugment: imagenet | cifar10 | svhn
    randaugment_ops: int = 2  # augment=randaugment: operations per image (N)
    randaugment_magnitude: int = 9  # augment=randaugment: magnitude M, 0–30
    # -- end of augmentation and loss options ----------------------------------------------
    # model
    arch: str = "cnn"
    width: int | None = None  # base channels / hidden units / vit embedding dim; None = the architecture's default
    depth: int | None = None  # layers (cnn, mlp), 6n+2 (resnet), 11|13|16|19 (vgg), blocks (vit); None = default
    norm: str = "bn"
    norm_groups: int = 8  # GroupNorm: number of groups
    norm_group_size: int | None = None  # GroupNorm: channels per group (overrides norm_groups)
    norm_affine: bool = True  # learn a per-channel γ, β after normalizing
    norm_eps: float = 1e-5
    norm_momentum: float = 0.1  # running-statistics momentum (BatchNorm and its variants)
    norm_virtual_batch: int | None = None  # Ghost BatchNorm: examples per virtual batch
    renorm_rmax: float = 3.0  # Batch Renorm: final r_max ...
    renorm_dmax: float = 5.0  # ... and d_max
    renorm_start: int = 5000  # optimizer steps of plain BatchNorm (r_max=1, d_max=0) before relaxing
    renorm_rmax_at: int = 40000  # step at which r_max is reached
    renorm_dmax_at: int = 25000  # step at which d_max is reached
    conv: str = "standard"  # weight reparametrization of conv (and, where defined, linear) layers
    wn_init: bool = False  # Weight Normalization: data-dependent initialization
    train_only_norm: bool = False  # freeze every weight at init except the norm layers' γ and β
    agc_clip: float = 0.0  # adaptive gradient clipping λ (0: off); the classifier is not clipped
    nf_alpha: float = 0.2  # normalizer-free ResNet: residual branch scale α
    # -- vision transformer (arch=vit; bench/zoo/archs/vit.py) -------------------------------
    patch_size: int = 4  # pixels per side of a patch (one token); must divide the image size
    vit_heads: int = 4  # attention heads; must divide width
    vit_mlp_ratio: float = 2.0  # MLP hidden units per embedding dim
    vit_pos_embed: str = "learned"  # learned | sincos (fixed 2-D sin-cos, MoCo v3)
    vit_cls_token: bool = True  # classify from a class token (false: mean of the patch tokens)
    vit_freeze_patch: bool = False  # MoCo v3: patch projection frozen at its random init
    vit_conv_stem: bool = False  # LV-ViT: overlapping conv stem before the patch projection
    vit_residual_scale: float = 1.0  # LV-ViT α: x + α·f(x) on every residual branch
    drop_path: float = 0.0  # stochastic depth rate of the last block (linear from 0 in the first)
    vit_mlp_head: bool = False  # a tanh hidden layer before the classifier (ViT pre-training head)
    # -- end of vision transformer ---------------------------------------------------------
    # optimization
    optimizer: str = "sgd"
    lr: float = 0.05  # peak learning rate at lr_base_batch examples per step
    lr_scaling: str = "linear"  # none | linear | sqrt: how lr follows batch_size
    lr_base_batch: int = 32  # batch size at which `lr` applies unscaled
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    beta1: float = 0.9
    beta2: float = 0.999
    optimizer_eps: float | None = None  # ε of adaptive optimizers; None = each optimizer's own default
    weight_decay_mode: str = "native"  # native | l2 | decoupled (bench.zoo.weight_decay)
    wd_exclude_1d: bool = False  # biases and norm γ/β: no weight decay, no LARS/LAMB adaptation
    lars_eta: float = 0.001  # LARS trust coefficient η
    rmsprop_alpha: float = 0.99  # RMSprop: smoothing of the squared-gradient average
    adadelta_rho: float = 0.9  # Adadelta: decay of both running averages
    adax_beta2: float = 1e-4  # AdaX: growth rate of the long-term second moment
    adabound_final_lr: float = 0.1  # AdaBound: the SGD learning rate the bounds converge to
    adabound_gamma: float = 0.001  # AdaBound: convergence speed of the bounds
    lawn: bool = False  # LAWN: after a free phase, hold the final layers' weight norms fixed
    lawn_free_epochs: float = 1.0  # LAWN: epochs of unconstrained training
    lawn_layers: int = 1  # LAWN: how many final weight layers are constrained
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # step schedule: fractions of training
    lr_gamma: float = 0.1  # step schedule: decay factor per milestone
    sgdr_t0: float = 1.0  # SGDR: epochs of the first cycle
    sgdr_t_mult: float = 2.0  # SGDR: each cycle this many times longer than the last
    poly_power: float = 2.0  # poly schedule: (1 − t/T)^power
    onecycle_pct: float = 0.3  # one-cycle: fraction of training spent rising
    onecycle_div: float = 25.0  # one-cycle: starts at peak / div
    onecycle_final_div: float = 10000.0  # one-cycle: ends at peak / (div · final_div)
    # budget
    batch_size: int = 32
    epochs: int = 5
    seed: int = 0
    # divergence: the loss is NaN/inf, or above diverge_factor × the first step's loss
    diverge_factor: float = 10.0
    # instrumentation: record every optimizer step (loss, batch accuracy, gradient norms,
    # lr) in the store and the run's stability metrics in its summary
    log_steps: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f, getattr(self, f.name)))
        self._check_values()
        self._check_names()

    # -- validation -------------------------------------------------------------------
    def _check_names(self) -> None:
        from bench.data import DATASETS
        from bench.zoo.archs import ARCHS
        from bench.zoo.augment import AUGMENTS
        from bench.zoo.norms import NORMS
        from bench.zoo.optimizers import OPTIMIZERS
        from bench.zoo.schedules import SCHEDULES

        from bench.zoo.convs import CONVS

        for registry, value in (
            (CONVS, self.conv),
            (DATASETS, self.dataset),
            (ARCHS, self.arch),
            (NORMS, self.norm),
            (OPTIMIZERS, self.optimizer),
            (SCHEDULES, self.schedule),
            (AUGMENTS, self.augment),
        ):
            registry.check(value)
        from bench.zoo.weight_decay import check_mode

        check_mode(self.weight_decay_mode)
        if self.lr_scaling not in LR_SCALING_RULES:
            raise UnknownNameError("lr_scaling rule", self.lr_scaling, LR_SCALING_RULES)

    def _check_values(self) -> None:
        positive = (
            "batch_size", "epochs", "lr_base_batch", "norm_groups", "norm_group_size", "norm_virtual_batch", "train_subset",
            "val_subset", "width", "depth", "lawn_layers",
        )
        for name in positive:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be a positive integer; got {name}={value}.")
        non_negative = (
            "lr", "weight_decay", "momentum", "warmup_epochs", "norm_eps", "agc_clip", "nf_alpha", "renorm_dmax",
            "renorm_start", "renorm_rmax_at", "renorm_dmax_at", "lars_eta", "adabound_final_lr", "adabound_gamma",
            "lawn_free_epochs", "adax_beta2",
        )
        for name in non_negative:
            value = getattr(self, name)
            if not value >= 0 or math.isinf(value):
                raise ConfigError(f"{name} must be a finite number ≥ 0; got {name}={value}.")
        for name in ("momentum", "beta1", "beta2", "norm_momentum", "rmsprop_alpha", "adadelta_rho"):
            value = getattr(self, name)
            if not 0 <= value < 1 and not (name == "norm_momentum" and value == 1):
                raise ConfigError(f"{name} must lie in [0, 1); got {name}={value}.")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(
                f"warmup_epochs={self.warmup_epochs} is longer than the run (epochs={self.epochs})."
            )
        if not self.diverge_factor > 1:
            raise ConfigError(f"diverge_factor must be > 1; got {self.diverge_factor}.")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"lr_gamma must lie in (0, 1]; got {self.lr_gamma}.")
        if self.renorm_rmax < 1:
            raise ConfigError(f"renorm_rmax bounds r to [1/r_max, r_max], so it must be ≥ 1; got {self.renorm_rmax}.")
        if self.norm == "bn-ghost":
            virtual = self.norm_virtual_batch or self.batch_size
            if self.batch_size % virtual:
                raise ConfigError(
                    f"Ghost BatchNorm splits each batch into virtual batches of norm_virtual_batch={virtual} "
                    f"examples, which must divide batch_size={self.batch_size}."
                )
        if self.optimizer_eps is not None and not self.optimizer_eps > 0:
            raise ConfigError(f"optimizer_eps must be > 0 (or null for the optimizer's default); got {self.optimizer_eps}.")
        if self.lawn and self.lawn_free_epochs >= self.epochs:
            raise ConfigError(
                f"LAWN trains freely for lawn_free_epochs={self.lawn_free_epochs} and then constrains; with "
                f"epochs={self.epochs} the constrained phase never starts. Set lawn_free_epochs below epochs."
            )
        if self.wn_init and self.conv != "wn":
            raise ConfigError("wn_init=true is Weight Normalization's data-dependent initialization: it needs conv=wn.")
        _check_vit_and_augment_options(self)

    # -- identity ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    @property
    def trial_id(self) -> str:
        """SHA-256 of the canonical config: sorted keys, and fields at their default left
        out. Leaving defaults out is what lets the harness grow: a new knob is added with a
        default that reproduces the old behaviour, so every stored result keeps its id.
        The other half of that contract is that a default never changes (pinned by a test)."""
        canonical = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def canonical(self) -> dict[str, Any]:
        """What identifies the trial: the fields that differ from their defaults, less the
        options that do nothing for this trial (GroupNorm's groups when the norm is bn), so
        a study that sets them in its base for every norm still shares trials with others."""
        inert = {option for option, applies in OPTION_APPLIES.items() if not applies(self)}
        return {k: v for k, v in self.to_dict().items() if v != DEFAULTS[k] and k not in inert}

    @property
    def effective_lr(self) -> float:
        """The learning rate after the batch-size scaling rule (the derived value)."""
        return scaled_lr(self.lr, self.batch_size, self.lr_base_batch, self.lr_scaling)

    def replace(self, **changes: Any) -> TrialConfig:
        return from_mapping({**self.to_dict(), **changes})


def scaled_lr(base_lr: float, batch_size: int, base_batch: int, rule: str) -> float:
    """lr for ``batch_size`` given ``base_lr`` at ``base_batch``: none → base_lr;
    linear (Goyal et al. 2017) → base_lr·B/B₀; sqrt (Krizhevsky 2014) → base_lr·√(B/B₀)."""
    ratio = batch_size / base_batch
    return {"none": base_lr, "linear": base_lr * ratio, "sqrt": base_lr * math.sqrt(ratio)}[rule]


CONFIG_FIELDS = {f.name: f for f in fields(TrialConfig)}


def _type_name(f: dataclasses.Field) -> str:
    return str(f.type).replace("tuple[float, ...]", "list of numbers")


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Check and normalize a value for field ``f`` (YAML and --set give loose types)."""
    kind = str(f.type)
    if value is None and "None" in kind:
        return None
    bad = ConfigError(f"{f.name} must be {_type_name(f)}; got {value!r}.")
    if kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise bad
        return int(value)
    if kind.startswith("float"):
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise bad
        return value
    if kind.startswith("tuple"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise bad
        return tuple(float(v) for v in value)
    raise TypeError(f"unsupported field type {kind}")


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


DEFAULTS: dict[str, Any] = {f.name: _jsonable(f.default) for f in fields(TrialConfig)}

# Architecture-specific config fields: they reach the architecture's builder under the same
# names (bench.train.build_model) and act only for that architecture.
ARCH_OPTIONS: dict[str, tuple[str, ...]] = {
    "nf-resnet": ("nf_alpha",),
    "vit": (
        "patch_size", "vit_heads", "vit_mlp_ratio", "vit_pos_embed", "vit_cls_token", "vit_freeze_patch", "vit_conv_stem",
        "vit_residual_scale", "drop_path", "vit_mlp_head",
    ),
}

# Options that act only for some trials (the stored config keeps them; the id ignores them).
_GROUPED = ("gn", "bcn")
_MOMENTUM = ("sgd", "lars")
_SECOND_MOMENT = ("adam", "adamw", "nadam", "lamb", "adabound")
_FIRST_MOMENT = (*_SECOND_MOMENT, "adax")
OPTION_APPLIES: dict[str, Callable[[TrialConfig], bool]] = {
    "norm_groups": lambda c: c.norm in _GROUPED,
    "norm_group_size": lambda c: c.norm in _GROUPED,
    "norm_virtual_batch": lambda c: c.norm == "bn-ghost",
    **{f"renorm_{k}": (lambda c: c.norm == "brn") for k in ("rmax", "dmax", "start", "rmax_at", "dmax_at")},
    **{name: (lambda c, arch=arch: c.arch == arch) for arch, names in ARCH_OPTIONS.items() for name in names},
    # augmentation options
    "mixup_alpha": lambda c: c.augment in ("mixup", "mixup-cutmix"),
    "cutmix_alpha": lambda c: c.augment in ("cutmix", "mixup-cutmix"),
    "autoaugment_policy": lambda c: c.augment == "autoaugment",
    "randaugment_ops": lambda c: c.augment == "randaugment",
    "randaugment_magnitude": lambda c: c.augment == "randaugment",
    # optimizer hyperparameters act only for the optimizers that read them
    "momentum": lambda c: c.optimizer in _MOMENTUM,
    "nesterov": lambda c: c.optimizer in _MOMENTUM,
    "beta1": lambda c: c.optimizer in _FIRST_MOMENT,
    "beta2": lambda c: c.optimizer in _SECOND_MOMENT,
    "optimizer_eps": lambda c: c.optimizer != "sgd",
    "lars_eta": lambda c: c.optimizer == "lars",
    "rmsprop_alpha": lambda c: c.optimizer == "rmsprop",
    "adadelta_rho": lambda c: c.optimizer == "adadelta",
    "adax_beta2": lambda c: c.optimizer == "adax",
    "adabound_final_lr": lambda c: c.optimizer == "adabound",
    "adabound_gamma": lambda c: c.optimizer == "adabound",
    "lawn_free_epochs": lambda c: c.lawn,
    "lawn_layers": lambda c: c.lawn,
    # schedule options act only for their schedule
    "lr_milestones": lambda c: c.schedule == "step",
    "lr_gamma": lambda c: c.schedule == "step",
    "sgdr_t0": lambda c: c.schedule == "sgdr",
    "sgdr_t_mult": lambda c: c.schedule == "sgdr",
    "poly_power": lambda c: c.schedule == "poly",
    **{k: (lambda c: c.schedule == "one-cycle") for k in ("onecycle_pct", "onecycle_div", "onecycle_final_div")},
}


def _check_vit_and_augment_options(c: TrialConfig) -> None:
    """Ranges of the vision-transformer and augmentation options (checks that need the
    image size or the width, such as heads dividing width, run when the model is built)."""
    from bench.zoo.archs.vit import POS_EMBEDS
    from bench.zoo.augment import AUTOAUGMENT_POLICIES, MAGNITUDE_BINS

    for name in ("patch_size", "vit_heads", "randaugment_ops"):
        if getattr(c, name) < 1:
            raise ConfigError(f"{name} must be a positive integer; got {name}={getattr(c, name)}.")
    for name in ("vit_mlp_ratio", "vit_residual_scale", "mixup_alpha", "cutmix_alpha"):
        value = getattr(c, name)
        if not value > 0 or math.isinf(value):
            raise ConfigError(f"{name} must be a finite number > 0; got {name}={value}.")
    for name in ("drop_path", "label_smoothing"):
        if not 0 <= getattr(c, name) < 1:
            raise ConfigError(f"{name} must lie in [0, 1); got {name}={getattr(c, name)}.")
    if not 0 <= c.randaugment_magnitude < MAGNITUDE_BINS:
        raise ConfigError(f"randaugment_magnitude must lie in 0–{MAGNITUDE_BINS - 1}; got {c.randaugment_magnitude}.")
    if c.vit_pos_embed not in POS_EMBEDS:
        raise UnknownNameError("vit_pos_embed", c.vit_pos_embed, POS_EMBEDS)
    if c.autoaugment_policy not in AUTOAUGMENT_POLICIES:
        raise UnknownNameError("autoaugment_policy", c.autoaugment_policy, AUTOAUGMENT_POLICIES)


def from_mapping(values: Mapping[str, Any]) -> TrialConfig:
    unknown = sorted(set(values) - set(CONFIG_FIELDS))
    if unknown:
        raise UnknownNameError("config key", unknown[0], CONFIG_FIELDS)
    return TrialConfig(**values)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as YAML (3 → int,
    0.1 → float, true → bool, [0.5, 0.75] → list, anything else → string)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"Expected KEY=VALUE (for example --set batch_size=8); got {text!r}.")
    if key not in CONFIG_FIELDS:
        raise UnknownNameError("config key", key, CONFIG_FIELDS)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if value is None and "None" not in str(CONFIG_FIELDS[key].type):
        raise ConfigError(f"--set {key}= needs a value ({_type_name(CONFIG_FIELDS[key])}).")
    return key, value


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    return dict(parse_assignment(item) for item in items)


# -- studies ----------------------------------------------------------------------------

SPEC_KEYS = ("name", "description", "base", "variants", "axes", "zip", "repeats", "seeds", "tune", "report", "profiles")
PROFILE_KEYS = ("description", "base", "variants", "axes", "zip", "repeats", "seeds", "tune", "report")
TUNE_KEYS = ("over", "metric", "seeds", "higher_is_better")


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    base: Mapping[str, Any]
    axes: Mapping[str, list[Any]]
    zip: Mapping[str, list[Any]] = field(default_factory=dict)
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    report: Mapping[str, Any] = field(default_factory=dict)
    tune: Mapping[str, Any] = field(default_factory=dict)
    profile: str = "default"
    profiles: tuple[str, ...] = ()
    source: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The study's name plus its profile: what reports and the store call it."""
        return self.name if self.profile == "default" else f"{self.name}@{self.profile}"

    def expand(self) -> list[TrialConfig]:
        """Every trial of the study, validated, in a stable order (variants, axes as
        written, zipped values, seeds); duplicates removed."""
        return list(self.labelled().values())

    def labelled(self) -> dict[str, TrialConfig]:
        """Trial id → config, in expansion order; :meth:`variant_of` names each trial's variant."""
        return {config.trial_id: config for _, config in self._expand()}

    def labelled_pairs(self) -> list[tuple[str, TrialConfig]]:
        """(variant name, config) of each distinct trial, in expansion order."""
        seen: set[str] = set()
        out = []
        for name, config in self._expand():
            if config.trial_id not in seen:
                seen.add(config.trial_id)
                out.append((name, config))
        return out

    def variant_of(self) -> dict[str, str]:
        """Trial id → the name of the variant it belongs to (empty without variants)."""
        labels: dict[str, str] = {}
        for name, config in self._expand():
            labels.setdefault(config.trial_id, name)
        return labels

    def _expand(self) -> list[tuple[str, TrialConfig]]:
        axis_names = list(self.axes)
        zip_names = list(self.zip)
        zipped = list(zip(*self.zip.values())) if self.zip else [()]
        variants = self.variants or {"": {}}
        out: list[tuple[str, TrialConfig]] = []
        for name, variant in variants.items():
            fixed = {k: v for k, v in variant.items() if not is_sweep(k, v)}
            swept = {k: v for k, v in variant.items() if is_sweep(k, v)}
            for sweep in itertools.product(*swept.values()):
                for combo in itertools.product(*(self.axes[a] for a in axis_names)):
                    for zvalues in zipped:
                        for seed in self.seeds:
                            values = {
                                **self.base, **dict(zip(axis_names, combo)), **dict(zip(zip_names, zvalues)), **fixed,
                                **dict(zip(swept, sweep)), **self.overrides, "seed": seed,
                            }
                            where = f"study {self.key!r}" + (f", variant {name!r}" if name else "")
                            out.append((name, _with_context(values, where)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "profile": self.profile,
            "description": self.description,
            "base": dict(self.base),
            "axes": {k: list(v) for k, v in self.axes.items()},
            "zip": {k: list(v) for k, v in self.zip.items()},
            "variants": {k: dict(v) for k, v in self.variants.items()},
            "seeds": list(self.seeds),
            "report": dict(self.report),
            **({"tune": dict(self.tune)} if self.tune else {}),
            "overrides": dict(self.overrides),
            "source": self.source,
        }

    @property
    def spec_hash(self) -> str:
        doc = {k: v for k, v in self.to_dict().items() if k != "source"}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]


def is_sweep(key: str, value: Any) -> bool:
    """A variant value that is a list of values (a list of lists for list-typed fields such
    as lr_milestones) is swept for that variant only: ``{optimizer: sgd, lr: [0.01, 0.1]}``."""
    if not isinstance(value, list):
        return False
    f = CONFIG_FIELDS.get(key)
    if f is not None and str(f.type).startswith("tuple"):
        return bool(value) and all(isinstance(v, list) for v in value)
    return True


def _with_context(values: Mapping[str, Any], where: str) -> TrialConfig:
    try:
        return from_mapping(values)
    except ConfigError as exc:
        raise type(exc)(f"In {where}: {exc}") if not isinstance(exc, UnknownNameError) else exc


def _check_keys(doc: Mapping[str, Any], allowed: Iterable[str], what: str) -> None:
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise UnknownNameError(f"{what} key", unknown[0], allowed)


def _as_list(axis: str, values: Any) -> list[Any]:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"Axis {axis!r} must be a non-empty list of values; got {values!r}.")
    return values


def load_spec(
    source: str | Path, *, profile: str | None = None, overrides: Mapping[str, Any] | None = None, search: Path | None = None
) -> StudySpec:
    """Load a study by name (``ablations/NAME.yaml``) or path, apply a profile and
    command-line overrides. An override of an axis fixes that axis to the one value."""
    path = resolve_spec_path(source, search)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} must hold a mapping with keys {', '.join(SPEC_KEYS)}.")
    _check_keys(doc, SPEC_KEYS, "study spec")
    profiles = doc.get("profiles") or {}
    profile = profile or "default"
    if profile != "default":
        if profile not in profiles:
            valid = ", ".join(["default", *profiles]) or "default"
            raise ConfigError(f"Study {doc.get('name', path.stem)!r} has no profile {profile!r}. Profiles: {valid}.")
        prof = profiles[profile] or {}
        _check_keys(prof, PROFILE_KEYS, f"profile {profile!r}")
    else:
        prof = {}
    base = {**(doc.get("base") or {}), **(prof.get("base") or {})}
    axes = {**(doc.get("axes") or {}), **(prof.get("axes") or {})}
    zipped = prof.get("zip", doc.get("zip")) or {}
    variants = prof.get("variants", doc.get("variants")) or {}
    report = {**(doc.get("report") or {}), **(prof.get("report") or {})}
    _check_keys(base, CONFIG_FIELDS, "base config")
    _check_keys(axes, CONFIG_FIELDS, "axis")
    _check_keys(zipped, CONFIG_FIELDS, "zip")
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise ConfigError("variants must map a name to config values, e.g. variants: {gn+ws: {norm: gn, conv: ws}}.")
    for name, values in variants.items():
        _check_keys(values, CONFIG_FIELDS, f"variant {name!r}")
        for key, value in values.items():
            if is_sweep(key, value) and not value:
                raise ConfigError(f"Variant {name!r} sweeps {key} over an empty list; give at least one value.")
    tune = _tune(prof.get("tune", doc.get("tune")) or {}, variants, axes)
    axes = {k: _as_list(k, v) for k, v in axes.items()}
    zipped = {k: _as_list(k, v) for k, v in zipped.items()}
    if len({len(v) for v in zipped.values()}) > 1:
        raise ConfigError(f"All zip lists must have the same length; got {({k: len(v) for k, v in zipped.items()})}.")
    overrides = dict(overrides or {})
    for key, value in overrides.items():  # an override fixes an axis to its one value
        axes.pop(key, None)
        zipped.pop(key, None)
        base[key] = value
    _check_report(report, {"axes": axes, "zip": zipped, "variants": variants, "base": base}, str(doc.get("name") or path.stem))
    seeds = _seeds(prof if ("repeats" in prof or "seeds" in prof) else doc)
    if "seed" in overrides:
        seeds = (int(overrides["seed"]),)
    return StudySpec(
        name=str(doc.get("name") or path.stem),
        description=str(prof.get("description") or doc.get("description") or ""),
        base=base,
        axes=axes,
        zip=zipped,
        variants={str(k): dict(v) for k, v in variants.items()},
        seeds=seeds,
        report=report,
        tune=tune,
        profile=profile,
        profiles=tuple(profiles),
        source=str(path),
        overrides=overrides,
    )


def _tune(tune: Any, variants: Mapping[str, Any], axes: Mapping[str, Any]) -> dict[str, Any]:
    """Validates a ``tune`` block: for each configuration (everything but ``over`` and the
    seed), the value of the swept field ``over`` with the best mean ``metric`` over the
    first seeds is re-run with the extra ``seeds`` (the DeepOBS protocol)."""
    if not tune:
        return {}
    if not isinstance(tune, dict):
        raise ConfigError(f"tune must be a mapping with keys {', '.join(TUNE_KEYS)}; got {tune!r}.")
    _check_keys(tune, TUNE_KEYS, "tune")
    missing = [k for k in ("over", "seeds") if k not in tune]
    if missing:
        raise ConfigError(
            f"tune needs {' and '.join(missing)}: e.g. tune: {{over: lr, metric: final_val_acc, seeds: [1, 2]}}."
        )
    over = tune["over"]
    swept = {k for v in variants.values() for k, val in v.items() if is_sweep(k, val)} | set(axes)
    if over not in swept:
        raise ConfigError(
            f"tune.over={over!r} must be a field the study sweeps (an axis, or a list in a variant); swept: "
            f"{', '.join(sorted(swept)) or 'none'}."
        )
    seeds = tune["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
        raise ConfigError(f"tune.seeds must be a non-empty list of integers; got {seeds!r}.")
    return {"over": over, "metric": tune.get("metric", "final_val_acc"), "seeds": list(seeds),
            "higher_is_better": bool(tune.get("higher_is_better", True))}


def _check_report(report: Any, study: Mapping[str, Any], name: str) -> None:
    """The report section's schema lives with the reports (bench/report/schema.py)."""
    from bench.report.schema import parse_report

    try:
        parse_report(report, study)
    except ConfigError as exc:
        raise ConfigError(f"Study {name!r}: {exc}") from None


def _seeds(doc: Mapping[str, Any]) -> tuple[int, ...]:
    if "seeds" in doc:
        seeds = doc["seeds"]
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise ConfigError(f"seeds must be a non-empty list of integers; got {seeds!r}.")
        return tuple(seeds)
    repeats = doc.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ConfigError(f"repeats must be a positive integer (the number of seeds); got {repeats!r}.")
    return tuple(range(repeats))


def default_ablations_dir() -> Path:
    """``./ablations`` when it exists (a checkout or a user's project), else the studies
    shipped beside the package."""
    local = Path("ablations")
    if local.is_dir():
        return local
    return Path(__file__).resolve().parent.parent / "ablations"


def list_specs(search: Path | None = None) -> list[Path]:
    return sorted((search or default_ablations_dir()).glob("*.yaml"))


def resolve_spec_path(source: str | Path, search: Path | None = None) -> Path:
    text = str(source)
    candidate = Path(text)
    if text.endswith((".yaml", ".yml")) or candidate.is_file():
        if not candidate.is_file():
            raise ConfigError(f"Study spec file {text!r} does not exist.")
        return candidate
    directory = search or default_ablations_dir()
    path = directory / f"{text}.yaml"
    if not path.is_file():
        names = [p.stem for p in list_specs(directory)]
        raise UnknownNameError("study", text, names, hint=f"(looked in {directory}/; pass a path to a .yaml file to run your own spec)")
    return path
