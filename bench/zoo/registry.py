"""Registries of techniques: one declaration per entry, everything else derived from it.

A registry entry is declared once, with the decorator on its builder::

    @NORMS.register(
        "gn", "GroupNorm over (C/G, H, W) per sample and group.", paper="Wu & He 2018, arXiv:1803.08494",
        options=(NORM_GROUPS, NORM_GROUP_SIZE, NORM_EPS, NORM_AFFINE),
    )
    def gn(num_channels, dims, *, norm_groups, norm_group_size, norm_eps, norm_affine): ...

The :class:`Option` records are the only place an option is spelled: the trial config's
fields and their validation, the trial-id rule (an option enters the id exactly when the
chosen entry declares it), the builder's keyword arguments (:meth:`Registry.build` passes
the declared options, under their config names, and nothing else), ``bench zoo KIND`` and
the "does nothing" errors all come from them.

Built-in entries are read from the zoo's source without importing it. Spec parsing,
validation and trial ids need the declarations, and importing the zoo would import torch,
torchvision and timm (seconds) for commands that train nothing; so the declarations of
``bench/zoo/**.py`` are evaluated from the syntax tree (:class:`_Catalog`), the way
setuptools reads a literal ``__version__`` without running a module. A declaration must
therefore be literal: constants, tuples, ``Option(...)`` calls and names bound at the top
of a zoo module to such values (directly or imported from another zoo module). The module
is imported when an entry is first built; its decorators then run and must declare exactly
what was read (checked), which binds the builder. Entries registered at run time by code
outside the zoo are added as their decorator runs.
"""

from __future__ import annotations

import ast
import importlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import ConfigError, UnknownNameError

_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "tuple": tuple}


@dataclass(frozen=True)
class Option:
    """One configurable value an entry reads: a trial-config field of the same name.

    ``type`` is int, float, bool, str or tuple (a list of numbers); ``nullable`` allows
    None (the entry's own default). Bounds ``ge``/``gt``/``le``/``lt`` and ``choices``
    are checked when a config is made. ``unit`` and ``help`` are shown by ``bench zoo``.
    ``when`` names the field that switches the option on: a bool when true, a number when
    not 0 (``ema_norm`` is read only with ``ema_decay`` > 0); or ``"field=value"``: read only
    while that field has that value (``head_rank`` is read only with ``head=factorized``); on
    an entry's option, the field is another option of the same entry, with that choice.
    ``modules`` (trial-level options) names the modules implementing the technique the option
    switches on: their source enters the code fingerprint of every trial that sets the option
    to anything but its default (:func:`bench.provenance.code_fingerprint`), as an entry's
    module does for the trials that choose it.
    """

    name: str
    type: type
    default: Any
    help: str
    unit: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] = ()
    nullable: bool = False
    when: str | None = None
    modules: tuple[str, ...] = ()

    def condition(self) -> tuple[str, Any]:
        """``when`` as (field, value): ``"head=factorized"`` gives ("head", "factorized"); a bare
        field name gives (field, True), switched on by any true or non-zero value."""
        field, sep, value = (self.when or "").partition("=")
        return (field, value) if sep else (field, True)

    def switched_on(self, config: Any) -> bool:
        """Whether a trial with ``config``'s values reads this option (always, without ``when``)."""
        if self.when is None:
            return True
        field, value = self.condition()
        current = getattr(config, field)
        return bool(current) if value is True else str(current) == value

    @property
    def type_name(self) -> str:
        base = {int: "an integer", float: "a number", bool: "true or false", str: "a string", tuple: "a list of numbers"}
        text = base[self.type]
        return text + " (or null)" if self.nullable else text

    def range_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        parts = [f"{sym} {bound if isinstance(bound, int) else format(bound, 'g')}" for sym, bound in (("≥", self.ge), (">", self.gt), ("≤", self.le), ("<", self.lt))
                 if bound is not None]
        return " and ".join(parts)

    def coerce(self, value: Any) -> Any:
        """The value checked against the type, bounds and choices, normalized (YAML and
        ``--set`` give loose types: 1e-3 as a string, 3 for 3.0, one number for a list)."""
        if value is None and self.nullable:
            return None
        value = self._typed(value)
        bad = self._violation(value)
        if bad:
            raise ConfigError(f"{self.name} must be {bad}; got {self.name}={value!r}.")
        return value

    def _typed(self, value: Any) -> Any:
        def bad() -> ConfigError:  # built only when raised: a study's expansion checks every value it sets
            return ConfigError(f"{self.name} must be {self.type_name}; got {value!r}.")

        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
                raise bad()
            return int(value)
        if self.type is float:
            if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
                try:
                    value = float(value)
                except ValueError:
                    raise bad() from None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad()
            return float(value)
        if self.type is tuple:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value]
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
            ):
                raise bad()
            return tuple(float(v) for v in value)
        if not isinstance(value, self.type):
            raise bad()
        return value

    def _violation(self, value: Any) -> str:
        if self.choices and value not in self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.type in (int, float):
            number = float(value)
            if not math.isfinite(number):
                return "a finite number" + (f" {self.range_text()}" if self.range_text() else "")
            bounds = ((self.ge, number >= (self.ge or 0)), (self.gt, number > (self.gt or 0)),
                      (self.le, number <= (self.le or 0)), (self.lt, number < (self.lt or 0)))
            if not all(ok for bound, ok in bounds if bound is not None):
                return f"{self.type_name} {self.range_text()}"
        return ""

    def describe(self) -> str:
        """One line for ``bench zoo``: name, default, unit, range, help."""
        default = "null" if self.default is None else self.default
        extra = ", ".join(x for x in (self.unit, self.range_text()) if x)
        return f"{self.name}={default}" + (f" ({extra})" if extra else "") + f": {self.help}"


