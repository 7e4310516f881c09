"""Content fingerprints of code and files (never mtimes: a fresh clone resets those).

A job's code fingerprint covers what its result depends on, and nothing else:

* **Symbols, not modules.** It starts from the functions a job calls (e.g. the job's entry
  function and the registered method function) and follows, through the abstract syntax tree,
  every module-level name they use — functions, classes and constants of their own module, and
  names imported from other `attrflow` modules — transitively. Editing Expected Gradients
  therefore changes the fingerprint of Guided Backprop only if Guided Backprop really uses the
  edited function, and a real change to a shared helper (`methods/_batching.py`) changes the
  fingerprint of exactly the functions that reach it.
* **What the code does, not how it is written.** Each definition is hashed as its AST dump
  without docstrings, function annotations (a parameter's bounds and description are checked at
  validation, they compute nothing), line numbers, comments or formatting.
* **Computation only.** Planning, configuration and registry modules (`NON_COMPUTE_MODULES`)
  decide which jobs exist and with which parameters; those parameters reach the jobs' params
  themselves, so these modules belong to no fingerprint.
* **Dynamic dispatch.** A call such as ``get_method("integrated_gradients")`` or
  ``get_method(IG_FN)`` (a module-level string constant) adds the registered function it names;
  the caller (`attrflow.plan`) adds functions named by an entry's parameters (SmoothGrad's
  ``of: gradient``).
* **Families.** A family registers one function under several names in a loop (KPM, KNM, …);
  each variant's fingerprint covers that function and the constants the variant binds, as the
  catalogue records them (`registered_symbols`).

Module-level statements that are neither definitions nor imports (a registration loop, a
``torch.backends`` setting) run whenever the module is imported, so they count for every symbol
of their module.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from attrflow.catalog import PACKAGE_DIR, catalog

ROOT_PACKAGE = "attrflow"

# Modules that plan, validate or look up, and never compute a result. Their symbols are not
# followed: a docstring, a comment or a new check there re-plans nothing.
NON_COMPUTE_MODULES = frozenset(
    {
        "attrflow",
        "attrflow.catalog",
        "attrflow.config",
        "attrflow.content",
        "attrflow.fingerprint",
        "attrflow.params",
        "attrflow.plan",
        "attrflow.price",
        "attrflow.registry",
    }
)
# Registry look-ups by name: a constant first argument names the function that will run.
DISPATCHERS = {"get_method": "methods", "get_metric": "metrics"}


# ------------------------------------------------------------------------------ module index
@dataclass
class ModuleIndex:
    name: str
    symbols: dict[str, ast.AST] = field(default_factory=dict)  # top-level bound name → its node
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # alias → (module, attr)
    constants: dict[str, str] = field(default_factory=dict)  # NAME = "string literal"
    residue: list[str] = field(default_factory=list)  # dumps of other top-level statements


def _resolve_module(module: str) -> Path | None:
    """Path of an `attrflow.*` module or package `__init__`, or None if it is not ours."""
    parts = module.split(".")
    if parts[0] != ROOT_PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    rel = Path(path).resolve().relative_to(PACKAGE_DIR).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([ROOT_PACKAGE, *parts])


def _strip_docstrings(node: ast.AST) -> ast.AST:
    for sub in ast.walk(node):
        body = getattr(sub, "body", None)
        if (
            isinstance(sub, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            sub.body = body[1:] or [ast.Pass()]
    return node


def _strip_annotations(node: ast.AST) -> ast.AST:
    """Drop function annotations: they declare parameters (bounds, choices, descriptions checked
    when a config is validated) and types, and compute nothing (`from __future__ import
    annotations` leaves them unevaluated). Defaults stay: they are values the code runs with."""
    for sub in ast.walk(node):
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
            sub.returns = None
            signature = sub.args
            for arg in [*signature.posonlyargs, *signature.args, *signature.kwonlyargs, signature.vararg, signature.kwarg]:
                if arg is not None:
                    arg.annotation = None
    return node


def normalised_dump(node: ast.AST) -> str:
    """The AST of a definition without docstrings, annotations, positions, comments or formatting."""
    stripped = _strip_annotations(_strip_docstrings(copy.deepcopy(node)))
    return ast.dump(stripped, annotate_fields=False, include_attributes=False)


def _import_targets(node: ast.AST, package: str) -> dict[str, tuple[str, str | None]]:
    """alias → (attrflow module, imported attribute or None) for the imports inside ``node``."""
    found: dict[str, tuple[str, str | None]] = {}
    for sub in ast.walk(node):
        if isinstance(sub, ast.Import):
            for alias in sub.names:
                if alias.name.split(".")[0] == ROOT_PACKAGE:
                    if alias.asname:
                        found[alias.asname] = (alias.name, None)
                    else:  # `import attrflow.x.y` binds `attrflow`; attribute chains resolve it
                        found[ROOT_PACKAGE] = (ROOT_PACKAGE, None)
        elif isinstance(sub, ast.ImportFrom):
            base = sub.module or ""
            if sub.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (sub.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != ROOT_PACKAGE:
                continue
            for alias in sub.names:
                submodule = f"{base}.{alias.name}"
                target = (submodule, None) if _resolve_module(submodule) else (base, alias.name)
                found[alias.asname or alias.name] = target
    return found


@lru_cache(maxsize=None)
def _index(path: Path, mtime_ns: int) -> ModuleIndex:
    del mtime_ns  # part of the cache key only: an edited file is parsed again
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    index = ModuleIndex(name)
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            index.imports.update(_import_targets(stmt, package))
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            index.symbols[stmt.name] = stmt
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            for bound in names:
                index.symbols[bound] = stmt
            value = getattr(stmt, "value", None)
            if len(names) == 1 and isinstance(value, ast.Constant) and isinstance(value.value, str):
                index.constants[names[0]] = value.value
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # the module docstring
        elif isinstance(stmt, (ast.If, ast.Try)) and _only_imports(stmt):
            index.imports.update(_import_targets(stmt, package))  # `if TYPE_CHECKING:` blocks
        else:
            index.residue.append(normalised_dump(stmt))
    return index


def _only_imports(stmt: ast.AST) -> bool:
    return all(
        isinstance(s, (ast.Import, ast.ImportFrom, ast.Pass, ast.If, ast.Try, ast.ExceptHandler))
        or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
        for s in ast.walk(stmt)
        if isinstance(s, ast.stmt)
    )


def module_index(module: str) -> ModuleIndex | None:
    path = _resolve_module(module)
    if path is None:
        return None
    return _index(path, path.stat().st_mtime_ns)


# ------------------------------------------------------------------------------ closure
Symbol = tuple[str, str]  # (module name, top-level name)


def _attribute_chain(node: ast.Attribute) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _references(node: ast.AST, index: ModuleIndex) -> tuple[set[Symbol], set[tuple[str, str]]]:
    """The symbols ``node`` uses and the registered functions it looks up by a constant name."""
    imports = {**index.imports, **_import_targets(node, index.name.rsplit(".", 1)[0])}
    used: set[Symbol] = set()
    dispatched: set[tuple[str, str]] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            if sub.id in index.symbols:
                used.add((index.name, sub.id))
            elif sub.id in imports:
                module, attr = imports[sub.id]
                if attr is not None:
                    used.add((module, attr))
        elif isinstance(sub, ast.Attribute):
            chain = _attribute_chain(sub)
            if chain and chain[0] in imports and imports[chain[0]][1] is None:
                module = imports[chain[0]][0]
                rest = chain[1:]
                # `pkg.sub.func`: walk down packages while the next part is a module
                while len(rest) > 1 and _resolve_module(f"{module}.{rest[0]}"):
                    module, rest = f"{module}.{rest[0]}", rest[1:]
                if rest:
                    used.add((module, rest[0]))
        elif isinstance(sub, ast.Call):
            func = sub.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if called in DISPATCHERS and sub.args:
                arg = sub.args[0]
                value = (
                    arg.value
                    if isinstance(arg, ast.Constant)
                    else index.constants.get(arg.id) if isinstance(arg, ast.Name) else None
                )
                if isinstance(value, str):
                    dispatched.add((DISPATCHERS[called], value))
    return used, dispatched


@lru_cache(maxsize=None)
def _symbol_dump(module: str, name: str, index_id: int) -> str:
    """The normalised dump of one definition, computed once per parse of its module."""
    del index_id  # part of the cache key only: a re-parsed (edited) module is dumped again
    # The index owns its parse, so docstrings are stripped in place (once: a second pass would
    # take a following string statement for a docstring) instead of on a deep copy, the larger
    # part of planning's fixed cost.
    node = module_index(module).symbols[name]
    if not getattr(node, "_attrflow_docstrings_stripped", False):
        _strip_docstrings(node)
        node._attrflow_docstrings_stripped = True
    return ast.dump(node, annotate_fields=False, include_attributes=False)


@lru_cache(maxsize=None)
def _symbol_references(module: str, name: str, index_id: int) -> tuple[frozenset[Symbol], frozenset[tuple[str, str]]]:
    """`_references` of one definition, computed once per parse of its module: planning asks
    for the closures of dozens of methods and metrics that share most of their symbols."""
    del index_id  # part of the cache key only: a re-parsed (edited) module is walked again
    index = module_index(module)
    used, dispatched = _references(index.symbols[name], index)
    return frozenset(used), frozenset(dispatched)


def registered_symbol(family: str, fn: str) -> Symbol:
    """The (module, function name) a registered method or metric is defined as."""
    entry = catalog(family)[fn]
    return module_name(entry.module), entry.function


# Pseudo-module of the symbols that stand for a family variant's constants (see below).
VARIANT_CONSTANTS = "<variant constants>"


def registered_symbols(family: str, fn: str) -> list[Symbol]:
    """What a registered method or metric runs: its function and, for a variant of a family that
    registers one function under several names, the constants the variant binds (KPM's order and
    kept end, insertion's direction), which live in the registration loop rather than in code."""
    entry = catalog(family)[fn]
    symbols = [registered_symbol(family, fn)]
    if entry.constants:
        symbols.append((VARIANT_CONSTANTS, f"{family}.{fn}={json.dumps(entry.constants, sort_keys=True)}"))
    return symbols


def symbol_closure(roots: list[Symbol]) -> dict[Symbol, str]:
    """Every symbol ``roots`` reach, each with the normalised dump of its definition."""
    seen: dict[Symbol, str] = {}
    residues: set[str] = set()
    todo = list(roots)
    while todo:
        module, name = todo.pop()
        if (module, name) in seen or module in NON_COMPUTE_MODULES:
            continue
        if module == VARIANT_CONSTANTS:
            seen[(module, name)] = name
            continue
        index = module_index(module)
        if index is None:
            continue
        if name not in index.symbols:
            if name in index.imports:  # a re-export (a package __init__'s `from .x import f`)
                target_module, attr = index.imports[name]
                todo.append((target_module, attr) if attr else (target_module, "*"))
            elif name == "*":  # a whole module used as a value
                todo.extend((module, n) for n in index.symbols)
            continue
        seen[(module, name)] = _symbol_dump(module, name, id(index))
        if module not in residues:
            residues.add(module)
            for i, dump in enumerate(index.residue):
                seen[(module, f"<module statement {i}>")] = dump
        used, dispatched = _symbol_references(module, name, id(index))
        todo.extend(used)
        for family, fn in dispatched:
            if fn in catalog(family):
                todo.extend(registered_symbols(family, fn))
    return seen


def symbols_fingerprint(roots: list[Symbol]) -> str:
    memo = _memo()
    key = json.dumps(sorted([list(root) for root in roots]))
    if memo is not None and key in memo.fingerprints:
        return memo.fingerprints[key]
    h = hashlib.sha256()
    for (module, name), dump in sorted(symbol_closure(roots).items()):
        h.update(f"{module}:{name}\0{dump}\0".encode())
    fingerprint = h.hexdigest()[:16]
    if memo is not None:
        memo.keep(key, fingerprint)
    return fingerprint


# ------------------------------------------------------------------------------ memo between runs
# Following the closures parses and dumps most of the package: about a second of every plan.
# A fingerprint is a function of the package's files (and of the Python version, whose AST dump
# it hashes), so the fingerprints of one planning run hold for the next exactly as long as every
# file of the package is byte-for-byte the same; the memo is keyed by that content, never by
# mtimes, and a single changed byte anywhere in the package discards all of it.
_MEMO_FOLDER: list[Path] = []  # where `remember_fingerprints_in` keeps it (empty: no memo)


@dataclass
class _FingerprintMemo:
    path: Path
    package: str  # digest of every file of the package, and the Python version
    fingerprints: dict[str, str]

    def keep(self, key: str, fingerprint: str) -> None:
        """Add one fingerprint and write the memo atomically (concurrent planners — cluster job
        steps — may each write; the last complete file wins, a lost entry is recomputed)."""
        import os
        import sys

        self.fingerprints[key] = fingerprint
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"package": self.package, "python": list(sys.version_info[:2]), "fingerprints": self.fingerprints}))
        os.replace(tmp, self.path)


