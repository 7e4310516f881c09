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

It registers itself with `register_method`; its config parameters are declared once, in its typed
signature (`attrflow.params`). The workflow plans from `attrflow/schemas/catalog.json`, which
`python -m attrflow.catalog --write` derives from this registry, so planning never imports torch.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from attrflow.methods._batching import maps_differentiable
from attrflow.params import check_params, parameter_schemas
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
    fn: Callable[..., Attribution]  # with a family variant's constants bound
    params: dict[str, dict]  # JSON-schema fragment per config parameter, derived from the signature
    completeness: bool  # claims sum(maps) == F(x) - F(baseline), baseline stored as diagnostic
    channel_free: bool  # returns (n, H, W) maps
    module: str
    references: str | None = None  # which reference set the method needs, if any
    differentiable: bool = False  # maps carry a graph to x inside `differentiable_maps`
    function: str = ""  # the Python name of the (shared) function in `module`
    constants: dict[str, Any] = field(default_factory=dict)  # what a family variant fixes
    doc: str = ""

    def options(self) -> dict[str, Any]:
        """The registration's settings as the catalogue records them."""
        return {
            "completeness": self.completeness,
            "channel_free": self.channel_free,
            "references": self.references,
            "differentiable": self.differentiable,
        }


METHODS: Registry[MethodInfo] = Registry("attribution method")


def register_method(
    name: str,
    *,
    completeness: bool = False,
    channel_free: bool = False,
    references: str | None = None,
    differentiable: bool = False,
    bind: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    doc: str | None = None,
    **old_style: Any,
) -> Callable[[Callable[..., Attribution]], Callable[..., Attribution]]:
    """Register ``fn`` under ``name``.

    Its config parameters are its keyword parameters after (model, x, target), less the runtime
    keywords; each is declared once, by its annotation and default (`attrflow.params`).

    ``differentiable``: the method honours `differentiable_maps` (module doc). A family registers
    one function under several names in a loop: ``bind`` fixes parameters for a variant (they
    stop being config parameters), ``defaults`` changes a default for it, ``doc`` describes it.
    """
    refuse_old_style(name, "register_method", old_style)
    if references is not None and references not in REFERENCE_KINDS:
        raise ValueError(f"{name}: references must be one of {REFERENCE_KINDS}, not {references!r}")

    def decorate(fn: Callable[..., Attribution]) -> Callable[..., Attribution]:
        params = parameter_schemas(
            fn, positional=3, runtime=RUNTIME_KWARGS, bound=bind, defaults=defaults, name=name
        )
        info = MethodInfo(
            name, bound_function(fn, bind, defaults), params, completeness, channel_free,
            fn.__module__, references, differentiable, fn.__name__, dict(bind or {}),
            doc if doc is not None else inspect.getdoc(fn) or "",
        )  # fmt: skip
        METHODS.add(name, info)
        return fn

    return decorate


def refuse_old_style(name: str, decorator: str, old_style: dict[str, Any]) -> None:
    """A registration still written the old way (``params={...json schema...}``) fails clearly."""
    if "params" in old_style:
        raise TypeError(
            f"{decorator}({name!r}, params=...) is the old style: declare each parameter once, in the "
            "function's signature (e.g. `steps: Annotated[int, Ge(1), Doc(\"...\")] = 32`, "
            "`fill: Literal[\"black\", \"blur\"] = \"black\"`, vocabulary in attrflow.params), drop "
            "params=, then run `python -m attrflow.catalog --write`; in a checkout, "
            "`python tools/convert_registration.py MODULE` does the mechanical rewrite (review it)"
        )
    if old_style:
        raise TypeError(f"{decorator}({name!r}): unknown argument(s) {sorted(old_style)}")


def bound_function(fn: Callable, bind: dict[str, Any] | None, defaults: dict[str, Any] | None) -> Callable:
    """``fn`` with a variant's constants and defaults applied (itself when there are none)."""
    fixed = {**(defaults or {}), **(bind or {})}
    return functools.partial(fn, **fixed) if fixed else fn


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
    where: str | None = None,
) -> Attribution:
    """Call a registered method with config params plus the runtime keywords it accepts.

    ``params`` are checked against the schema the signature declares, as the config is; errors
    name ``where.key`` (``where`` defaults to the method's name).
    """
    check_params(info.params, params, where or info.name)
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
