"""One declaration per parameter: a method's or metric's typed signature.

A registered function declares each config parameter once, in its signature::

    def integrated_gradients(
        model, x, target, *,
        steps: Annotated[int, Ge(1), Doc("quadrature steps B")] = 32,
        rule: Literal["left", "right", "trapezoid", "gausslegendre"] = "right",
        epsilon: float = 8 / 255,
        baseline_file: str | None = None,
    ) -> Attribution: ...

`parameter_schemas` turns such a signature into the JSON-schema fragment per parameter that the
config validator enforces (type, bounds, choices, default, description), and `check_params`
validates keyword arguments given in Python against the same fragments with the same messages.
The vocabulary below (`Ge`, `Gt`, `Le`, `Lt`, `MinLen`, `Unique`, `Odd`, `MethodEntry`, `Doc`) is
the only metadata a parameter needs; it is tiny on purpose, so what a signature can say is exactly what
the JSON schema can check. This module imports neither torch nor jsonschema at import time: the
catalogue writer and the planner both use it.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

__all__ = [
    "Annotated",
    "Doc",
    "Ge",
    "Gt",
    "Le",
    "Literal",
    "Lt",
    "MethodEntry",
    "MinLen",
    "Odd",
    "ParameterDeclarationError",
    "Unique",
    "check_params",
    "parameter_schemas",
]


# ------------------------------------------------------------------------------ vocabulary
@dataclass(frozen=True)
class Ge:
    """value ≥ bound (JSON schema ``minimum``)."""

    bound: float


@dataclass(frozen=True)
class Gt:
    """value > bound (``exclusiveMinimum``)."""

    bound: float


@dataclass(frozen=True)
class Le:
    """value ≤ bound (``maximum``)."""

    bound: float


@dataclass(frozen=True)
class Lt:
    """value < bound (``exclusiveMaximum``)."""

    bound: float


@dataclass(frozen=True)
class MinLen:
    """at least this many items (a list) or characters (a string)."""

    length: int


@dataclass(frozen=True)
class Unique:
    """a list without repeated items."""


@dataclass(frozen=True)
class Odd:
    """an odd integer (a blur kernel's tap count, so it has a centre)."""


@dataclass(frozen=True)
class MethodEntry:
    """a string naming another method entry of the config (``format: method-entry``), whose
    stored maps the metric compares with; the config check makes sure the entry exists, and the
    workflow makes its attributions an input of the scoring job (`attrflow.metrics.base.PeerMaps`)."""


@dataclass(frozen=True)
class Doc:
    """What the parameter means, in a sentence (the schema's ``description``)."""

    text: str


# The JSON-schema ``format`` of a parameter that names a method entry (`MethodEntry`); the config
# check, `attrflow.metrics.base.peer_parameters` and the planner look for it.
METHOD_ENTRY_FORMAT = "method-entry"


class ParameterDeclarationError(TypeError):
    """A registered function's signature cannot be turned into a parameter schema."""


# ------------------------------------------------------------------------------ signature → schema
_SCALARS: dict[type, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}


def json_value(value: Any) -> Any:
    """Tuples become lists (JSON has no tuples); anything JSON cannot hold is refused."""
    if isinstance(value, tuple | list):
        return [json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{value!r} ({type(value).__name__}) is not a JSON value")


def _type_schema(annotation: Any, where: str) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *extras = typing.get_args(annotation)
        schema = _type_schema(base, where)
        for extra in extras:
            _apply(schema, extra, where)
        return schema
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) != 1 or len(members) == len(typing.get_args(annotation)):
            raise ParameterDeclarationError(
                f"{where}: a union may only make one type optional (X | None), not {annotation!r}"
            )
        schema = _type_schema(members[0], where)
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
        elif "type" in schema:
            schema["type"] = [schema["type"], "null"]
        return schema
    if origin is Literal:
        return {"enum": [json_value(v) for v in typing.get_args(annotation)]}
    if annotation in _SCALARS:
        return {"type": _SCALARS[annotation]}
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        schema: dict[str, Any] = {"type": "array"}
        if len(args) == 1:
            schema["items"] = _type_schema(args[0], where)
        elif args:
            raise ParameterDeclarationError(f"{where}: a list parameter has one item type, not {annotation!r}")
        return schema
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        return {"type": "object"}
    raise ParameterDeclarationError(
        f"{where}: cannot declare a config parameter of type {annotation!r}; use bool, int, float, "
        "str, Literal[...], list[...], dict, or one of them | None"
    )


def _apply(schema: dict[str, Any], extra: Any, where: str) -> None:
    if isinstance(extra, Ge):
        schema["minimum"] = extra.bound
    elif isinstance(extra, Gt):
        schema["exclusiveMinimum"] = extra.bound
    elif isinstance(extra, Le):
        schema["maximum"] = extra.bound
    elif isinstance(extra, Lt):
        schema["exclusiveMaximum"] = extra.bound
    elif isinstance(extra, MinLen):
        schema["minLength" if schema.get("type") == "string" else "minItems"] = extra.length
    elif isinstance(extra, Unique):
        schema["uniqueItems"] = True
    elif isinstance(extra, Odd):
        schema["not"] = {"multipleOf": 2}
    elif isinstance(extra, MethodEntry):
        if schema.get("type") != "string":
            raise ParameterDeclarationError(
                f"{where}: MethodEntry() marks a str parameter (an entry's name, not None)"
            )
        schema["format"] = METHOD_ENTRY_FORMAT
    elif isinstance(extra, Doc):
        schema["description"] = extra.text
    else:
        raise ParameterDeclarationError(
            f"{where}: unknown annotation {extra!r}; use Ge, Gt, Le, Lt, MinLen, Unique, Odd, "
            "MethodEntry or Doc from attrflow.params"
        )


def parameter_schemas(
    fn: Callable[..., Any],
    *,
    positional: int,
    runtime: Sequence[str] = (),
    bound: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The JSON-schema fragment of every config parameter of ``fn``, in signature order.

    The first ``positional`` arguments (model, x, target / inputs), the ``runtime`` keywords the
    runner injects and the ``bound`` constants a family variant fixes are not config parameters.
    ``defaults`` replaces signature defaults for one variant of a family. Every config parameter
    needs a type annotation and a default: a config entry may name only ``fn``.
    """
    name = name or getattr(fn, "__name__", repr(fn))
    hints = typing.get_type_hints(fn, include_extras=True)
    bound = dict(bound or {})
    defaults = dict(defaults or {})
    params = list(inspect.signature(fn).parameters.values())[positional:]
    names = {p.name for p in params}
    for key in [*bound, *defaults]:
        if key not in names:
            raise ParameterDeclarationError(f"{name}: {key!r} is not a parameter of {fn.__name__}")
    schemas: dict[str, dict[str, Any]] = {}
    for p in params:
        if p.name in runtime or p.name in bound or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        where = f"{name}.{p.name}"
        if p.name not in hints:
            raise ParameterDeclarationError(f"{where} has no type annotation")
        default = defaults.get(p.name, p.default)
        if default is inspect.Parameter.empty:
            raise ParameterDeclarationError(f"{where} has no default (a config entry may name only fn)")
        schema = _type_schema(hints[p.name], where)
        description = schema.pop("description", None)
        try:
            schema["default"] = json_value(default)
        except TypeError as err:
            raise ParameterDeclarationError(f"{where}: default {err}") from None
        if description is not None:
            schema["description"] = description
        schemas[p.name] = schema
    return schemas


# ------------------------------------------------------------------------------ validation
def object_schema(params: Mapping[str, dict], generic: Sequence[str] = ()) -> dict[str, Any]:
    """The schema of a config entry: these parameters (plus generic keys), nothing else."""
    props: dict[str, Any] = {key: True for key in generic}
    props.update(params)
    return {"type": "object", "properties": props, "additionalProperties": False}


@functools.lru_cache(maxsize=None)
def _validator_class(fill_defaults: bool) -> Any:
    import copy
    import math

    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine_many(
        {
            "number": lambda checker, value: isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value),
            # 2.0 is no step count: jsonschema would accept a float with an integral value
            "integer": lambda checker, value: isinstance(value, int) and not isinstance(value, bool),
        }
    )
    validators: dict[str, Any] = {}
    if fill_defaults:

        def set_defaults(validator, properties, instance, schema):
            if isinstance(instance, dict):
                for key, sub in properties.items():
                    if isinstance(sub, dict) and "default" in sub and key not in instance:
                        instance[key] = copy.deepcopy(sub["default"])
            yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

        validators["properties"] = set_defaults
    return jsonschema.validators.extend(base, validators, type_checker=checker)


def validator(schema: dict, fill_defaults: bool = False) -> Any:
    """A Draft 2020-12 validator whose numbers are finite (no NaN or ±inf: YAML's ``.inf`` is no
    sensible step size or σ) and whose integers are ints (not 2.0), filling ``default:`` values
    into the instance when asked."""
    return _validator_class(fill_defaults)(schema)


# Validators of registered parameter schemas, by the schema object's identity (kept alive here).
_PARAMS_VALIDATORS: dict[int, tuple[Mapping[str, dict], Any]] = {}


def _params_validator(params: Mapping[str, dict]) -> Any:
    cached = _PARAMS_VALIDATORS.get(id(params))
    if cached is None or cached[0] is not params:
        cached = (params, validator(object_schema(params)))
        _PARAMS_VALIDATORS[id(params)] = cached
    return cached[1]


def check_params(params: Mapping[str, dict], values: Mapping[str, Any], where: str) -> None:
    """Validate keyword arguments given in Python as the config validator validates an entry.

    Raises `attrflow.config.ConfigError` naming ``where.key`` (e.g. ``integrated_gradients.steps``)
    with the config's message.
    """
    import jsonschema

    from attrflow.config import ConfigError

    plain = {k: _plain(v) for k, v in values.items()}
    errors = list(_params_validator(params).iter_errors(plain))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        raise ConfigError(".".join(str(p) for p in [where, *err.absolute_path]), err.message)


def _plain(value: Any) -> Any:
    """Python values as the config would hold them: tuples as lists, numpy scalars as numbers."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    return value