def remember_fingerprints_in(folder: Path | None) -> None:
    """Keep code fingerprints in ``folder`` (the workflow's `.snakemake/attrflow`) between planning
    runs; None stops. Planning without it computes every fingerprint afresh."""
    _MEMO_FOLDER[:] = [Path(folder)] if folder is not None else []
    _memo.cache_clear()


def package_digest() -> str:
    """sha256 of the path and bytes of every source and data file of the package, and the
    Python version (≈ 4 ms)."""
    import sys

    h = hashlib.sha256(repr(sys.version_info[:2]).encode())
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if path.suffix in (".py", ".json") and "__pycache__" not in path.parts and path.is_file():
            h.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


@lru_cache(maxsize=1)
def _memo() -> _FingerprintMemo | None:
    if not _MEMO_FOLDER:
        return None
    path = _MEMO_FOLDER[0] / "code-fingerprints.json"
    package = package_digest()
    try:
        stored = json.loads(path.read_text())
        fingerprints = stored["fingerprints"] if stored.get("package") == package else {}
        if not isinstance(fingerprints, dict):
            fingerprints = {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        fingerprints = {}  # none yet, or unreadable: computed afresh and written anew
    return _FingerprintMemo(path, package, {k: v for k, v in fingerprints.items() if isinstance(v, str)})


def code_fingerprint(path: Path) -> str:
    """Fingerprint of everything a module defines (and what that uses): for code that a job
    runs as a whole, such as model preparation or axiom synthesis."""
    path = Path(path).resolve()
    index = _index(path, path.stat().st_mtime_ns)
    return symbols_fingerprint([(index.name, n) for n in index.symbols])


# ------------------------------------------------------------------------------ files and values
def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical(value: object) -> object:
    """A JSON-like value with every mapping's keys sorted, recursively, and tuples as lists:
    two configs that say the same thing in another order give equal params."""
    if isinstance(value, dict):
        return {str(k): canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def value_fingerprint(value: object) -> str:
    """Stable hash of a JSON-like value (dict keys sorted)."""
    import json

    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
