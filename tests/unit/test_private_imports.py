"""No module of `attrflow` reaches into another module's private names.

The convention this test enforces, over every module under src/attrflow:

* a name with a leading underscore (``_helper``, ``_CONSTANT``) is private to the module that
  defines it: no other module imports it (``from attrflow.x import _helper``) or reads it through
  a module alias (``x._helper``);
* a module with a leading underscore (``attrflow.methods._batching``, ``attrflow.metrics._removal``)
  is private to its subpackage: modules of that subpackage import its public names, modules
  elsewhere do not import it at all. What other subpackages need lives in a public module
  (``attrflow.metrics.ranking`` for the pixel ranking ROAR shares with the removal metrics).
"""

from __future__ import annotations

import ast
from pathlib import Path

from attrflow.catalog import PACKAGE_DIR

ROOT = "attrflow"


def _module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    anchor = module.split(".") if is_package else module.split(".")[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join([*anchor, node.module] if node.module else anchor)


def _private_module_outside_its_package(importer: str, imported: str) -> str | None:
    """The private part of `imported` that `importer` may not reach, or None."""
    parts = imported.split(".")
    for i, part in enumerate(parts):
        if _is_private(part):
            owner = ".".join(parts[:i])  # the subpackage the private module belongs to
            if importer != owner and not importer.startswith(owner + "."):
                return ".".join(parts[: i + 1])
    return None


def violations(package_dir: Path = PACKAGE_DIR) -> list[str]:
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        module = _module_name(path, package_dir)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        aliases: dict[str, str] = {}  # local name → attrflow module it is bound to
        for node in ast.walk(tree):
            where = f"{path.relative_to(package_dir.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] != ROOT:
                        continue
                    if alias.asname:
                        aliases[alias.asname] = alias.name
                    private = _private_module_outside_its_package(module, alias.name)
                    if private:
                        found.append(f"{where}: imports private module {private}")
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(node, module, path.name == "__init__.py")
                if source.split(".")[0] != ROOT:
                    continue
                private = _private_module_outside_its_package(module, source)
                if private:
                    found.append(f"{where}: imports from private module {private}")
                for alias in node.names:
                    name = alias.name
                    if source == module:
                        continue
                    if _is_private(name):
                        found.append(f"{where}: imports private name {name} from {source}")
                    submodule = f"{source}.{name}"
                    if (package_dir.parent / Path(*submodule.split("."))).with_suffix(".py").is_file():
                        aliases[alias.asname or name] = submodule
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                target = aliases.get(node.value.id)
                if target and target != module and _is_private(node.attr):
                    found.append(f"{where}: reads private name {node.attr} of {target}")
    return found


def test_no_module_imports_another_modules_private_names():
    assert violations() == []


def test_the_scan_finds_each_kind_of_violation(tmp_path):
    # A throwaway package laid out like attrflow: the scan must flag each forbidden form and
    # accept the allowed ones (a subpackage using its own private module).
    package = tmp_path / "attrflow"
    (package / "methods").mkdir(parents=True)
    (package / "jobs").mkdir()
    for init in (package / "__init__.py", package / "methods" / "__init__.py", package / "jobs" / "__init__.py"):
        init.write_text("")
    (package / "methods" / "_shared.py").write_text("def helper():\n    pass\n\n\ndef _inner():\n    pass\n")
    (package / "methods" / "gradient.py").write_text(
        "from attrflow.methods._shared import helper\nfrom ._shared import helper as again\n"
    )
    (package / "jobs" / "run.py").write_text(
        "from attrflow.methods._shared import helper\n"
        "from attrflow.methods.gradient import _hidden\n"
        "import attrflow.methods.gradient as gradient\n"
        "import attrflow.methods._shared\n"
        "value = gradient._cache\n"
    )
    (package / "methods" / "other.py").write_text("from attrflow.methods._shared import _inner\n")
    found = violations(package)
    assert len(found) == 5, found
    assert any("run.py:1: imports from private module attrflow.methods._shared" in f for f in found)
    assert any("run.py:2: imports private name _hidden" in f for f in found)
    assert any("run.py:4: imports private module attrflow.methods._shared" in f for f in found)
    assert any("run.py:5: reads private name _cache" in f for f in found)
    assert any("other.py:1: imports private name _inner" in f for f in found)
    assert not any("gradient.py" in f for f in found)
