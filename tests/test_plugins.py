"""Plugins: a user's techniques, registered with the zoo's decorators, from a file, a
spec, the command line, an installed package's entry point, and on Ray workers."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import bench.zoo.plugins as plugins
from bench.cli import app
from bench.errors import BenchError, ConfigError
from bench.spec import OPTIONS, TrialConfig, load_spec
from bench.spec import config as spec_config
from bench.zoo.registry import NORMS, REGISTRIES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

PLUGIN = '''
import torch
from torch import nn
from bench.zoo.registry import NORMS, Option

@NORMS.register("scaled-bn", "BatchNorm times a fixed factor.", paper="a test",
                options=(Option("scaled_factor", float, 1.0, "output scale", gt=0),))
def scaled_bn(num_channels, dims, *, scaled_factor):
    bn = nn.BatchNorm2d(num_channels) if dims == 2 else nn.BatchNorm1d(num_channels)
    return nn.Sequential(bn, Scale(scaled_factor))

class Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor
    def forward(self, x):
        return x * self.factor
'''


@pytest.fixture(autouse=True)
def isolated_registries():
    """Plugins register process-wide: each test starts and ends with the built-in zoo."""
    saved = {field: dict(registry._entries) for field, registry in REGISTRIES.items()}
    loaded, installed = dict(plugins._LOADED), plugins._INSTALLED_LOADED
    modules = set(sys.modules)
    yield
    for field, registry in REGISTRIES.items():
        registry._entries.clear()
        registry._entries.update(saved[field])
    plugins._LOADED.clear()
    plugins._LOADED.update(loaded)
    plugins._INSTALLED_LOADED = installed
    for name in set(sys.modules) - modules:
        if name.startswith(("my_", "plug_", "clash_", "broken_")):
            del sys.modules[name]
    spec_config._refresh()


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_file_plugin_registers_a_norm_with_its_option(tmp_path):
    plugin = plugins.load_plugin(str(write(tmp_path, "my_norms.py", PLUGIN)))
    assert plugin.module == "my_norms" and plugin.path == str(tmp_path / "my_norms.py")
    assert "scaled-bn" in NORMS and "scaled_factor" in OPTIONS
    plain, scaled = TrialConfig(norm="scaled-bn"), TrialConfig(norm="scaled-bn", scaled_factor=2.0)
    assert plain.trial_id != scaled.trial_id
    assert TrialConfig(norm="bn", scaled_factor=2.0).trial_id == TrialConfig(norm="bn").trial_id  # inert elsewhere
    with pytest.raises(ConfigError, match="scaled_factor must be a number > 0"):
        TrialConfig(norm="scaled-bn", scaled_factor=0.0)
    assert plugins.load_plugin(str(tmp_path / "my_norms.py")) == plugin  # loading twice is a no-op


def test_plugin_entries_pass_the_declaration_checks(tmp_path):
    """The same checks as every built-in entry: options change the trial and its id."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_option_declarations import check_declared, check_inert, check_signature
    finally:
        sys.path.pop(0)
    plugins.load_plugin(str(EXAMPLES / "rmsnorm.py"))
    entry = NORMS.entry("rmsnorm")
    check_signature(entry)
    check_declared(REGISTRIES["norm"], entry)
    check_inert(REGISTRIES["norm"], entry)


def test_a_spec_loads_its_plugins_relative_to_itself(tmp_path):
    (tmp_path / "lib").mkdir()
    write(tmp_path / "lib", "my_spec_norms.py", PLUGIN)
    spec = write(tmp_path, "s.yaml", """\
        name: s
        plugins: [lib/my_spec_norms.py]
        base: {dataset: synthetic, epochs: 1, scaled_factor: 0.5}
        axes: {norm: [scaled-bn, bn]}
        """)
    study = load_spec(spec)
    assert study.plugins == ("lib/my_spec_norms.py",)
    assert [c.norm for c in study.expand()] == ["scaled-bn", "bn"]
    assert "plugins" in study.to_dict()


