"""Options are declared once, and the trial id follows what is built.

For every registered entry of every registry and every option it declares, the trial is
built (model after any data-dependent init, optimizer and schedule stepped a few times,
the lr curve, an augmented batch) at the option's default and at another valid value: the
trial ids must differ exactly when the built objects differ. For every option the entry
does *not* declare (the other entries' options of its registry), the ids must be equal and
so must the objects: an entry that reads an option it does not declare fails here, and so
does one that declares an option it ignores. The builders' signatures must name exactly
the declared options, with the declared defaults.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from bench.errors import ConfigError
from bench.spec import OPTIONS, TRIAL_OPTIONS, TrialConfig
from bench.trial import build_augment, build_model, build_optimizer, build_schedule, conv_factory
from bench.zoo.augment import value_range
from bench.zoo.datasets import DatasetSource
from bench.zoo.registry import REGISTRIES, Entry, Option, Registry
from bench.zoo.schedules import schedule_curve

# A 1×8×8, 10-class "dataset": every architecture builds on it (VGG skips pools at 1 pixel).
SOURCE = DatasetSource("probe", in_channels=1, image_size=8, num_classes=10, load=None, needs_files=False, train_size=64)
BATCH = 8
STEPS = 2

# Base configs per registry: small models, every trial-level knob that an option needs on
# (lawn's options act only with lawn=true). The entry under test replaces its field.
BASE = dict(dataset="synthetic", arch="cnn", width=8, depth=4, batch_size=BATCH, epochs=4, lr_scaling="none", lr=0.1)
# Norms a trial may fall back to when an architecture refuses the base norm (nf-resnet: none).
NORM_FALLBACKS = ("bn", "ln", "none")


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, SOURCE.in_channels, SOURCE.image_size, SOURCE.image_size, generator=g)
    return x, torch.arange(BATCH) % SOURCE.num_classes


def _plain(value: object) -> object:
    """A comparable form of a module attribute (numbers, strings, dataclasses, tuples)."""
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return repr(value)
    return type(value).__name__


def _module_state(model: torch.nn.Module) -> list[object]:
    out: list[object] = []
    for name, m in model.named_modules():
        attrs = sorted((k, _plain(v)) for k, v in vars(m).items() if not k.startswith("_") and k != "training")
        out.append((name, type(m).__name__, attrs))
    out += [(n, p.requires_grad, p.detach().clone()) for n, p in model.named_parameters()]
    out += [(n, b.detach().clone()) for n, b in model.named_buffers()]
    return out


def fingerprint(config: TrialConfig) -> list[object]:
    """Everything a trial builds from its config, as comparable values."""
    x, y = _inputs()
    torch.manual_seed(config.seed)
    model = build_model(config, SOURCE)
    data_init = conv_factory(config).kind.data_init
    if data_init is not None:
        data_init(model, x)
    built = [_module_state(model)]
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(config, model, steps=2)
    scheduler = build_schedule(config, optimizer, 2)
    torch.manual_seed(1)
    for _ in range(STEPS):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    with torch.no_grad():
        built.append(model(x))
    built.append([p.detach().clone() for p in params])
    built.append([{k: _plain(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups])
    built.append(schedule_curve(config, 10))
    augment = build_augment(config, SOURCE.image_size, SOURCE.num_classes, value_range(x))
    generator = torch.Generator().manual_seed(2)
    built.append([augment(x, y, generator) for _ in range(4)])  # several draws: a random choice of ops
    return built


def same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(u, v) for u, v in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def base_config(registry: Registry, entry: Entry, **changes: object) -> TrialConfig:
    """A config choosing ``entry``, with a norm its architecture accepts."""
    values = {**BASE, registry.field: entry.name, **changes}
    norms = [entry.name] if registry.field == "norm" else NORM_FALLBACKS
    sizes = ({}, {"depth": None}, {"depth": None, "width": None})  # the architecture's defaults if needed
    last: Exception | None = None
    for norm in norms:
        for size in sizes:
            try:
                config = TrialConfig(**{**values, **size, "norm": norm})
                build_model(config, SOURCE)
                return config
            except ConfigError as exc:
                last = exc
    raise AssertionError(f"no base config builds for {registry.kind} {entry.name!r}: {last}")


def alternatives(option: Option) -> list[object]:
    """Valid values other than the default, most plausible first."""
    d = option.default
    if option.type is bool:
        candidates: list[object] = [not d]
    elif option.choices:
        candidates = [c for c in option.choices if c != d]
    elif option.type is tuple:
        candidates = [(0.25,), (0.4, 0.8)]
    elif option.type is str:
        candidates = []
    elif d is None:
        candidates = [2, 4, 1] if option.type is int else [1e-3, 0.5]
    elif option.type is int:
        candidates = [d * 2, d // 2, d + 1, d - 1, 2, 4]
    else:
        candidates = [d * 2, d / 2, d + 0.5, 0.5, 0.05, 2.0]
    out = []
    for value in candidates:
        try:
            if option.coerce(value) != d and value not in out:
                out.append(option.coerce(value))
        except ConfigError:
            pass
    return out


def cases() -> list[tuple[str, str]]:
    return [(field, entry.name) for field, registry in REGISTRIES.items() for entry in registry.entries()]


def _vary(config: TrialConfig, option: Option) -> TrialConfig | None:
    """``config`` with ``option`` at the first alternative value that builds."""
    for value in alternatives(option):
        try:
            changed = config.replace(**{option.name: value})
            build_model(changed, SOURCE)
            return changed
        except ConfigError:
            continue
    return None


def check_declared(registry: Registry, entry: Entry) -> None:
    """Each declared option, at another value, changes both the built trial and its id; an
    option read only ``when`` another option has a choice (``head_rank`` with
    ``head=factorized``) does so with that choice, and changes neither without it."""
    base = base_config(registry, entry)
    reference = fingerprint(base)
    for option in entry.options:
        start, expected = base, reference
        if option.when:
            field, value = option.condition()
            inert = _vary(base, option) if not option.switched_on(base) else None
            if inert is not None:
                assert inert.trial_id == base.trial_id and same(reference, fingerprint(inert)), (
                    f"{entry.kind}={entry.name}: {option.name} acts while {field}={getattr(base, field)}"
                )
            start = base.replace(**{field: value})
            expected = fingerprint(start)
        changed = _vary(start, option)
        assert changed is not None, f"{entry.kind}={entry.name}: no alternative value of {option.name} builds"
        value = getattr(changed, option.name)
        assert not same(expected, fingerprint(changed)), (
            f"{entry.kind}={entry.name} declares {option.name} but builds the same trial at {option.name}={value}"
        )
        assert start.trial_id != changed.trial_id, f"{entry.kind}={entry.name}: {option.name} changes the trial, not its id"


def check_inert(registry: Registry, entry: Entry) -> None:
    """The options of the registry's other entries change neither the trial nor its id."""
    base = base_config(registry, entry)
    reference = fingerprint(base)
    others = {o.name: o for e in registry.entries() for o in e.options if o.name not in entry.option_names}
    for option in others.values():
        changed = _vary(base, option)
        if changed is None:
            continue
        assert base.trial_id == changed.trial_id, f"{entry.kind}={entry.name}: inert {option.name} changes the id"
        assert same(reference, fingerprint(changed)), f"{entry.kind}={entry.name} reads {option.name} without declaring it"


