"""Plugins: a user's own techniques, registered with the zoo's own decorators.

A plugin is a Python file, a package directory or an importable module that registers
entries exactly as the zoo does (``@NORMS.register(..., options=(Option(...),))``, and
``@section_kind`` for report sections); its options become trial-config fields like any
other. Plugins are loaded

- from a study spec, ``plugins: [my_norms.py, mypkg.layers]`` (paths relative to the spec),
- from the command line, ``bench --plugin my_norms.py grid ...`` (or ``BENCH_PLUGINS``),
- from installed packages that declare an entry point in the group ``bench.plugins``
  (``[project.entry-points."bench.plugins"] my = "mypkg.bench_plugin"``), loaded the first
  time a name or a config key is not found, and by ``bench zoo``.

A file plugin is imported under its file name (``my_norms.py`` → module ``my_norms``), so
that Ray workers on other machines import it by the same name from the copy Ray ships
them (:func:`ray_py_modules`: the runtime environment's ``py_modules``); a module plugin
ships its top-level package. Names that clash with a built-in entry or with another
plugin's are refused when the plugin registers them.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType

from bench.errors import BenchError, ConfigError

ENTRY_POINT_GROUP = "bench.plugins"


class PluginError(BenchError):
    """A plugin that cannot be found or fails to import."""


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin: how it was named, the module it is, where its code lives."""

    ref: str  # as given: a path or a module name
    module: str  # the imported module's name
    path: str | None  # its .py file or top-level package directory (shipped to Ray workers)
    origin: str  # "study spec", "command line", "entry point NAME"


_LOADED: dict[str, Plugin] = {}
_INSTALLED_LOADED = False


def loaded() -> list[Plugin]:
    """Every plugin loaded in this process, in loading order."""
    return list(_LOADED.values())


def load_plugins(refs: Iterable[str], *, base: Path | None = None, origin: str = "command line") -> list[Plugin]:
    return [load_plugin(ref, base=base, origin=origin) for ref in refs]


def load_plugin(ref: str, *, base: Path | None = None, origin: str = "command line") -> Plugin:
    """Imports the plugin ``ref``: a path to a ``.py`` file or a package directory (relative
    to ``base``, else the current directory), or a module name. Loading one twice is a no-op."""
    ref = str(ref).strip()
    path = _as_path(ref, base)
    if path is not None:
        return _load_path(ref, path, origin)
    if ref.endswith(".py") or "/" in ref or "\\" in ref:
        where = f" (relative to {base})" if base else ""
        raise PluginError(f"The plugin file {ref!r}{where} does not exist. Give a path to a .py file, a package "
                          "directory, or the name of an installed module.")
    return _load_module(ref, origin)


def load_installed() -> list[Plugin]:
    """Loads the plugins installed packages declare (entry-point group ``bench.plugins``), once."""
    global _INSTALLED_LOADED
    if _INSTALLED_LOADED:
        return []
    _INSTALLED_LOADED = True
    out = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        out.append(_load_module(ep.module, f"entry point {ep.name}", ref=ep.value, target=ep))
    return out


def ray_py_modules() -> list[str]:
    """What Ray's runtime environment must ship to workers (``py_modules``): each loaded
    plugin's file or top-level package directory."""
    return sorted({p.path for p in _LOADED.values() if p.path})


def import_on_worker(plugins: Iterable[Plugin]) -> None:
    """On a Ray worker: imports the driver's plugins (shipped by ``py_modules``, installed,
    or, on the driver's own machine, from their path), so their entries are registered."""
    for plugin in plugins:
        if plugin.module in sys.modules:
            continue
        try:
            importlib.import_module(plugin.module)
        except ImportError:
            if not plugin.path or not Path(plugin.path).exists():
                raise
            _load_path(plugin.ref, Path(plugin.path), plugin.origin)


# -- loading ---------------------------------------------------------------------------


def _as_path(ref: str, base: Path | None) -> Path | None:
    candidate = Path(ref).expanduser()
    if not candidate.is_absolute() and base is not None:
        candidate = base / candidate
    if candidate.is_file() or (candidate.is_dir() and (candidate / "__init__.py").is_file()):
        return candidate.resolve()
    return None


def _load_path(ref: str, path: Path, origin: str) -> Plugin:
    name = path.stem if path.is_file() else path.name
    if not name.isidentifier():
        raise PluginError(f"The plugin {ref!r} cannot be imported as a module named {name!r}: rename it to a valid "
                          "Python identifier (letters, digits, underscores).")
    known = sys.modules.get(name)
    if known is not None:
        if Path(getattr(known, "__file__", "") or "").resolve() in (path, path / "__init__.py"):
            return _remember(Plugin(ref, name, str(path), origin))
        raise PluginError(
            f"The plugin {ref!r} would be imported as the module {name!r}, which is already {known.__name__} from "
            f"{getattr(known, '__file__', 'built in')}. Rename the plugin file."
        )
    init = path / "__init__.py" if path.is_dir() else path
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(path)] if path.is_dir() else None
    )
    if spec is None or spec.loader is None:
        raise PluginError(f"The plugin {ref!r} is not a Python file or package.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    _execute(ref, lambda: spec.loader.exec_module(module), name)  # type: ignore[union-attr]
    return _remember(Plugin(ref, name, str(path), origin))


def _load_module(name: str, origin: str, *, ref: str | None = None, target: metadata.EntryPoint | None = None) -> Plugin:
    module: ModuleType = _execute(ref or name, (target.load if target else lambda: importlib.import_module(name)), None)
    if not isinstance(module, ModuleType):
        module = sys.modules[name]
    top = sys.modules.get(name.split(".")[0], module)
    where = getattr(top, "__file__", None)
    path = str(Path(where).parent) if where and Path(where).name == "__init__.py" else where
    return _remember(Plugin(ref or name, name, path, origin))


def _execute(ref: str, run: object, name: str | None) -> object:
    try:
        return run()  # type: ignore[operator]
    except ConfigError as exc:
        if name:
            sys.modules.pop(name, None)
        raise ConfigError(f"Loading the plugin {ref!r}: {exc}") from None
    except ModuleNotFoundError as exc:
        if name:
            sys.modules.pop(name, None)
        if exc.name and ref.split(".")[0] == exc.name.split(".")[0]:
            raise PluginError(f"No plugin module {ref!r} is installed, and no such file exists. Give a path to a .py "
                              "file or package directory, or install the package that provides it.") from None
        raise PluginError(f"The plugin {ref!r} failed to import: {_where(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - any error in a user's module is reported as theirs
        if name:
            sys.modules.pop(name, None)
        raise PluginError(f"The plugin {ref!r} failed to import: {_where(exc)}") from None


def _where(exc: BaseException) -> str:
    """``Type: message (file:line)``, the line being the innermost frame of the plugin."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if "importlib" not in f.filename and not f.filename.startswith("<frozen")]
    at = f" ({own[-1].filename}:{own[-1].lineno})" if own else ""
    return f"{type(exc).__name__}: {exc}{at}"


def _remember(plugin: Plugin) -> Plugin:
    _LOADED.setdefault(plugin.module, plugin)
    return _LOADED[plugin.module]
