"""Content fingerprints of code and files (never mtimes: a fresh clone resets those).

A method's code fingerprint covers its own module and every `attrflow` module it imports,
transitively, so editing `methods/integrated_gradients.py` changes the fingerprint of the
methods defined there and of nothing else, while editing a shared helper changes all of its users.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

from attrflow.catalog import PACKAGE_DIR

ROOT_PACKAGE = "attrflow"


def _resolve(module: str) -> Path | None:
    """Path of an `attrflow.*` module or package `__init__`, or None if it is not ours."""
    parts = module.split(".")
    if parts[0] != ROOT_PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([ROOT_PACKAGE, *parts])


def _imports(path: Path) -> set[Path]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found: set[Path] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            resolved = _resolve(name)
            if resolved is not None:
                found.add(resolved)
    found.discard(path)
    # The package root only carries the version string; depending on it would make every
    # fingerprint change with each release for no reason.
    found.discard(PACKAGE_DIR / "__init__.py")
    return found


@lru_cache(maxsize=None)
def module_closure(path: Path) -> tuple[Path, ...]:
    """The module and every attrflow module it imports, transitively, sorted."""
    seen: set[Path] = set()
    todo = [path.resolve()]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(_imports(current) - seen)
    return tuple(sorted(seen))


def code_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for p in module_closure(Path(path)):
        h.update(str(p.relative_to(PACKAGE_DIR)).encode())
        h.update(b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def value_fingerprint(value: object) -> str:
    """Stable hash of a JSON-like value (dict keys sorted)."""
    import json

    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