@dataclass(eq=False)
class Entry:
    """A registered technique: its declaration and (once its module is imported) its builder."""

    kind: str
    name: str
    description: str
    paper: str = ""
    options: tuple[Option, ...] = ()
    tags: frozenset[str] = frozenset()
    info: Mapping[str, Any] = field(default_factory=dict)
    module: str = ""
    attr: str = ""
    _factory: Any = None

    @property
    def factory(self) -> Any:
        """The builder; imports the entry's module on first use."""
        if self._factory is None:
            module = importlib.import_module(self.module)
            if self._factory is None:  # the decorator binds it; a plain attribute otherwise
                self._factory = getattr(module, self.attr)
        return self._factory

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def kwargs(self, config: Any) -> dict[str, Any]:
        """The declared options' values in ``config`` (a TrialConfig or a mapping), by name;
        an option a mapping leaves out takes its declared default."""
        if isinstance(config, Mapping):
            return {o.name: config.get(o.name, o.default) for o in self.options}
        return {o.name: getattr(config, o.name) for o in self.options}

    def declaration(self) -> tuple[Any, ...]:
        return (self.kind, self.name, self.description, self.paper, self.options, self.tags, dict(self.info))


class Registry:
    """Name → :class:`Entry` for one kind of technique, chosen by the config field ``field``."""

    def __init__(self, kind: str, field: str, builds: str):
        self.kind, self.field, self.builds = kind, field, builds
        self._entries: dict[str, Entry] = {}

    # -- declaring ------------------------------------------------------------------------
    def register(
        self,
        name: str,
        description: str,
        paper: str = "",
        *,
        options: tuple[Option, ...] = (),
        tags: tuple[str, ...] = (),
        info: Mapping[str, Any] | None = None,
    ) -> Callable[[Any], Any]:
        def deco(factory: Any) -> Any:
            entry = Entry(self.kind, name, description, paper, tuple(options), frozenset(tags), dict(info or {}),
                          factory.__module__, factory.__qualname__, factory)
            self._add(entry, live=True)
            return factory

        return deco

    def _add(self, entry: Entry, *, live: bool) -> None:
        _catalog().load()
        known = self._entries.get(entry.name)
        if known is None:
            _check_options(entry)
            self._entries[entry.name] = entry
            if live:
                for listener in _LISTENERS:
                    try:
                        listener(entry)
                    except ConfigError:
                        del self._entries[entry.name]  # e.g. an option declared unlike its namesake
                        raise
            return
        if known.module == entry.module and known.attr == entry.attr:
            if live and known.declaration() != entry.declaration():
                raise ConfigError(
                    f"The {self.kind} {entry.name!r} in {entry.module} declares something other than its source reads "
                    "statically: zoo declarations must be literal (constants, tuples, Option(...) and names bound to "
                    "them at the top of a zoo module)."
                )
            known._factory = entry._factory or known._factory
            return
        raise ConfigError(
            f"The {self.kind} name {entry.name!r} is registered twice: by {known.module}.{known.attr} and by "
            f"{entry.module}.{entry.attr}. Give one of them another name."
        )

    # -- reading --------------------------------------------------------------------------
    def _all(self) -> dict[str, Entry]:
        _catalog().load()
        return self._entries

    def entry(self, name: str) -> Entry:
        try:
            return self._all()[name]
        except (KeyError, TypeError):
            if isinstance(name, str) and _load_installed_plugins() and name in self._entries:
                return self._entries[name]
            raise UnknownNameError(self.kind, name, self._all()) from None

    def get(self, name: str) -> Any:
        return self.entry(name).factory

    def build(self, name: str, config: Any, *args: Any, **context: Any) -> Any:
        """The entry's builder called with ``args``, ``context`` and its declared options
        taken from ``config`` (a TrialConfig or a mapping), under their config names."""
        entry = self.entry(name)
        return entry.factory(*args, **context, **entry.kwargs(config))

    def check(self, name: str) -> None:
        self.entry(name)

    def chosen(self, config: Any) -> Entry | None:
        """The entry ``config`` chooses by the field ``self.field``; None where that field is
        null (a nullable choice: ``activation: null`` is the architecture's own)."""
        name = getattr(config, self.field)
        return None if name is None else self.entry(name)

    def names(self) -> list[str]:
        return list(self._all())

    def entries(self) -> list[Entry]:
        return list(self._all().values())

    def __contains__(self, name: object) -> bool:
        return name in self._all()

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


