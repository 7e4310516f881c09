"""What methods and metrics exist, read from the source without importing it.

The Snakefile plans the DAG on every invocation (a no-op `snakemake -n` must stay fast), so it
cannot import torch just to learn which functions are registered and which parameters they take.
Each method or metric module registers its functions with a decorator whose arguments are
literals, or names of module-level constants assigned a literal (so several registrations can
share one parameter schema); this module finds those decorators with `ast` and evaluates their
arguments with `ast.literal_eval`. The runtime registry (`attrflow.methods`, `attrflow.metrics`) receives the very
same literals, and a unit test checks that both views agree.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

DECORATORS = {"register_method": "methods", "register_metric": "metrics"}


@dataclass(frozen=True)
class CatalogEntry:
    """One registered function as declared in its module's source."""

    fn: str
    family: str  # "methods" or "metrics"
    module: Path
    function: str  # the Python name of the registered function in `module`
    params: dict = field(default_factory=dict)  # JSON-schema property per keyword parameter
    options: dict = field(default_factory=dict)  # the decorator's other keyword arguments


class CatalogError(RuntimeError):
    pass


def _decorator_call(node: ast.expr) -> tuple[str, ast.Call] | None:
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name in DECORATORS:
            return name, node
    return None


def _module_literals(tree: ast.Module) -> dict[str, object]:
    """Module-level `NAME = <literal>` assignments, so registrations can share a parameter schema."""
    found: dict[str, object] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if len(targets) != 1 or not isinstance(targets[0], ast.Name) or getattr(node, "value", None) is None:
            continue
        try:
            found[targets[0].id] = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError):
            continue
    return found


def _literal(node: ast.expr, names: dict[str, object]) -> object:
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    return ast.literal_eval(node)


def scan_module(path: Path) -> list[CatalogEntry]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = _module_literals(tree)
    entries = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            found = _decorator_call(dec)
            if found is None:
                continue
            kind, call = found
            try:
                (fn_name,) = [_literal(a, names) for a in call.args]
                kwargs = {k.arg: _literal(k.value, names) for k in call.keywords}
            except (ValueError, TypeError) as err:
                raise CatalogError(
                    f"{path}:{call.lineno}: {kind}(...) must take one name and literal keyword "
                    f"arguments so the workflow can read it without importing torch ({err})"
                ) from None
            params = kwargs.pop("params", {}) or {}
            entries.append(CatalogEntry(fn_name, DECORATORS[kind], path, node.name, params, kwargs))
    return entries


@lru_cache(maxsize=None)
def catalog(family: str, package_dir: Path = PACKAGE_DIR) -> dict[str, CatalogEntry]:
    """All registered functions of one family ("methods" or "metrics"), by function name."""
    found: dict[str, CatalogEntry] = {}
    for path in sorted((package_dir / family).glob("*.py")):
        for entry in scan_module(path):
            if entry.family != family:
                continue
            if entry.fn in found:
                raise CatalogError(
                    f"{family[:-1]} {entry.fn!r} is registered in both "
                    f"{found[entry.fn].module.name} and {path.name}"
                )
            found[entry.fn] = entry
    return found