@pytest.mark.parametrize(("field", "name"), cases(), ids=[f"{f}={n}" for f, n in cases()])
def test_declared_options_change_the_id_exactly_when_they_change_the_trial(field, name):
    check_declared(REGISTRIES[field], REGISTRIES[field].entry(name))


@pytest.mark.parametrize(("field", "name"), cases(), ids=[f"{f}={n}" for f, n in cases()])
def test_options_an_entry_does_not_declare_change_neither_the_trial_nor_its_id(field, name):
    check_inert(REGISTRIES[field], REGISTRIES[field].entry(name))


def check_signature(entry: Entry) -> None:
    """The builder's keyword-only parameters that are config options are exactly the
    declared options, with the declared defaults where the builder gives one."""
    params = inspect.signature(entry.factory).parameters
    context = {o.name for o in TRIAL_OPTIONS}  # what the trainer passes itself (lr, norm, conv, width, ...)
    named = {n for n in params if n in OPTIONS and n not in context}
    undeclared = named - set(entry.option_names)
    assert not undeclared, f"{entry.kind} {entry.name!r} takes {sorted(undeclared)} without declaring them"
    missing = set(entry.option_names) - set(params)
    assert not missing, f"{entry.kind} {entry.name!r} declares {sorted(missing)} but its builder does not take them"
    for option in entry.options:
        default = params[option.name].default
        if default is not inspect.Parameter.empty:
            assert option.coerce(default) == option.default, f"{entry.name}: {option.name} defaults differ"


