"""The contract every attribution method follows.

A method is a function ``fn(model, x, target, **params) -> Attribution`` over a batch on the
model's device:

* ``model`` is a `attrflow.models.WrappedModel`: pixel-space input in [0, 1], logits out;
* ``x`` is (n, C, H, W) float32; ``target`` is (n,) int64, the class whose logit is explained;
* ``params`` are the config entry's keyword arguments. Two more keywords are injected by the
  runner when the function's signature names them, and are never config keys:
  ``generator`` (a seeded `torch.Generator` on the model's device) and ``max_batch`` (how many
  model inputs one forward/backward pass may hold; steps, noise samples and references are
  chunked to it). Methods registered with ``references="train_pool"`` or ``"lpi"`` also get
  ``references`` ((K, C, H, W) images on the model's device, drawn from the dataset's train split,
  or LPI's cluster representatives) and ``reference_weights`` ((K,) summing to 1). Methods
  registered with ``references="feature_stats"`` (IBA, InputIBA) get ``references`` as a mapping
  from layer name (and module path) to that layer's cached `LayerStatistics` (mean, std, nonzero).

A method registered with ``differentiable=True`` promises that inside
`attrflow.methods.differentiable_maps()` its maps carry a graph to x whose gradient is the exact
derivative of the map (double back-propagation; attribution attacks need it). Outside that
context it behaves, and computes, exactly as otherwise. Inside it, `call_method` refuses every
other method with `MapsNotDifferentiable`, so a caller cannot mistake a detached map for a
differentiable one.

It registers itself with `register_method`, whose arguments must be literals: the workflow reads
them from the source with `attrflow.catalog` while planning, without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from attrflow.methods._batching import maps_differentiable
from attrflow.registry import Registry, signature_params

RUNTIME_KWARGS = ("generator", "max_batch", "references", "reference_weights")
# Reference sets a method may ask for with `register_method(..., references=KIND)`; the workflow
# builds each once per (dataset, model) with `attrflow.methods.references.build_references`.
REFERENCE_KINDS = ("train_pool", "lpi", "feature_stats")
DEFAULT_MAX_BATCH = 256


@dataclass
class Attribution:
    """Maps for a batch and what the method wants stored beside them.

    ``maps`` is (n, C, H, W) for methods that attribute per input element, or (n, H, W) for
    channel-free methods (CAM, random). ``diagnostics`` holds per-sample tensors whose first
    dimension is n (e.g. ``baselines`` (n, C, H, W), ``path_logits`` (n, steps + 1)).
    """

    maps: torch.Tensor
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)


class MethodNotApplicable(Exception):
    """The method is undefined for this model (e.g. X-Gradient on a network with biases).

    The runner records the reason in the store instead of failing the job, and every score of
    that (model, method) is reported as skipped with this reason.
    """


class MapsNotDifferentiable(Exception):
    """Maps with a graph to x were asked for (`differentiable_maps`) from a method that cannot
    give them (perturbation, optimisation or modified-backprop methods)."""


@dataclass(frozen=True)
class MethodInfo:
    name: str
    fn: Callable[..., Attribution]
    params: dict[str, dict]
    completeness: bool  # claims sum(maps) == F(x) - F(baseline), baseline stored as diagnostic
    channel_free: bool  # returns (n, H, W) maps
    module: str
    references: str | None = None  # which reference set the method needs, if any
    differentiable: bool = False  # maps carry a graph to x inside `differentiable_maps`


METHODS: Registry[MethodInfo] = Registry("attribution method")


def register_method(
    name: str,
    *,
    params: dict[str, dict] | None = None,
    completeness: bool = False,
    channel_free: bool = False,
    references: str | None = None,
    differentiable: bool = False,
) -> Callable[[Callable[..., Attribution]], Callable[..., Attribution]]:
    """Register ``fn`` under ``name``.

    ``differentiable``: the method honours `differentiable_maps` (module doc).

    ``params`` maps each keyword parameter to a JSON-schema fragment (type, bounds, enum,
    default). It must name exactly the function's keyword parameters (less the runtime ones),
    with the same defaults; registration fails otherwise, so schema and code cannot drift.
    """
    if references is not None and references not in REFERENCE_KINDS:
        raise ValueError(f"{name}: references must be one of {REFERENCE_KINDS}, not {references!r}")
    declared = dict(params or {})

    def decorate(fn: Callable[..., Attribution]) -> Callable[..., Attribution]:
        in_signature = {
            k: v for k, v in signature_params(fn, positional=3).items() if k not in RUNTIME_KWARGS
        }
        check_declared(name, declared, in_signature)
        info = MethodInfo(
            name, fn, declared, completeness, channel_free, fn.__module__, references,
            differentiable,
        )  # fmt: skip
        METHODS.add(name, info)
        return fn

    return decorate


def check_declared(name: str, declared: dict[str, dict], in_signature: dict[str, object]) -> None:
    if set(declared) != set(in_signature):
        raise TypeError(
            f"{name}: declared params {sorted(declared)} differ from the signature's "
            f"{sorted(in_signature)}"
        )
    for key, schema in declared.items():
        if "default" in schema and schema["default"] != in_signature[key]:
            raise TypeError(
                f"{name}: default of {key!r} is {schema['default']!r} in params but "
                f"{in_signature[key]!r} in the signature"
            )


def reduce_channels(maps: torch.Tensor, how: str = "sum") -> torch.Tensor:
    """(n, C, H, W) → (n, H, W). The seeds never say how; the reduction is stored with the maps."""
    if maps.dim() == 3:
        return maps
    if how == "sum":
        return maps.sum(dim=1)
    if how == "abs_sum":
        return maps.abs().sum(dim=1)
    if how == "mean":
        return maps.mean(dim=1)
    raise ValueError(f"unknown channel reduction {how!r}; use sum, abs_sum or mean")


def call_method(
    info: MethodInfo,
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    params: dict[str, Any],
    *,
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    references: torch.Tensor | Mapping[str, Any] | None = None,
    reference_weights: torch.Tensor | None = None,
) -> Attribution:
    """Call a registered method with config params plus the runtime keywords it accepts."""
    unknown = set(params) - set(info.params)
    if unknown:
        raise TypeError(f"{info.name}: unknown parameter(s) {sorted(unknown)}")
    if maps_differentiable() and not info.differentiable:
        raise MapsNotDifferentiable(
            f"{info.name} cannot return maps with a graph to its input (it is not registered "
            "differentiable=True)"
        )
    accepted = signature_params(info.fn, positional=3)
    runtime: dict[str, Any] = {}
    if "generator" in accepted:
        runtime["generator"] = generator
    if "max_batch" in accepted:
        runtime["max_batch"] = max_batch
    if info.references is not None:
        if references is None:
            raise ValueError(f"{info.name} needs a {info.references!r} reference set and got none")
        runtime["references"] = references
        if "reference_weights" in accepted:
            runtime["reference_weights"] = reference_weights
    result = info.fn(model, x, target, **params, **runtime)
    if not isinstance(result, Attribution):
        raise TypeError(f"{info.name} returned {type(result).__name__}, not Attribution")
    if result.maps.shape[0] != x.shape[0]:
        raise ValueError(f"{info.name} returned {result.maps.shape[0]} maps for {x.shape[0]} inputs")
    return result