def test_the_command_line_loads_plugins_and_trains_with_them(tmp_path):
    path = write(tmp_path, "my_cli_norms.py", PLUGIN)
    result = CliRunner().invoke(app, ["--plugin", str(path), "train", "--set", "norm=scaled-bn", "--set",
                                      "scaled_factor=0.5", "--set", "dataset=synthetic", "--set", "epochs=1",
                                      "--set", "width=8", "--no-save"])
    assert result.exit_code == 0, result.output
    assert "completed" in result.output
    listing = CliRunner().invoke(app, ["--plugin", str(path), "zoo", "norms"])
    assert "scaled-bn" in listing.output and "scaled_factor=1.0" in listing.output


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("broken_syntax.py", "def f(:\n", r"failed to import: SyntaxError"),
        ("broken_raise.py", "import math\nraise RuntimeError('no GPU here')\n", r"RuntimeError: no GPU here \(.*broken_raise.py:2\)"),
        ("clash_builtin.py", PLUGIN.replace('"scaled-bn"', '"bn"'), r"norm name 'bn' is registered twice"),
        ("clash_option.py", PLUGIN.replace('Option("scaled_factor", float, 1.0', 'Option("norm_eps", float, 1e-3'),
         r"norm_eps' is declared differently"),
    ],
)
def test_plugin_mistakes_are_one_paragraph_before_anything_runs(tmp_path, name, text, message):
    path = write(tmp_path, name, text)
    with pytest.raises(BenchError, match=message):
        plugins.load_plugin(str(path))
    result = CliRunner().invoke(app, ["--plugin", str(path), "zoo", "norms"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "bn" in NORMS and NORMS.entry("bn").module == "bench.zoo.norms.basic"  # the zoo is intact


def test_two_plugins_may_not_register_one_name(tmp_path):
    plugins.load_plugin(str(write(tmp_path, "plug_a.py", PLUGIN)))
    with pytest.raises(ConfigError, match=r"registered twice: by plug_a.scaled_bn and by plug_b.scaled_bn"):
        plugins.load_plugin(str(write(tmp_path, "plug_b.py", PLUGIN)))


def test_missing_plugins_name_what_was_looked_for(tmp_path):
    with pytest.raises(BenchError, match="plugin file 'nope.py' .*does not exist"):
        plugins.load_plugin("nope.py", base=tmp_path)
    with pytest.raises(BenchError, match="No plugin module 'no_such_module_xyz' is installed"):
        plugins.load_plugin("no_such_module_xyz")
    with pytest.raises(BenchError, match="already"):
        plugins.load_plugin(str(write(tmp_path, "json.py", PLUGIN)))  # would shadow the standard library


def test_installed_packages_plugins_load_through_their_entry_point(tmp_path, monkeypatch):
    """A package declaring ``[project.entry-points."bench.plugins"]`` is loaded the first
    time a config names something unknown."""
    site = tmp_path / "site"
    (site / "my_pkg").mkdir(parents=True)
    (site / "my_pkg" / "__init__.py").write_text("")
    (site / "my_pkg" / "norms.py").write_text(PLUGIN)
    dist = site / "my_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[bench.plugins]\nmine = my_pkg.norms\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugins, "_INSTALLED_LOADED", False)
    config = TrialConfig(norm="scaled-bn", scaled_factor=3.0)
    assert config.scaled_factor == 3.0
    (plugin,) = [p for p in plugins.loaded() if p.module == "my_pkg.norms"]
    assert plugin.origin == "entry point mine" and plugin.path == str(site / "my_pkg")
    assert plugins.ray_py_modules() == [str(site / "my_pkg")]


@pytest.mark.ray
def test_plugins_reach_ray_workers_through_the_runtime_environment(tmp_path, monkeypatch):
    """The workers import the plugin from the copy Ray ships (``py_modules``): the path the
    driver loaded it from is withheld from them, so nothing else could provide it."""
    import bench.grid.ray_executor as executor
    from bench.grid import GridOptions, run_study
    from bench.store import open_store

    path = write(tmp_path, "my_ray_norms.py", PLUGIN)
    spec = write(tmp_path, "s.yaml", f"""\
        name: plug
        plugins: [{path}]
        base: {{dataset: synthetic, epochs: 1, width: 8, scaled_factor: 0.5}}
        axes: {{norm: [scaled-bn]}}
        """)
    study = load_spec(spec)
    monkeypatch.setattr(executor, "loaded", lambda: [plugins.Plugin(p.ref, p.module, None, p.origin)
                                                     for p in plugins.loaded()])
    store = open_store(str(tmp_path / "s.sqlite"))
    try:
        run = run_study(study, store, GridOptions("ray", 1.0, 0.0, 1, None, None, "cpu"))
        assert run.counts["completed"] == 1, store.find_runs({})
    finally:
        store.close()


def test_changing_one_line_of_a_plugin_reruns_exactly_the_trials_that_use_it(tmp_path):
    from bench.grid import GridOptions, plan, run_study
    from bench.store import open_store

    path = write(tmp_path, "my_changing_norms.py", PLUGIN)
    spec_path = write(tmp_path, "s.yaml", """\
        name: changing
        plugins: [my_changing_norms.py]
        base: {dataset: synthetic, epochs: 1, width: 8}
        axes: {norm: [scaled-bn, bn], batch_size: [16, 32]}
        """)
    options = GridOptions("local", 1.0, 0.0, None, None, None, "cpu")
    store = open_store(str(tmp_path / "s.sqlite"))
    try:
        first = run_study(load_spec(spec_path), store, options, report_dir=None)
        assert first.counts["completed"] == 4
        path.write_text(path.read_text().replace("return x * self.factor", "return x * self.factor + 0.0"))
        again = plan(load_spec(spec_path), store)
        assert sorted(c.config.norm for c in again.changed) == ["scaled-bn", "scaled-bn"]
        assert {c.norm for c in again.todo} == {"scaled-bn"} and len(again.todo) == 2
        second = run_study(load_spec(spec_path), store, options, report_dir=None)
        assert second.counts["completed"] == 2
        assert not plan(load_spec(spec_path), store).todo  # the new code's results are current
    finally:
        store.close()