@pytest.mark.parametrize(("field", "name"), cases(), ids=[f"{f}={n}" for f, n in cases()])
def test_builders_take_exactly_their_declared_options(field, name):
    check_signature(REGISTRIES[field].entry(name))


def test_the_static_reading_equals_the_live_declarations():
    """Importing every zoo module runs its decorators, which compare themselves with what
    was read from the source (a mismatch raises); each entry is then bound to its builder."""
    for registry in REGISTRIES.values():
        for entry in registry.entries():
            assert callable(entry.factory), entry.name
            assert entry.factory.__module__ == entry.module


def test_an_undeclared_option_fails_the_signature_check():
    """A Adam variant that reads beta2 but declares only beta1 (its builder keeps beta2 at
    its own default, so the config's beta2 would be ignored under the default's id)."""
    from bench.zoo.optimizers import BETA1, EPS

    def adam_variant(groups, *, lr, beta1, optimizer_eps, beta2=0.99):  # reads beta2, declares only beta1 and eps
        return torch.optim.Adam(groups, lr=lr, betas=(beta1, beta2), eps=optimizer_eps or 1e-8)

    entry = Entry("optimizer", "adam-variant", "test", options=(BETA1, EPS), module=__name__, attr="x",
                  _factory=adam_variant)
    with pytest.raises(AssertionError, match=r"takes \['beta2'\] without declaring"):
        check_signature(entry)


def test_a_norm_whose_builder_ignores_a_declared_option_fails(monkeypatch):
    """Frozen BatchNorm declaring norm_momentum (it keeps no running statistics, so the
    momentum changes nothing): two ids for one trial, and the check says so."""
    from bench.zoo.norms import NORM_MOMENTUM
    from bench.zoo.registry import NORMS

    entry = NORMS.entry("bn-frozen")
    builder = entry.factory
    monkeypatch.setattr(entry, "options", (*entry.options, NORM_MOMENTUM))
    monkeypatch.setattr(entry, "_factory", lambda c, d, *, norm_momentum, **kw: builder(c, d, **kw))
    with pytest.raises(AssertionError, match="declares norm_momentum but builds the same trial"):
        check_declared(REGISTRIES["norm"], entry)


def test_a_norm_reading_an_option_it_does_not_declare_fails(monkeypatch):
    """GroupNorm whose declaration lost its group options while its builder still reads the
    groups (here through the factory's options, as trainer code could): different models
    under one id, and the check says so."""
    from bench.zoo import norms
    from bench.zoo.norms import NORM_AFFINE, NORM_EPS
    from bench.zoo.registry import NORMS

    entry = NORMS.entry("gn")
    monkeypatch.setattr(entry, "options", (NORM_EPS, NORM_AFFINE))
    current: dict[str, int] = {}
    real_norm_factory = norms.NormFactory

    def hidden(num_channels, dims, *, norm_eps, norm_affine):
        if num_channels % current["groups"]:
            raise ConfigError("groups must divide the channels")
        return torch.nn.GroupNorm(current["groups"], num_channels, eps=norm_eps, affine=norm_affine)

    monkeypatch.setattr(entry, "_factory", hidden)
    import bench.trial.build as build

    def leaky_norm_factory(config):
        current["groups"] = config.norm_groups
        return real_norm_factory(config.norm, NORMS.entry(config.norm).kwargs(config))

    monkeypatch.setattr(build, "norm_factory", leaky_norm_factory)
    with pytest.raises(AssertionError, match="reads norm_groups without declaring it"):
        check_inert(REGISTRIES["norm"], entry)
