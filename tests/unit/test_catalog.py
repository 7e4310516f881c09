"""The planning-time catalogue (schemas/catalog.json) is derived from the runtime registries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from attrflow import catalog as catalog_module
from attrflow import methods, metrics
from attrflow.catalog import CATALOG_PATH, CatalogError, catalog, check_current, derive, entry_of, render


def test_the_catalogue_file_is_what_the_registry_derives():
    # Fails after a signature or registration changed without `python -m attrflow.catalog --write`.
    assert CATALOG_PATH.read_text(encoding="utf-8") == render(derive()), (
        "schemas/catalog.json is out of date: run `python -m attrflow.catalog --write`"
    )


@pytest.mark.parametrize("family, package", [("methods", methods), ("metrics", metrics)])
def test_catalog_matches_runtime_registry(family, package):
    names = package.load_all()
    registry = methods.METHODS if family == "methods" else metrics.METRICS
    entries = catalog(family)
    assert sorted(entries) == sorted(names)
    for name in names:
        info = registry.get(name)
        assert entries[name].record() == entry_of(family, info).record(), name
        assert Path(entries[name].module).stem == info.module.rsplit(".", 1)[1]


def test_every_registered_param_has_a_default():
    # A config entry may name only `fn`: every parameter therefore needs a default.
    for family in ("methods", "metrics"):
        for fn, entry in catalog(family).items():
            for key, schema in entry.params.items():
                assert "default" in schema, f"{family}.{fn}.{key} has no default"


def test_every_registered_param_is_described():
    # the description is the parameter's documentation (config reference, Python API): Doc("...")
    for family in ("methods", "metrics"):
        for fn, entry in catalog(family).items():
            for key, schema in entry.params.items():
                assert schema.get("description"), f"{family}.{fn}.{key} has no Doc(...)"


def test_family_variants_share_one_function_and_record_their_constants():
    entries = catalog("metrics")
    kpm_family = {entries[name].function for name in ("kpm", "knm", "rpm", "rnm", "kam", "ram")}
    assert kpm_family == {"keep_remove_curve"}
    assert entries["kpm"].constants == {"metric": "kpm", "accuracy_against": "target"}
    assert "accuracy_against" not in entries["kpm"].params and "accuracy_against" in entries["kam"].params
    assert entries["deletion"].function == entries["insertion"].function == "removal_curve"
    assert entries["deletion"].params["fill"]["default"] == "black"
    assert entries["insertion"].params["fill"]["default"] == "blur"


def test_a_stale_entry_is_refused_at_run_time():
    info = methods.get_method("integrated_gradients")
    stale = {**info.params, "steps": {**info.params["steps"], "default": 31}}
    changed = type(info)(**{**info.__dict__, "params": stale})
    with pytest.raises(CatalogError, match=r"out of date for method 'integrated_gradients'.*--write"):
        check_current("methods", changed)


def _catalogue_copy(tmp_path: Path, modules: list[str]) -> Path:
    package = tmp_path / "attrflow"
    (package / "schemas").mkdir(parents=True)
    for family in ("methods", "metrics"):
        (package / family).mkdir()
    for rel in modules:
        (package / rel).write_text("")
    shutil.copy(CATALOG_PATH, package / "schemas" / "catalog.json")
    return package / "schemas" / "catalog.json"


def test_a_module_missing_from_the_catalogue_is_named(tmp_path):
    listed = json.loads(CATALOG_PATH.read_text())["modules"]
    path = _catalogue_copy(tmp_path, [*listed, "methods/new_method.py"])
    with pytest.raises(CatalogError, match=r"new module\(s\) methods/new_method.py.*--write"):
        catalog_module.catalog("methods", path)