_RESERVED = {"trial_id", "canonical", "to_dict", "replace", "effective_lr", "reads"}
_LISTENERS: list[Callable[[Entry], None]] = []


def _load_installed_plugins() -> bool:
    """Loads installed packages' plugins (first miss only); whether any was loaded."""
    from bench.zoo.plugins import load_installed

    return bool(load_installed())


def on_register(listener: Callable[[Entry], None]) -> None:
    """Calls ``listener(entry)`` whenever an entry is registered at run time (a plugin's),
    after the built-in declarations: how the trial config learns of new options."""
    _LISTENERS.append(listener)


def _check_options(entry: Entry) -> None:
    for option in entry.options:
        if not option.name.isidentifier() or option.name.startswith("_") or option.name in _RESERVED:
            raise ConfigError(f"The {entry.kind} {entry.name!r} declares an option named {option.name!r}, which cannot be "
                              "a config field (use a lowercase identifier that is not a TrialConfig method).")
        if option.type not in _TYPES.values():
            raise ConfigError(f"Option {option.name!r} of the {entry.kind} {entry.name!r} has type {option.type!r}; "
                              "use int, float, bool, str or tuple.")
        if option.default is not None or not option.nullable:
            option.coerce(option.default)  # a default outside its own range is a declaration bug
        field, value = option.condition()
        if value is not True and value not in [str(c) for o in entry.options if o.name == field for c in o.choices]:
            raise ConfigError(f"Option {option.name!r} of the {entry.kind} {entry.name!r} is read only when "
                              f"{option.when}, but {entry.name!r} declares no option {field!r} with that choice.")


# The registries: kind, the config field that chooses an entry, what a builder returns.
NORMS = Registry("norm", "norm", "a layer for (num_channels, dims)")
CONVS = Registry("conv", "conv", "a ConvKind: conv and linear constructors")
ACTIVATIONS = Registry("activation", "activation", "a layer for (num_channels, dims)")
ARCHS = Registry("arch", "arch", "the model, given the norm, conv and activation factories")
OPTIMIZERS = Registry("optimizer", "optimizer", "a torch optimizer over parameter groups")
SCHEDULES = Registry("schedule", "schedule", "factor(step): the multiple of the peak learning rate")
AUGMENTS = Registry("augment", "augment", "(images, labels, generator) → (images, targets)")
DATASETS = Registry("dataset", "dataset", "root directory → (train_x, train_y, val_x, val_y)")
REGISTRIES: dict[str, Registry] = {r.field: r for r in (DATASETS, AUGMENTS, ARCHS, NORMS, CONVS, ACTIVATIONS, OPTIMIZERS,
                                                        SCHEDULES)}
_BY_NAME = {"NORMS": NORMS, "CONVS": CONVS, "ARCHS": ARCHS, "OPTIMIZERS": OPTIMIZERS, "SCHEDULES": SCHEDULES,
            "AUGMENTS": AUGMENTS, "DATASETS": DATASETS, "ACTIVATIONS": ACTIVATIONS}


# -- reading the zoo's declarations from its source -------------------------------------------


