"""The package's shape: layers that import only downwards, one job per module, CLIs that shadow nothing."""

import ast
import importlib
import os
import pkgutil
import re
import tomllib

import pytest

import gatekv_jax as gk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "gatekv_jax")
# Lowest first; a module may import its own layer and the layers below it, never one above.
LAYERS = ("utils", "models", "kv", "engine", "training", "evaluation")
CLI_MODULES = ("train", "evaluate", "generate", "report")
MAX_MODULE_LINES = 300


def package_modules() -> dict[str, str]:
    """`{dotted name: file}` of every module in the package."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                modules[dotted] = path
    return modules


def layer_of(module: str) -> int:
    """utils 0 ... evaluation 5; the package root and the CLI modules sit on top (6)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def imported_modules(path: str) -> set[str]:
    """Every gatekv_jax module a file imports, at any depth of the file (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gatekv_jax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gatekv_jax"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if f"{node.module}.{a.name}" in package_modules()}
    return found


def test_imports_point_down_only():
    offences = []
    for module, path in package_modules().items():
        for target in imported_modules(path):
            if layer_of(target) > layer_of(module):
                offences.append(f"{module} imports {target}")
            if target.split(".")[-1] in CLI_MODULES and target.count(".") == 1:
                offences.append(f"{module} imports the CLI module {target}")
    assert not offences


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk above catches an import from a lower layer to a higher one, inside a function too."""
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from gatekv_jax.engine.prefill import prefill\n")
    assert layer_of("gatekv_jax.kv.bad") < max(layer_of(t) for t in imported_modules(str(path)))


def test_every_module_states_its_one_job_and_stays_small():
    for module, path in package_modules().items():
        source = open(path).read()
        docstring = ast.get_docstring(ast.parse(source))
        assert docstring and docstring.split("\n")[0].strip(), f"{module} has no first docstring line"
        assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{module} is over {MAX_MODULE_LINES} lines"


def test_cli_modules_never_shadow_public_names():
    before = {name: getattr(gk, name) for name in gk.__all__}
    for name in CLI_MODULES:
        cli = importlib.import_module(f"gatekv_jax.{name}")
        assert callable(cli.main)
    assert gk.generate is before["generate"] and gk.generate.__module__ == "gatekv_jax.engine.decode"
    assert all(getattr(gk, name) is value for name, value in before.items())
    from gatekv_jax.generate import main  # the CLI stays importable by its module path

    assert main.__module__ == "gatekv_jax.generate"


def test_cli_mains_take_argv():
    from gatekv_jax.generate import main as generate_main
    from gatekv_jax.report import main as report_main

    assert report_main([]) == 2
    with pytest.raises(SystemExit) as exit_info:
        generate_main(["--help"])
    assert exit_info.value.code == 0


def test_public_api_is_complete():
    for name in gk.__all__:
        assert getattr(gk, name) is not None
    for subpackage in LAYERS[1:]:
        module = importlib.import_module(f"gatekv_jax.{subpackage}")
        assert module.__doc__ and all(hasattr(module, name) for name in getattr(module, "__all__", ()))


def test_pyproject_lists_every_subpackage():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = {"gatekv_jax"} | {f"gatekv_jax.{m.name}" for m in pkgutil.iter_modules([PACKAGE]) if m.ispkg}
    assert listed == found | {"gatekv_jax.configs"}


def test_config_names_resolve_to_the_packaged_configs(tmp_path, monkeypatch):
    from gatekv_jax.training.configs import parse_config_flags, resolve_config_path

    monkeypatch.chdir(tmp_path)  # no ./configs here
    for value in ("configs/tiny.py", "tiny.py", "tiny"):
        assert resolve_config_path(value) == os.path.join(ROOT, "configs", "tiny.py")
    config = parse_config_flags(["--config=configs/tiny.py", "--config.fit.steps=3"], "gemma3_270m", "train")
    assert config.model == "tiny-random-qwen3" and config.fit.steps == 3
    assert parse_config_flags([], "gemma3_270m", "train").model == "gemma3-270m"
    with pytest.raises(ValueError, match=re.escape("config 'nope.py' is neither a file nor a packaged config")):
        resolve_config_path("nope.py")
