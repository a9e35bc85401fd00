"""The package's layers point down only: every ``import`` of every module under lvlm/ (at any depth, inside
functions too, relative or absolute) is checked against the layer table below (docs/architecture.md).

Lowest first:

- L0 foundations: errors, types, registry, io, optional, rle, metrics, weights, device, fsutil
- L1 models: lvlm/models/* (networks, their adapters, weight files) and lvlm/testing (test-only models)
- L2 stages: components (the stage base classes), generators, segmenters, selectors, prompters, data
- L3 composition: pipeline, combine / combiners
- L4 applications: bench, train, serve (which must not import each other)
- L5 entry points: cli and the package ``__init__`` (which may re-export)

Imports within one layer are allowed. A module missing from the table fails the test: add it to ``LAYERS``.
The registry's lazy loading of component modules by name (``importlib``, no ``import`` statement) is the one
sanctioned way a lower layer reaches a higher one.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "lvlm"

#: (dotted-name pattern, layer, group); the first matching pattern wins
LAYERS: list[tuple[str, int, str]] = [
    *[
        (f"lvlm.{m}", 0, "base")
        for m in (
            "errors",
            "types",
            "registry",
            "io",
            "optional",
            "rle",
            "metrics",
            "weights",
            "device",
            "fsutil",
        )
    ],
    ("lvlm.models", 1, "models"),
    ("lvlm.models.*", 1, "models"),
    ("lvlm.testing", 1, "models"),
    ("lvlm.components", 2, "stages"),
    *[
        (p, 2, "stages")
        for pkg in ("generators", "segmenters", "selectors", "prompters", "data")
        for p in (f"lvlm.{pkg}", f"lvlm.{pkg}.*")
    ],
    ("lvlm.pipeline", 3, "pipeline"),
    ("lvlm.combine", 3, "pipeline"),
    ("lvlm.combine.*", 3, "pipeline"),
    ("lvlm.combiners", 3, "pipeline"),
    ("lvlm.combiners.*", 3, "pipeline"),
    *[(p, 4, app) for app in ("bench", "train", "serve") for p in (f"lvlm.{app}", f"lvlm.{app}.*")],
    ("lvlm.cli", 5, "cli"),
    ("lvlm", 5, "cli"),
]

#: upward imports in code under restructuring elsewhere, each to be removed (never add to this list)
KNOWN: set[tuple[str, str]] = set()


def layer_of(module: str) -> tuple[int, str] | None:
    for pattern, layer, group in LAYERS:
        if fnmatch.fnmatchcase(module, pattern):
            return layer, group
    return None


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _existing(name: str, root: Path) -> bool:
    rel = Path(*name.split("."))
    return (root.parent / rel).with_suffix(".py").is_file() or (root.parent / rel / "__init__.py").is_file()


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, imported lvlm module) of every import statement in ``path``, relative ones resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:  # `from pkg import mod` imports the module pkg.mod
                if target == "lvlm" and a.name == "__version__":
                    continue  # the version string (a constant, no code) may be read from anywhere
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if _existing(sub, root) else target))
    return [(line, m) for line, m in out if m == "lvlm" or m.startswith("lvlm.")]


def violations(root: Path = ROOT) -> tuple[list[str], list[str]]:
    """(upward imports, modules missing from the table) of the package at ``root``."""
    bad, unknown = [], []
    for path in sorted(root.rglob("*.py")):
        src = module_name(path, root)
        here = layer_of(src)
        if here is None:
            unknown.append(src)
            continue
        for line, target in imports_of(path, root):
            there = layer_of(target)
            if there is None:
                unknown.append(target)
                continue
            rel = f"{path.relative_to(root.parent)}:{line}"
            if there[0] > here[0]:
                bad.append(f"{rel}: {src} (L{here[0]}) imports {target} (L{there[0]})")
            elif there[0] == here[0] == 4 and there[1] != here[1]:
                bad.append(
                    f"{rel}: {src} ({here[1]}) imports {target} ({there[1]}): bench, train and serve "
                    "must not import each other"
                )
    return bad, sorted(set(unknown))


def test_every_module_is_in_the_layer_table():
    _, unknown = violations()
    assert not unknown, f"modules missing from LAYERS in tests/test_layers.py (add them): {unknown}"


def test_no_import_points_up():
    bad, _ = violations()
    new = [
        b for b in bad if (b.split(": ")[1].split(" ")[0], b.split(" imports ")[1].split(" ")[0]) not in KNOWN
    ]
    assert not new, "imports pointing up the layers (docs/architecture.md):\n" + "\n".join(new)


@pytest.mark.parametrize(
    ("code", "found"),
    [
        ("def f():\n    from ..pipeline import Pipeline\n", True),  # inside a function, relative
        ("import lvlm.cli\n", True),  # absolute
        ("from lvlm import pipeline\n", True),  # a module imported by name from its package
        ("from .. import weights\n", False),  # downward
        ("from .sam import SamAdapter\n", False),  # same layer
    ],
)
def test_an_upward_import_is_detected(tmp_path, code, found):
    pkg = tmp_path / "lvlm"
    for rel in ("__init__.py", "pipeline.py", "cli.py", "weights.py", "models/__init__.py", "models/sam.py"):
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text("")
    (pkg / "models" / "fake.py").write_text(code)
    bad, unknown = violations(pkg)
    assert not unknown
    assert bool([b for b in bad if "lvlm.models.fake" in b]) is found, bad


def test_an_unknown_module_is_reported(tmp_path):
    pkg = tmp_path / "lvlm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "newthing.py").write_text("")
    assert violations(pkg)[1] == ["lvlm.newthing"]
