"""One declaration per parameter: what each signature declares is what the config enforces.

Parametrised over every registered method and metric (the runtime registry, not a hand-kept
list): for each, the schema derived from the signature is the catalogue's and the registry's;
the entry ``{fn: name}`` validates and receives exactly the signature's defaults; every declared
type, bound, choice and list constraint rejects a violating value (and accepts the boundary it
allows) with a message naming the key path, both in the config and when the function is called
from Python; unknown keys are refused.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Annotated, Any, Literal

import pytest

from attrflow import methods, metrics
from attrflow.catalog import catalog, entry_of
from attrflow.config import ConfigError, check_entry
from attrflow.methods.base import RUNTIME_KWARGS, register_method
from attrflow.metrics.base import peer_parameters, register_metric
from attrflow.params import (
    Doc,
    Ge,
    Gt,
    Le,
    Lt,
    MethodEntry,
    MinLen,
    Odd,
    ParameterDeclarationError,
    Unique,
    check_params,
    json_value,
    parameter_schemas,
)

REGISTERED = [("methods", name) for name in methods.load_all()] + [("metrics", name) for name in metrics.load_all()]


def _info(family: str, name: str):
    return methods.get_method(name) if family == "methods" else metrics.get_metric(name)


def _violations(schema: dict) -> list[tuple[str, Any]]:
    """(what, value) pairs that the declaration forbids."""
    types = schema.get("type")
    types = types if isinstance(types, list) else [types] if types else []
    found: list[tuple[str, Any]] = []
    wrong_type = {
        "integer": "not a number",
        "number": "not a number",
        "string": 12345,
        "boolean": "yes",
        "array": 7,
        "object": 7,
    }
    if types:
        found.append(("type", wrong_type[next(t for t in types if t != "null")]))
        if "null" not in types:
            found.append(("null", None))
    if "integer" in types:
        found.append(("fraction for an integer", 1.5))
    if "enum" in schema:
        found.append(("enum", "no-such-choice"))
    if "minimum" in schema:
        found.append(("minimum", schema["minimum"] - 1))
    if "exclusiveMinimum" in schema:
        found.append(("exclusiveMinimum", schema["exclusiveMinimum"]))
    if "maximum" in schema:
        found.append(("maximum", schema["maximum"] + 1))
    if "exclusiveMaximum" in schema:
        found.append(("exclusiveMaximum", schema["exclusiveMaximum"]))
    if schema.get("not") == {"multipleOf": 2}:
        found.append(("odd", schema["default"] + 1 if schema["default"] % 2 else schema["default"]))
    if "minLength" in schema:
        found.append(("minLength", "x" * (schema["minLength"] - 1)))
    default = schema.get("default")
    if "minItems" in schema:
        found.append(("minItems", list(default[: schema["minItems"] - 1])))
    if schema.get("uniqueItems"):
        found.append(("uniqueItems", [default[0], default[0], *default[1:]]))
    if "items" in schema:
        found.extend((f"items {what}", [*default, value]) for what, value in _violations(schema["items"]))
    return found


def _boundaries(schema: dict) -> list[Any]:
    """Values at an inclusive bound, which the declaration allows."""
    return [schema[k] for k in ("minimum", "maximum") if k in schema]


@pytest.mark.parametrize("family, name", REGISTERED, ids=[f"{f}.{n}" for f, n in REGISTERED])
def test_signature_schema_catalogue_and_config_agree(family, name):
    info = _info(family, name)
    positional = 3 if family == "methods" else 1
    function = getattr(importlib.import_module(info.module), info.function)
    variant_defaults = {k: v for k, v in getattr(info.fn, "keywords", {}).items() if k not in info.constants}
    derived = parameter_schemas(
        function, positional=positional, runtime=RUNTIME_KWARGS, bound=info.constants,
        defaults=variant_defaults, name=name,
    )  # fmt: skip
    assert derived == info.params
    assert catalog(family)[name].record() == entry_of(family, info).record()

    # The default entry validates and is filled with exactly the signature's defaults.
    checked = check_entry(family, "entry", {"fn": name})
    signature = inspect.signature(info.fn).parameters  # a variant's defaults applied
    for key in info.params:
        assert checked[key] == json_value(signature[key].default), key
    assert set(checked) == {"fn", *info.params}

    # Unknown keys are refused, naming the entry and the key.
    with pytest.raises(ConfigError, match="no_such_param") as err:
        check_entry(family, "entry", {"fn": name, "no_such_param": 1})
    assert err.value.key_path == f"{family}.entry"
    with pytest.raises(ConfigError, match="no_such_param"):
        check_params(info.params, {"no_such_param": 1}, name)


CASES = [
    (family, name, key, what, value)
    for family, name in REGISTERED
    for key, schema in _info(family, name).params.items()
    for what, value in _violations(schema)
]


@pytest.mark.parametrize(
    "family, name, key, what, value", CASES, ids=[f"{f}.{n}.{k}:{w}" for f, n, k, w, _ in CASES]
)
def test_every_declared_constraint_is_enforced_with_the_key_path(family, name, key, what, value):
    info = _info(family, name)
    with pytest.raises(ConfigError) as in_config:
        check_entry(family, "entry", {"fn": name, key: value})
    assert in_config.value.key_path.startswith(f"{family}.entry.{key}"), (what, in_config.value)
    with pytest.raises(ConfigError) as in_python:
        check_params(info.params, {key: value}, name)
    assert in_python.value.key_path.startswith(f"{name}.{key}")
    # the same message, only the key path's prefix differs
    assert str(in_config.value).split("': ", 1)[1] == str(in_python.value).split("': ", 1)[1]


@pytest.mark.parametrize("family, name", REGISTERED, ids=[f"{f}.{n}" for f, n in REGISTERED])
def test_inclusive_bounds_are_allowed(family, name):
    for key, schema in _info(family, name).params.items():
        for value in _boundaries(schema):
            if schema.get("not") == {"multipleOf": 2} and value % 2 == 0:
                continue
            check_entry(family, "entry", {"fn": name, key: value})


# ------------------------------------------------------------------------------ the vocabulary
def _fn(
    model,
    x,
    target,
    *,
    steps: Annotated[int, Ge(1), Doc("how many")] = 32,
    rate: Annotated[float, Gt(0), Lt(1)] = 0.5,
    share: Annotated[float, Ge(0), Le(1)] = 1.0,
    kernel: Annotated[int, Ge(1), Odd()] = 3,
    mode: Literal["a", "b"] = "a",
    limit: Annotated[int | None, Ge(1)] = None,
    grid: Annotated[list[Annotated[int, Ge(1)]], MinLen(1), Unique()] = (1, 2),
    layer: Annotated[str, MinLen(1)] = "default",
    epsilon: float = 8 / 255,
    generator: object = None,
    metric: str,
):
    return None


def test_a_signature_becomes_a_json_schema():
    schemas = parameter_schemas(_fn, positional=3, runtime=RUNTIME_KWARGS, bound={"metric": "m"})
    assert schemas == {
        "steps": {"type": "integer", "minimum": 1, "default": 32, "description": "how many"},
        "rate": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "default": 0.5},
        "share": {"type": "number", "minimum": 0, "maximum": 1, "default": 1.0},
        "kernel": {"type": "integer", "minimum": 1, "not": {"multipleOf": 2}, "default": 3},
        "mode": {"enum": ["a", "b"], "default": "a"},
        "limit": {"type": ["integer", "null"], "minimum": 1, "default": None},
        "grid": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1},
            "minItems": 1,
            "uniqueItems": True,
            "default": [1, 2],
        },
        "layer": {"type": "string", "minLength": 1, "default": "default"},
        "epsilon": {"type": "number", "default": 8 / 255},
    }


def _compares(
    inputs,
    *,
    reference: Annotated[str, MethodEntry(), Doc("the entry compared with")] = "exact",
    label: str = "exact",
):
    return None


def test_a_parameter_naming_a_method_entry_keeps_its_format():
    schemas = parameter_schemas(_compares, positional=1)
    assert schemas["reference"] == {
        "type": "string",
        "format": "method-entry",
        "default": "exact",
        "description": "the entry compared with",
    }
    assert "format" not in schemas["label"]
    # what the config check and the planner look for
    assert peer_parameters(schemas) == ["reference"]
    # the format is a marker, not a constraint Python checks: any string (the config check looks
    # the name up among the entries); a non-string is still refused by its type
    check_params(schemas, {"reference": "anything"}, "m")
    with pytest.raises(ConfigError, match=r"'m\.reference'"):
        check_params(schemas, {"reference": 3}, "m")


def _entry_on_a_number(inputs, *, reference: Annotated[int, MethodEntry()] = 1):
    return None


def _optional_entry(inputs, *, reference: Annotated[str | None, MethodEntry()] = None):
    return None


@pytest.mark.parametrize("fn", [_entry_on_a_number, _optional_entry])
def test_a_method_entry_marks_only_a_string(fn):
    # an entry's name: no number, and no None (the config check needs an entry to look up)
    with pytest.raises(ParameterDeclarationError, match=r"m\.reference: MethodEntry"):
        parameter_schemas(fn, positional=1, name="m")


def test_a_variant_may_change_a_default_and_bind_a_parameter():
    schemas = parameter_schemas(
        _fn, positional=3, runtime=RUNTIME_KWARGS, bound={"metric": "m", "mode": "b"}, defaults={"steps": 8}
    )
    assert "mode" not in schemas and schemas["steps"]["default"] == 8


def _no_default(model, x, target, *, steps: int):
    return None


def _no_annotation(model, x, target, *, steps=3):
    return None


def _unknown_marker(model, x, target, *, steps: Annotated[int, "at least one"] = 3):
    return None


@pytest.mark.parametrize(
    "fn, message",
    [
        (_no_default, "no default"),
        (_no_annotation, "no type annotation"),
        (_unknown_marker, "unknown annotation"),
    ],
)
def test_an_incomplete_declaration_is_refused(fn, message):
    with pytest.raises(ParameterDeclarationError, match=message):
        parameter_schemas(fn, positional=3, name="x")


def test_an_old_style_registration_says_how_to_convert():
    with pytest.raises(TypeError, match=r"old style.*signature.*Annotated.*attrflow.catalog --write"):
        register_method("old_method", params={"steps": {"type": "integer", "default": 3}})
    with pytest.raises(TypeError, match="old style"):
        register_metric("old_metric", kind="map", direction="higher", params={})
