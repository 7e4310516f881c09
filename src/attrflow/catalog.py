"""What methods and metrics exist, and their parameters, without importing torch.

The Snakefile plans the DAG on every invocation (a no-op `snakemake -n` must stay fast), so it
cannot import torch just to learn which functions are registered and which parameters they take.
Each method or metric declares its parameters once, in its typed signature (`attrflow.params`);
the runtime registry (`attrflow.methods`, `attrflow.metrics`) derives their JSON schema when a
module is imported. This module writes what the registry holds to ``schemas/catalog.json``
(``python -m attrflow.catalog --write``) and reads it back while planning:

* a unit test imports every module and checks the file equals the registry;
* `get_method` / `get_metric` check the entry they return against the file, so a stale file
  fails the job that would run with it, naming the fix;
* planning checks that the file lists exactly the modules in ``methods/`` and ``metrics/``, so a
  new module that was never written into the catalogue is named, not silently unknown.

Reading a JSON file is what planning pays (measured in benchmarks/RESULTS.md); reading the
signatures with `ast` instead could not follow families registered in a loop over their variants.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
CATALOG_PATH = PACKAGE_DIR / "schemas" / "catalog.json"
FAMILIES = ("methods", "metrics")
WRITE_COMMAND = "python -m attrflow.catalog --write"


@dataclass(frozen=True)
class CatalogEntry:
    """One registered method or metric, as the catalogue file records it."""

    fn: str
    family: str  # "methods" or "metrics"
    module: Path
    function: str  # the Python name of the (shared) function in `module`
    params: dict = field(default_factory=dict)  # JSON-schema property per keyword parameter
    options: dict = field(default_factory=dict)  # the registration's other settings
    constants: dict = field(default_factory=dict)  # what a family variant fixes

    def record(self) -> dict[str, Any]:
        return {
            "module": self.module.relative_to(PACKAGE_DIR).as_posix(),
            "function": self.function,
            "params": self.params,
            "options": self.options,
            "constants": self.constants,
        }


class CatalogError(RuntimeError):
    pass


def family_modules(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Every module file of the method and metric packages, relative to the package."""
    return sorted(
        p.relative_to(package_dir).as_posix()
        for family in FAMILIES
        for p in (package_dir / family).glob("*.py")
        if p.name != "__init__.py"
    )


@lru_cache(maxsize=None)
def _document(path: Path = CATALOG_PATH) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"{path} does not exist: run `{WRITE_COMMAND}`") from None
    listed = set(document.get("modules", []))
    present = set(family_modules(path.parent.parent))
    if listed != present:
        new = sorted(present - listed)
        gone = sorted(listed - present)
        parts = [f"new module(s) {', '.join(new)}" if new else "", f"removed {', '.join(gone)}" if gone else ""]
        what = "; ".join(part for part in parts if part)
        raise CatalogError(f"{path.name} is out of date ({what}): run `{WRITE_COMMAND}`")
    return document


@lru_cache(maxsize=None)
def catalog(family: str, path: Path = CATALOG_PATH) -> dict[str, CatalogEntry]:
    """All registered functions of one family ("methods" or "metrics"), by registered name."""
    package_dir = path.parent.parent
    return {
        fn: CatalogEntry(
            fn,
            family,
            package_dir / record["module"],
            record["function"],
            record["params"],
            record["options"],
            record.get("constants", {}),
        )
        for fn, record in _document(path)[family].items()
    }


# ------------------------------------------------------------------------------ from the registry
def entry_of(family: str, info: Any) -> CatalogEntry:
    """The catalogue entry of a runtime registration (`MethodInfo` / `MetricInfo`)."""
    module = PACKAGE_DIR.joinpath(*info.module.split(".")[1:]).with_suffix(".py")
    return CatalogEntry(
        info.name, family, module, info.function, info.params, info.options(), info.constants
    )


def check_current(family: str, info: Any) -> None:
    """Refuse to run a registration the catalogue (what planning validated against) disagrees with."""
    recorded = catalog(family).get(info.name)
    derived = entry_of(family, info)

    def planning_view(entry: CatalogEntry) -> dict[str, Any]:
        record = entry.record()
        record["params"] = {
            k: {key: v for key, v in s.items() if key != "description"} for k, s in entry.params.items()
        }
        return record

    if recorded is None or planning_view(recorded) != planning_view(derived):
        raise CatalogError(
            f"{CATALOG_PATH.name} is out of date for {family[:-1]} {info.name!r} (its registration "
            f"or signature changed): run `{WRITE_COMMAND}`"
        )


def derive() -> dict[str, Any]:
    """Import every method and metric module and describe what the registries hold."""
    import importlib

    from attrflow.methods.base import METHODS
    from attrflow.metrics.base import METRICS

    modules = family_modules()
    for rel in modules:
        importlib.import_module("attrflow." + rel.removesuffix(".py").replace("/", "."))
    document: dict[str, Any] = {
        "_comment": f"Generated by `{WRITE_COMMAND}` from the methods' and metrics' signatures; do not edit.",
        "modules": modules,
    }
    for family, registry in (("methods", METHODS), ("metrics", METRICS)):
        document[family] = {name: entry_of(family, info).record() for name, info in registry.items()}
    return document


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m attrflow.catalog",
        description="Derive schemas/catalog.json from the registered methods and metrics.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="write the file")
    action.add_argument("--check", action="store_true", help="exit 1 when the file is out of date")
    args = parser.parse_args(argv)
    text = render(derive())
    if args.write:
        CATALOG_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {CATALOG_PATH}")
        return 0
    current = CATALOG_PATH.read_text(encoding="utf-8") if CATALOG_PATH.exists() else ""
    if current != text:
        print(f"{CATALOG_PATH} is out of date: run `{WRITE_COMMAND}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
