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
    assert "rs_trainer.errors" in graph["rs_trainer.config.recipe"]
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
    """Both methods, with the protocol's parameters: the trainer calls every engine the same way."""
    from rs_trainer.generators import Generator
    from rs_trainer.generators.local import FrozenGenerator, LocalGenerator
    from rs_trainer.generators.openai_client import AdapterServedPolicy, OpenAIGenerator
    from rs_trainer.generators.server import ServedGenerator
    from rs_trainer.generators.vllm_engine import VLLMGenerator

    engines = (LocalGenerator, FrozenGenerator, VLLMGenerator, OpenAIGenerator, AdapterServedPolicy, ServedGenerator)
    for method in ("generate", "open"):
        expected = list(inspect.signature(getattr(Generator, method)).parameters)
        for engine in engines:
            assert list(inspect.signature(getattr(engine, method)).parameters) == expected, (engine.__name__, method)


def test_each_recipe_engine_builds_its_generator():
    """`build_generator` maps every engine of a recipe to its class, without loading a model or touching a server."""
    from rs_trainer.generators import GeneratorSpec, build_generator
    from rs_trainer.generators.handoff import RunContext

    run = RunContext(None, None, None, "base", 0, "auto", 0, 512, None, None)
    specs = {
        "LocalGenerator": GeneratorSpec("policy"),
        "FrozenGenerator": GeneratorSpec("teacher", model="some/teacher"),
        "VLLMGenerator": GeneratorSpec("policy", engine="vllm"),
        "AdapterServedPolicy": GeneratorSpec(
            "policy", engine="openai", base_url="http://127.0.0.1:1/v1", model="m", adapter_api="vllm"
        ),
        "ServedGenerator": GeneratorSpec("policy", engine="server", command="serve {model} --port {port}"),
    }
    for name, spec in specs.items():
        assert type(build_generator(spec, run)).__name__ == name
    fixed = object()
    assert build_generator(GeneratorSpec("api", engine="openai", base_url="u", model="m"), run, fixed) is fixed
