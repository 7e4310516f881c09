"""The DAG-time view of methods/metrics (read with ast) agrees with the runtime registries."""

from __future__ import annotations

from pathlib import Path

import pytest

from attrflow import methods, metrics
from attrflow.catalog import CatalogError, catalog, scan_module

PKG = Path(methods.__file__).resolve().parents[1]


@pytest.mark.parametrize("family, package", [("methods", methods), ("metrics", metrics)])
def test_catalog_matches_runtime_registry(family, package):
    names = package.load_all()
    registry = methods.METHODS if family == "methods" else metrics.METRICS
    entries = catalog(family)
    assert sorted(entries) == sorted(names)
    for name in names:
        info = registry.get(name)
        assert entries[name].params == info.params, name
        assert Path(entries[name].module).stem == info.module.rsplit(".", 1)[1]


def test_every_registered_param_has_a_default():
    # A config entry may name only `fn`: every parameter therefore needs a default.
    for family in ("methods", "metrics"):
        for fn, entry in catalog(family).items():
            for key, schema in entry.params.items():
                assert "default" in schema, f"{family}.{fn}.{key} has no default"


def test_non_literal_registration_is_refused(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("STEPS = dict(steps=3)\n@register_method('x', params=STEPS)\ndef x(model, x, target):\n    pass\n")
    with pytest.raises(CatalogError, match="literal"):
        scan_module(module)


def test_registrations_may_share_a_module_level_literal(tmp_path):
    module = tmp_path / "shared.py"
    module.write_text(
        "PARAMS = {'steps': {'type': 'integer', 'default': 3}}\n"
        "@register_metric('a', kind='map', direction='higher', params=PARAMS)\n"
        "def a(inputs, *, steps=3):\n    pass\n"
        "@register_metric('b', kind='map', direction='lower', params=PARAMS)\n"
        "def b(inputs, *, steps=3):\n    pass\n"
    )
    entries = scan_module(module)
    assert [e.fn for e in entries] == ["a", "b"]
    assert entries[0].params == entries[1].params == {"steps": {"type": "integer", "default": 3}}
