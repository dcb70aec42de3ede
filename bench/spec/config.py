"""Trial configurations: every knob of one trial, derived from the declarations.

A :class:`TrialConfig`'s fields are the trial-level options below (:data:`TRIAL_OPTIONS`:
the data, the choices of each registry, the budget) plus every option a registry entry
declares (:mod:`bench.zoo.registry`). Nothing here lists an entry's options again: their
type, default, range, the trial-id rule and the builders' keyword arguments all come from
the one declaration.

Its canonical JSON (sorted keys, fields at their default left out, options the chosen
entries do not read left out) hashed with SHA-256 is the trial id: two identical configs
are the same trial, whichever study asks for it, and the store answers the second request
from the first run. The stored config always spells out every field.

Nothing here imports torch: entries' declarations are read from the zoo's source.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from bench.errors import ConfigError, UnknownNameError
from bench.zoo.optimizers import WD_SHIFT_EPS, WEIGHT_DECAY_MODES
from bench.zoo.registry import REGISTRIES, Option, on_register

LR_SCALING_RULES = ("none", "linear", "sqrt")
PRECISIONS = ("fp32", "bf16", "fp16")
EMA_NORMS = ("eman", "copy", "recompute")  # how the EMA model's normalization statistics are formed (bench/trial/ema.py)

# The options every trial reads (``when``: only while that field is true, or not 0). The fields
# named like a registry (dataset, augment, arch, norm, conv, activation, optimizer,
# schedule) choose its entry (activation may be null: the architecture's own); the entry's
# own options follow from its declaration.
TRIAL_OPTIONS: tuple[Option, ...] = (
    # data
    Option("dataset", str, "digits", "the dataset (bench zoo datasets)"),
    Option("train_subset", int, None, "a fixed class-stratified subset of the training images (null: all)",
           unit="images", ge=1, nullable=True),
    Option("val_subset", int, None, "a fixed class-stratified subset of the validation images (null: all)",
           unit="images", ge=1, nullable=True),
    Option("augment", str, "none", "the augmentation (bench zoo augments)"),
    Option("label_smoothing", float, 0.0, "ε of the cross-entropy's smoothed targets", ge=0, lt=1),
    # model
    Option("arch", str, "cnn", "the architecture (bench zoo archs)"),
    Option("width", int, None, "base channels / hidden units / embedding dim (null: the architecture's default)",
           ge=1, nullable=True),
    Option("depth", int, None, "layers (cnn, mlp), 6n+2 (resnet), 11|13|16|19 (vgg), blocks (vit); null: default",
           ge=1, nullable=True),
    Option("norm", str, "bn", "the normalization (bench zoo norms)"),
    Option("conv", str, "standard", "the weight reparametrization of conv and linear layers (bench zoo convs)"),
    Option("activation", str, None, "the activation (bench zoo activations); null: the architecture's own (ReLU; the "
           "ViT's GELU)", nullable=True),
    Option("train_only_norm", bool, False, "freeze every weight at init except the norm layers' γ and β"),
    Option("agc_clip", float, 0.0, "adaptive gradient clipping λ (0: off); the classifier is not clipped", ge=0,
           modules=("bench.zoo.optimizers.agc",)),
    # optimization
    Option("optimizer", str, "sgd", "the optimizer (bench zoo optimizers)"),
    Option("lr", float, 0.05, "peak learning rate at lr_base_batch examples per step", ge=0),
    Option("lr_scaling", str, "linear", "how lr follows batch_size", choices=LR_SCALING_RULES),
    Option("lr_base_batch", int, 32, "batch size at which lr applies unscaled", unit="examples", ge=1),
    Option("weight_decay", float, 5e-4, "weight decay coefficient", ge=0),
    Option("weight_decay_mode", str, "native", "how weight decay applies: native (each optimizer's own form), l2, "
           "decoupled, eps-shifted (Li et al. 2019, arXiv:1911.05920), orthonormal (Xie et al. 2017, "
           "arXiv:1703.01827); bench.zoo.optimizers.weight_decay", choices=WEIGHT_DECAY_MODES,
           modules=("bench.zoo.optimizers.weight_decay", "bench.zoo.optimizers.eps_shifted",
                    "bench.zoo.optimizers.orthonormal", "bench.zoo.optimizers.matrices")),
    Option("wd_exclude_1d", bool, False, "biases and norm γ/β: no weight decay, no LARS/LAMB adaptation"),
    WD_SHIFT_EPS,
    Option("ortho_init", bool, True, "orthonormal decay: start from orthonormal filters (Xie et al. 2017, §4); false: "
           "the architecture's own initialization", when="weight_decay_mode=orthonormal"),
    Option("lawn", bool, False, "LAWN: after a free phase, hold the final layers' weight norms fixed",
           modules=("bench.zoo.optimizers.lawn",)),
    Option("lawn_free_epochs", float, 1.0, "LAWN: unconstrained training before the constraint", unit="epochs",
           ge=0, when="lawn"),
    Option("lawn_layers", int, 1, "LAWN: how many final weight layers are constrained", ge=1, when="lawn"),
    Option("svb", bool, False, "Singular Value Bounding (Jia et al. 2017, arXiv:1611.06013): every svb_period, each "
           "conv and linear weight's singular values clipped to [1/(1+svb_eps), 1+svb_eps]",
           modules=("bench.zoo.optimizers.svb", "bench.zoo.optimizers.matrices")),
    Option("svb_eps", float, 0.5, "SVB: ε of the band [1/(1+ε), 1+ε] (the authors' 0.5)", ge=0, when="svb"),
    Option("svb_period", float, 1.0, "SVB: training between two boundings (the authors': 391 steps, one CIFAR-10 "
           "epoch at batch 128)", unit="epochs", gt=0, when="svb"),
    Option("svb_init", bool, True, "SVB: start from orthogonal weights, as Algorithm 1 (false: the architecture's own "
           "initialization)", when="svb"),
    Option("svb_bbn_eps", float, None, "SVB: Bounded BatchNorm's ε̃, each BatchNorm layer's γ_i/σ_i held within a "
           "factor 1+ε̃ of their mean at each bounding (null: BatchNorm untouched; the authors' 1)", ge=0,
           nullable=True, when="svb"),
    Option("error_modulation", float, 0.0, "backward error modulation (Xie et al. 2017, arXiv:1703.01827, §3.3): a "
           "conv layer's output error scaled by ρ = √(q_above/q), the ratio of second moments, when ρ is outside "
           "[1/τ, τ], τ this value (0: off; 1: every layer)", ge=0, modules=("bench.zoo.optimizers.modulation",)),
    Option("schedule", str, "cosine", "the learning-rate schedule (bench zoo schedules)"),
    Option("warmup_epochs", float, 0.0, "linear warm-up before the schedule", unit="epochs", ge=0),
    # budget
    Option("batch_size", int, 32, "examples per optimizer step", unit="examples", ge=1),
    Option("epochs", int, 5, "passes over the training set", ge=1),
    Option("seed", int, 0, "seeds the model's init, the batch order and the augmentation (numpy takes 0 … 2³²−1)",
           ge=0, le=2**32 - 1),
    Option("diverge_factor", float, 10.0, "divergence: a loss NaN/inf or above this × the first step's loss", gt=1),
    Option("log_steps", bool, False, "record every optimizer step and the run's stability metrics"),
    # numerics and speed (part of the trial id: they change the numbers)
    Option("precision", str, "fp32", "autocast precision of forward and loss (fp16 adds a gradient scaler)",
           choices=PRECISIONS),
    Option("channels_last", bool, False, "the model and image batches in channels-last memory format"),
    Option("compile", bool, False, "torch.compile the model (inductor; the first steps compile it)"),
    # evaluation of an exponential moving average of the model (bench/trial/ema.py)
    Option("ema_decay", float, 0.0, "decay m of an EMA copy of the model, updated after every optimizer step and "
           "evaluated each epoch (0: none); it averages over about 1/(1-m) steps (EMAN's 0.999: 1000)", ge=0, lt=1),
    Option("ema_norm", str, "eman", "the EMA model's normalization statistics: eman (EMAs of the student's, Cai et al. "
           "2021, arXiv:2101.08482), copy (the student's), recompute (BatchNorm's re-estimated on training batches "
           "before evaluation)",
           choices=EMA_NORMS, when="ema_decay"),
    # adversarial feature augmentation and normalization in the training step (bench/trial/afan.py)
    Option("afan", bool, False, "A-FAN (Chen et al. 2022, arXiv:2103.12171): each step also trains on the output of a "
           "stage perturbed by PGD on the loss, with the clean feature's moments exchanged for the perturbed one's "
           "(arch resnet or cnn)", modules=("bench.trial.afan",)),
    Option("afan_stage", int, 1, "A-FAN: the stage whose output is perturbed (the authors': 1, after ResNet-56's first "
           "stage)", ge=1, when="afan"),
    Option("afan_steps", int, 5, "A-FAN: PGD steps T (the authors' 5)", ge=1, when="afan"),
    Option("afan_step_size", float, 0.5, "A-FAN: PGD step γ (the authors' 0.5/255)", unit="1/255", gt=0, when="afan"),
    Option("afan_eps", float, None, "A-FAN: radius ε of the ℓ∞ ball PGD is projected onto (null: no projection, as the "
           "authors' command; the step then moves the feature at most T·γ)", unit="1/255", gt=0, nullable=True,
           when="afan"),
    Option("afan_weight", float, 0.5, "A-FAN: weight w of the adversarial loss, (1-w)·clean + w·adversarial (the "
           "authors' 1/2)", gt=0, lt=1, when="afan"),
    Option("afan_norm", bool, True, "A-FAN: feature normalization, the clean feature with the perturbed one's mean and "
           "std over channels (false: the augmentation only, the authors' classification code)", when="afan"),
)


def _collect_options() -> tuple[dict[str, Option], dict[str, list[tuple[str, Any]]]]:
    """Every option by name, and who reads it: (field, entry name) pairs, or (when, True)."""
    trial_level = {o.name for o in TRIAL_OPTIONS}
    options: dict[str, Option] = {o.name: o for o in TRIAL_OPTIONS}
    readers: dict[str, list[tuple[str, Any]]] = {o.name: [o.condition()] for o in TRIAL_OPTIONS if o.when}
    for field_name, registry in REGISTRIES.items():
        for entry in registry.entries():
            for option in entry.options:
                if option.name in trial_level:
                    raise ConfigError(f"The {entry.kind} {entry.name!r} declares {option.name!r}, a trial-level field; "
                                      "give the option another name.")
                known = options.setdefault(option.name, option)
                if known != option:
                    raise ConfigError(
                        f"The option {option.name!r} is declared differently by two entries (the {entry.kind} "
                        f"{entry.name!r} and another): {known} vs {option}. Declare it once and share the declaration."
                    )
                readers.setdefault(option.name, []).append((field_name, entry.name))
    return options, readers


# Live views: updated in place when an entry is registered at run time (a plugin), so every
# module that imported them sees the plugin's options.
OPTIONS: dict[str, Option] = {}
DEFAULTS: dict[str, Any] = {}
_CHECKED_DEFAULTS: dict[str, Any] = {}  # each option's default as ``coerce`` returns it (a config's unset fields)
CONFIG_FIELDS = OPTIONS  # name → declaration (``.default``, ``.type``): the config's fields
_READERS: dict[str, list[tuple[str, Any]]] = {}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _refresh(_entry: Any = None) -> None:
    options, readers = _collect_options()
    OPTIONS.clear()
    OPTIONS.update(options)
    DEFAULTS.clear()
    DEFAULTS.update({name: _jsonable(o.default) for name, o in options.items()})
    _READERS.clear()
    _READERS.update(readers)
    _CHECKED_DEFAULTS.clear()
    _CHECKED_DEFAULTS.update(_checked_defaults(options))


def _checked_defaults(options: dict[str, Option]) -> dict[str, Any]:
    """The defaults that pass their own checks, coerced once (one that does not is left
    out: a config that leaves it unset checks it, and says why it is refused)."""
    out = {}
    for name, option in options.items():
        try:
            out[name] = option.coerce(option.default)
        except ConfigError:
            pass
    return out


_refresh()
on_register(_refresh)


def readers_of(name: str) -> list[tuple[str, Any]]:
    """(field, value) pairs that make a trial read option ``name``; empty for options every trial reads."""
    return list(_READERS.get(name, []))


class TrialConfig:
    """Every knob of one trial: the trial-level options and every registry entry's declared
    options (``bench zoo KIND`` lists them with units and ranges), read as attributes
    (``config.norm_groups``). Immutable, compared and hashed by value.

    Not a dataclass: its fields are whatever the registries declare, plugins included, so
    they are looked up in :data:`OPTIONS` when a config is made rather than fixed when this
    module is imported.
    """

    __slots__ = ("_values", "_id")
    _values: dict[str, Any]

    def __init__(self, **values: Any) -> None:
        check_keys(values, "config key")
        checked = {
            name: _CHECKED_DEFAULTS[name] if name not in values and name in _CHECKED_DEFAULTS
            else option.coerce(values.get(name, option.default))
            for name, option in OPTIONS.items()
        }
        object.__setattr__(self, "_values", checked)
        self._check_names()
        self._check_values()

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        if name in OPTIONS:  # an option registered after this config was made
            return OPTIONS[name].default
        raise AttributeError(f"TrialConfig has no field {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("TrialConfig is immutable; use config.replace(...)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrialConfig) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self) -> str:
        return "TrialConfig(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"

    def __reduce__(self) -> tuple[Any, ...]:
        # Unpickled as stored, without validation: a Ray worker receives configs before it
        # imports the plugins their techniques come from.
        return (_restore, (dict(self._values),))

    # -- validation -------------------------------------------------------------------
    def _check_names(self) -> None:
        for registry in REGISTRIES.values():
            registry.chosen(self)

    def _check_values(self) -> None:
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs={self.warmup_epochs} is longer than the run (epochs={self.epochs}).")
        if self.lawn and self.lawn_free_epochs >= self.epochs:
            raise ConfigError(
                f"LAWN trains freely for lawn_free_epochs={self.lawn_free_epochs} and then constrains; with "
                f"epochs={self.epochs} the constrained phase never starts. Set lawn_free_epochs below epochs."
            )
        self._check_weight_constraints()
        if self.norm == "bn-ghost":
            virtual = self.norm_virtual_batch or self.batch_size
            if self.batch_size % virtual:
                raise ConfigError(
                    f"Ghost BatchNorm splits each batch into virtual batches of norm_virtual_batch={virtual} "
                    f"examples, which must divide batch_size={self.batch_size}."
                )

    def _check_weight_constraints(self) -> None:
        """ε-shifted and orthonormal decay, Singular Value Bounding, error modulation."""
        mode = self.weight_decay_mode
        if mode in ("eps-shifted", "orthonormal") and self.weight_decay == 0:
            raise ConfigError(
                f"weight_decay_mode={mode} is a form of weight decay, its coefficient λ being weight_decay; with "
                "weight_decay=0 it does nothing. Set weight_decay > 0 (the papers use their usual decay, 1e-4 to 5e-4)."
            )
        if self.svb:
            if self.svb_period > self.epochs:
                raise ConfigError(
                    f"Singular Value Bounding runs every svb_period={self.svb_period} epochs; with epochs={self.epochs} "
                    "it would never run. Set svb_period to at most epochs."
                )
            if self.train_only_norm:
                raise ConfigError("svb bounds the trained conv and linear weights, which train_only_norm freezes at "
                                  "their initialization. Use one or the other.")
            if mode == "orthonormal":
                raise ConfigError(
                    "svb and weight_decay_mode=orthonormal are two ways of holding the weights near orthogonal (a "
                    "periodic bound on the singular values, a penalty on W Wᵀ − I); a trial takes one of them."
                )
        if 0 < self.error_modulation < 1:
            raise ConfigError(
                f"error_modulation is the tolerance τ ≥ 1 of backward error modulation (a conv layer's error is "
                f"rescaled when it is more than τ times smaller or larger than the layer above's), or 0 for none; "
                f"got {self.error_modulation}."
            )

    # -- identity ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        values = self._values
        return {name: _jsonable(values[name] if name in values else option.default) for name, option in OPTIONS.items()}

    def reads(self) -> set[str]:
        """The options this trial reads: the trial-level ones and the ones its chosen entries
        declare, those with ``when`` only while switched on."""
        out = {o.name for o in TRIAL_OPTIONS if o.switched_on(self)}
        for registry in REGISTRIES.values():
            entry = registry.chosen(self)
            out.update(o.name for o in (entry.options if entry else ()) if o.switched_on(self))
        return out

    @property
    def trial_id(self) -> str:
        """SHA-256 of the canonical config: sorted keys, and fields at their default left
        out. Leaving defaults out is what lets the harness grow: a new knob is added with a
        default that reproduces the old behaviour, so every stored result keeps its id.
        The other half of that contract is that a default never changes (pinned by a test).
        Computed once per config (it is immutable): planning a 100,000-trial study asks often."""
        try:
            return object.__getattribute__(self, "_id")
        except AttributeError:
            pass
        trial_id = _id_of(self.canonical())
        object.__setattr__(self, "_id", trial_id)
        return trial_id

    def canonical(self) -> dict[str, Any]:
        """What identifies the trial: the fields that differ from their defaults, less the
        options that do nothing for this trial (GroupNorm's groups when the norm is bn), so
        a study that sets them in its base for every norm still shares trials with others."""
        read = self.reads()
        return {k: v for k, v in self.to_dict().items() if v != DEFAULTS[k] and k in read}

    @property
    def effective_lr(self) -> float:
        """The learning rate after the batch-size scaling rule (the derived value)."""
        return scaled_lr(self.lr, self.batch_size, self.lr_base_batch, self.lr_scaling)

    def replace(self, **changes: Any) -> TrialConfig:
        return from_mapping({**self.to_dict(), **changes})

    def with_seed(self, seed: Any, canonical: Mapping[str, Any] | None = None, *, checked: bool = False) -> TrialConfig:
        """This config with another seed. Only the seed is checked (``checked``: it was
        already, by ``OPTIONS["seed"].coerce``): no other field's check reads it, so a study's
        seeds cost one validation per configuration, not per trial (validating every field of
        100,000 trials takes seconds). Given this config's :meth:`canonical`, the copy's id is
        derived from it (the seed is always read)."""
        values = dict(object.__getattribute__(self, "_values"))
        values["seed"] = seed if checked else OPTIONS["seed"].coerce(seed)
        copy = _restore(values)
        if canonical is not None:
            object.__setattr__(copy, "_id", _seeded_id(canonical, values["seed"]))
        return copy


def _id_of(canonical: Mapping[str, Any]) -> str:
    """The trial id of a canonical config: SHA-256 of its sorted compact JSON, 16 hex digits."""
    return _hashed(json.dumps(canonical, sort_keys=True, separators=(",", ":")))


def _hashed(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: The last canonical form :func:`_seeded_id` split (a study asks for each configuration's
#: seeds in a row): (that mapping, its id without a seed, the JSON text before the seed's
#: value, the text after it), one tuple, replaced whole.
_SEEDED: list[tuple[Any, str, str, str]] = [(None, "", "", "")]


def _seeded_id(canonical: Mapping[str, Any], seed: int) -> str:
    """``_id_of`` of ``canonical`` with this seed (left out at its default). The sorted JSON is
    written once per canonical form, with a stand-in seed, and split around it: a study's
    100,000 trials cost one ``json.dumps`` per configuration, not per trial."""
    split = _SEEDED[0]
    if split[0] is not canonical:
        rest = {k: v for k, v in canonical.items() if k != "seed"}
        text = json.dumps({**rest, "seed": -1}, sort_keys=True, separators=(",", ":"))
        head, _, tail = text.partition('"seed":-1')
        split = _SEEDED[0] = (canonical, _id_of(rest), head + '"seed":', tail)
    if seed == DEFAULTS["seed"]:
        return split[1]
    text = str(seed) if type(seed) is int else json.dumps(_jsonable(seed))  # an int's JSON is its str
    return _hashed(split[2] + text + split[3])


def _restore(values: dict[str, Any]) -> TrialConfig:
    config = object.__new__(TrialConfig)
    object.__setattr__(config, "_values", values)
    return config


def scaled_lr(base_lr: float, batch_size: int, base_batch: int, rule: str) -> float:
    """lr for ``batch_size`` given ``base_lr`` at ``base_batch``: none → base_lr;
    linear (Goyal et al. 2017) → base_lr·B/B₀; sqrt (Krizhevsky 2014) → base_lr·√(B/B₀)."""
    ratio = batch_size / base_batch
    return {"none": base_lr, "linear": base_lr * ratio, "sqrt": base_lr * math.sqrt(ratio)}[rule]


def from_mapping(values: Mapping[str, Any]) -> TrialConfig:
    check_keys(values, "config key")
    return TrialConfig(**values)


def check_keys(values: Iterable[str], what: str) -> None:
    """Every key is a config field (an installed plugin's, once loaded, included)."""
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        from bench.zoo.plugins import load_installed

        load_installed()
        unknown = sorted(set(unknown) - set(OPTIONS))
    if unknown:
        raise UnknownNameError(what, unknown[0], OPTIONS)


def trial_from_assignments(values: Mapping[str, Any]) -> TrialConfig:
    """One trial from values a user set (``bench train --set``): a set option that the
    trial does not read is refused, as in a study."""
    from bench.spec.study import does_nothing

    config = from_mapping(values)
    read = config.reads()
    for key in values:
        if key not in read:
            raise ConfigError(does_nothing(key, [config]))
    return config


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as YAML (3 → int,
    0.1 → float, true → bool, [0.5, 0.75] → list, anything else → string)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"Expected KEY=VALUE (for example --set batch_size=8); got {text!r}.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # an unknown key is refused where the values are used (a study's plugins may declare it)
    if value is None and key in OPTIONS and not OPTIONS[key].nullable:
        raise ConfigError(f"--set {key}= needs a value ({OPTIONS[key].type_name}).")
    return key, value


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    return dict(parse_assignment(item) for item in items)
