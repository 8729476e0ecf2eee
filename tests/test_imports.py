"""The package's shape, read from its source with `ast` (every import, lazy ones inside functions too): no import
cycle, the library never imports its command line, and each layer imports only the layers below it. Also: every
generation engine implements the one-method `Generator` protocol."""

import ast
import graphlib
import inspect
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rs_trainer"

# What each part of the package must not import (prefixes of module names). The ground floor imports nothing of
# the package; `run/` and `tasks/` sit under the phases; the phases under the generators and scorers; all of them
# under the recipe (config), which sits under the trainer, the offline tools and the command line.
ABOVE_ALL = ("rs_trainer.config", "rs_trainer.trainer", "rs_trainer.tools", "rs_trainer.cli")
FORBIDDEN = {
    "rs_trainer.errors": ("rs_trainer",),
    "rs_trainer.samples": ("rs_trainer",),
    "rs_trainer.run": ("rs_trainer.phases", "rs_trainer.generators", "rs_trainer.rewards", *ABOVE_ALL),
    "rs_trainer.tasks": ("rs_trainer.phases", "rs_trainer.generators", "rs_trainer.rewards", *ABOVE_ALL),
    "rs_trainer.phases": ("rs_trainer.generators", "rs_trainer.rewards", *ABOVE_ALL),
    "rs_trainer.generators": ("rs_trainer.rewards", *ABOVE_ALL),
    "rs_trainer.rewards": ("rs_trainer.generators", *ABOVE_ALL),
    "rs_trainer.config": ("rs_trainer.trainer", "rs_trainer.tools", "rs_trainer.cli"),
    "rs_trainer.tools": ("rs_trainer.trainer", "rs_trainer.cli"),
}


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the modules of the package it imports (a package's face counts as its
    `__init__`), resolved as `../shared/tools/import_cycles.py` does."""
    modules = module_names()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        anchor = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(anchor[: len(anchor) - (node.level - 1)] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_graph_is_read():
    """The parser sees eager, lazy and relative imports: guards the two tests below against passing on nothing."""
    graph = import_graph()
    assert "rs_trainer.errors" in graph["rs_trainer.config"]
    assert "rs_trainer.trainer" in graph["rs_trainer.cli"]  # a lazy import inside `train_main`
    assert "rs_trainer.generators.spec" in graph["rs_trainer.generators"]


def test_no_import_cycle():
    try:
        graphlib.TopologicalSorter(import_graph()).prepare()
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")


def test_the_library_never_imports_the_command_line():
    importers = sorted(m for m, targets in import_graph().items() if "rs_trainer.cli" in targets)
    assert importers == ["rs_trainer.__main__"]


def test_each_layer_imports_only_downward():
    upward = []
    for module, targets in import_graph().items():
        for layer, forbidden in FORBIDDEN.items():
            if within(module, layer):
                upward += [f"{module} -> {t}" for t in sorted(targets) if any(within(t, f) for f in forbidden)]
    assert upward == []


def test_every_engine_implements_the_generator_protocol():
    from rs_trainer.generators import Generator
    from rs_trainer.generators.local import LocalGenerator
    from rs_trainer.generators.openai_client import OpenAIGenerator

    expected = inspect.signature(Generator.generate)
    for engine in (LocalGenerator, OpenAIGenerator):
        assert inspect.signature(engine.generate) == expected, engine.__name__
