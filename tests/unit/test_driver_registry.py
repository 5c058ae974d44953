"""Drivers register themselves: each format is a subpackage of `accel.drivers` that declares its name,
options, acceld aliases and layer facts, and nothing outside a format's folder names it
(docs/architecture.md).

"Names it" means code: an identifier, an import, or a string that is not a docstring (prose may give a
format as an example). bench/ and scripts/ are left out: like a user's config, they pick formats by name.
"""

from __future__ import annotations

import ast
import pkgutil
import re
from pathlib import Path

import accel.drivers
from accel.config import load_settings
from accel.drivers import DRIVER_TYPES, Driver, driver_class
from accel.drivers.base import DriverOptions, LayerFacts

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("accel", "tasks", "flows", "service", "deployments")
# How code may spell each format: its driver name and the names the format goes by elsewhere.
SPELLINGS = {"estargz": r"e?stargz", "nydus": r"nydus", "zstdchunked": r"zstd[-_:]?chunked"}
# (path, format) → why that module may name a format outside its folder.
ALLOWED = {
    **{
        ("accel/constants.py", fmt): "the media types and annotations other tools give the formats"
        for fmt in SPELLINGS
    },
    ("accel/drivers/estargz/driver.py", "zstdchunked"): (
        "acceld runs zstd:chunked as `type: estargz` with `compression: zstdchunked` (acceld_driver)"
    ),
    **{
        (f"accel/drivers/zstdchunked/{module}", "estargz"): (
            "zstd:chunked's `variant: stargz` is stargz-snapshotter's, annotated with the stargz TOC digest"
        )
        for module in ("writer.py", "reader.py")
    },
}


def test_every_driver_package_is_registered_under_its_name() -> None:
    packages = sorted(m.name for m in pkgutil.iter_modules(accel.drivers.__path__) if m.ispkg)
    assert list(DRIVER_TYPES) == packages == sorted(SPELLINGS)
    for name in DRIVER_TYPES:
        cls = driver_class(name)
        assert issubclass(cls, Driver) and cls.name == name
        assert issubclass(cls.options_model, DriverOptions)
        assert cls.facts_model is None or issubclass(cls.facts_model, LayerFacts)
        assert cls.acceld_driver({}) == (name, {})  # an empty config is the driver itself


def test_an_acceld_alias_is_declared_by_the_driver_whose_type_acceld_uses() -> None:
    settings = load_settings(
        {"converter": {"driver": {"type": "estargz", "config": {"compression": "zstdchunked"}}}}
    )
    assert [d.type for d in settings.converter.all_drivers()] == ["zstdchunked"]


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _words(node: ast.AST, docstrings: set[int]) -> list[str]:
    """The names and strings `node` spells in code."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
        return [node.value]
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, ast.alias):
        return [node.name, node.asname or ""]
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return []


def _format_names() -> list[tuple[str, str, str]]:
    """(module, format, where and what) for each time a module outside a format's folder names it."""
    found = []
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            where = path.relative_to(REPO).as_posix()
            tree = ast.parse(path.read_text(), where)
            docstrings = _docstrings(tree)
            for node in ast.walk(tree):
                for word in _words(node, docstrings):
                    for fmt, spelling in SPELLINGS.items():
                        if not where.startswith(f"accel/drivers/{fmt}/") and re.search(
                            spelling, word, re.IGNORECASE
                        ):
                            found.append((where, fmt, f"{where}:{getattr(node, 'lineno', '?')}: {word!r}"))
    return found


def test_nothing_outside_a_formats_folder_names_it() -> None:
    found = _format_names()
    assert [what for where, fmt, what in found if (where, fmt) not in ALLOWED] == []
    # Each exception is still needed: drop the ones nothing uses any more.
    assert set(ALLOWED) - {(where, fmt) for where, fmt, _ in found} == set()