class StaticDeclarationError(ConfigError):
    """A zoo declaration that cannot be read without running the module."""


class _Module:
    """The top-level names of one zoo module, evaluated on demand from its syntax tree."""

    def __init__(self, catalog: _Catalog, name: str, path: Path):
        self.catalog, self.name, self.path = catalog, name, path
        self.tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        self.bound: dict[str, ast.expr] = {}
        self.imported: dict[str, tuple[str, str]] = {}
        self.values: dict[str, Any] = {}
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self.bound[node.targets[0].id] = node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                self.bound[node.target.id] = node.value
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bench.zoo"):
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = (node.module, alias.name)

    def value(self, name: str, node: ast.AST) -> Any:
        if name in _TYPES:
            return _TYPES[name]
        if name not in self.values:
            if name in self.bound:
                self.values[name] = self.eval(self.bound[name])
            elif name in self.imported:
                module, attr = self.imported[name]
                self.values[name] = self.catalog.module(module).value(attr, node)
            else:
                raise self._error(node, f"the name {name!r} is not a literal bound at the top of a zoo module")
        return self.values[name]

    def eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Tuple, ast.List)):
            out: list[Any] = []
            for item in node.elts:
                if isinstance(item, ast.Starred):
                    out.extend(self.eval(item.value))
                else:
                    out.append(self.eval(item))
            return tuple(out) if isinstance(node, ast.Tuple) else out
        if isinstance(node, ast.Dict) and all(k is not None for k in node.keys):
            return {self.eval(k): self.eval(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.eval(node.operand)
            return -operand if isinstance(node.op, ast.USub) else +operand
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.eval(node.left) + self.eval(node.right)
        if isinstance(node, ast.Name):
            return self.value(node.id, node)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Option":
            args = [self.eval(a) for a in node.args]
            return Option(*args, **{k.arg: self.eval(k.value) for k in node.keywords if k.arg})
        raise self._error(node, f"{ast.unparse(node)!r} is not a literal")

    def _error(self, node: ast.AST, what: str) -> StaticDeclarationError:
        line = getattr(node, "lineno", "?")
        return StaticDeclarationError(
            f"{self.path}:{line}: {what}. A zoo declaration is read without importing torch, so it may use only "
            "constants, tuples, Option(...) and names bound to them at the top of a zoo module."
        )

    def declarations(self) -> Iterator[tuple[Registry, Entry]]:
        for node in self.tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                continue
            for deco in node.decorator_list:
                if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute) and deco.func.attr == "register"
                        and isinstance(deco.func.value, ast.Name) and deco.func.value.id in _BY_NAME):
                    registry = _BY_NAME[deco.func.value.id]
                    args = [self.eval(a) for a in deco.args]
                    kw = {k.arg: self.eval(k.value) for k in deco.keywords if k.arg}
                    yield registry, _entry(registry, node.name, self.name, *args, **kw)


def _entry(
    registry: Registry, attr: str, module: str, name: str, description: str, paper: str = "", *,
    options: tuple[Option, ...] = (), tags: tuple[str, ...] = (), info: Mapping[str, Any] | None = None,
) -> Entry:
    return Entry(registry.kind, name, description, paper, tuple(options), frozenset(tags), dict(info or {}), module, attr)


class _Catalog:
    """Every declaration of the built-in zoo, read once from the source files."""

    def __init__(self, root: Path, package: str):
        self.root, self.package = root, package
        self.modules: dict[str, _Module] = {}
        self.loaded = False

    def module(self, dotted: str) -> _Module:
        if dotted not in self.modules:
            rel = Path(*dotted.split(".")[len(self.package.split(".")):])
            path = self.root / rel / "__init__.py"
            if not path.is_file():
                path = (self.root / rel).with_suffix(".py")
            self.modules[dotted] = _Module(self, dotted, path)
        return self.modules[dotted]

    def load(self) -> None:
        if self.loaded:
            return
        self.loaded = True
        for path in sorted(self.root.rglob("*.py")):
            parts = path.relative_to(self.root).with_suffix("").parts
            dotted = ".".join((self.package, *(parts[:-1] if parts[-1] == "__init__" else parts)))
            for registry, entry in self.module(dotted).declarations():
                registry._add(entry, live=False)


_CATALOG = _Catalog(Path(__file__).resolve().parent, __name__.rpartition(".")[0])


def _catalog() -> _Catalog:
    return _CATALOG
