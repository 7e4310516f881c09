"""The contract every metric follows.

Four kinds:

* ``map``: reads stored maps and queries the model (deletion, insertion, MuFidelity, …);
* ``explainer``: must call the method again (attack robustness, randomisation checks, …);
* ``diagnostic``: reads what the method stored (completeness residual, path monotonicity);
* ``retraining``: runs through the ``retrain`` rules (ROAR, DiffROAR).

A metric is a function ``fn(inputs: MetricInputs, **params) -> MetricOutput`` returning one
value per sample and optionally a curve. Its direction (is higher better?) is part of its
registration. As for methods, its config parameters are declared once, in its typed signature
(`attrflow.params`), and ``generator`` / ``max_batch`` are injected at run time.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attrflow.methods.base import RUNTIME_KWARGS, bound_function, refuse_old_style
from attrflow.params import METHOD_ENTRY_FORMAT, check_params, parameter_schemas
from attrflow.registry import Registry, signature_params

KINDS = ("map", "explainer", "diagnostic", "retraining")
DIRECTIONS = ("higher", "lower")

OK, NAN, SKIPPED = "ok", "nan", "skipped"


@dataclass(frozen=True)
class PeerMaps:
    """The stored maps of another method entry on the same (dataset, model), for metrics that
    compare against them (a parameter whose schema has ``"format": "method-entry"`` names it)."""

    ids: list[str]
    maps: torch.Tensor  # (m, H, W) or (m, C, H, W); m may differ from the scored batch
    diagnostics: dict[str, torch.Tensor]
    method_fn: str

    def rows(self, ids: list[str]) -> list[int | None]:
        """The row of each of ``ids`` in these maps (None where the peer has no such sample)."""
        where = {sample: i for i, sample in enumerate(self.ids)}
        return [where.get(sample) for sample in ids]


def peer_parameters(params: dict[str, dict]) -> list[str]:
    """The parameters of a metric that name another method entry (``"format": "method-entry"``)."""
    return sorted(k for k, schema in params.items() if schema.get("format") == METHOD_ENTRY_FORMAT)


@dataclass
class MetricInputs:
    """Everything a metric may read for one batch of samples of one (dataset, model, method)."""

    model: torch.nn.Module  # WrappedModel: pixel-space input, logits out
    images: torch.Tensor  # (n, C, H, W) in [0, 1], on the model's device
    maps: torch.Tensor  # (n, H, W) or (n, C, H, W), on the model's device
    targets: torch.Tensor  # (n,) the class each map explains
    labels: torch.Tensor  # (n,) ground-truth classes
    ids: list[str]
    masks: torch.Tensor | None = None  # (n, H, W) bool object masks, when the dataset has them
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)
    method: str = ""  # config entry name of the method that produced the maps
    method_fn: str = ""
    method_claims_completeness: bool = False
    # For explainer metrics: explain(x, target, model=None, **param_overrides) -> maps reduced
    # like the stored ones; `model` swaps the network, overrides replace method parameters.
    explain: Callable[..., torch.Tensor] | None = None
    method_params: dict[str, Any] = field(default_factory=dict)
    # The job's seed, for randomness several metrics must share (the attack of attack_spearman
    # and attack_topk); each metric's own randomness comes from its `generator`.
    seed: int = 0
    # Stored maps of the method entries the metric's parameters name (`PeerMaps`), by entry name.
    peers: dict[str, PeerMaps] = field(default_factory=dict)
    # (n, H, W) per-pixel severity scores, when the dataset has them (attrflow.data.regression)
    severity: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def maps2d(self) -> torch.Tensor:
        """Maps with channels summed: (n, H, W)."""
        return self.maps if self.maps.dim() == 3 else self.maps.sum(dim=1)


@dataclass
class MetricOutput:
    values: np.ndarray  # (n,) float64
    curves: list[np.ndarray | None] | None = None
    status: list[str] | None = None  # per sample: ok | nan | skipped
    reasons: list[str | None] | None = None

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64).reshape(-1)
        n = self.values.shape[0]
        if self.status is None:
            self.status = [OK if np.isfinite(v) else NAN for v in self.values]
        if self.reasons is None:
            self.reasons = [None if s == OK else "value is not finite" for s in self.status]
        if self.curves is not None and len(self.curves) != n:
            raise ValueError(f"{len(self.curves)} curves for {n} values")

    @classmethod
    def skipped(cls, n: int, reason: str) -> MetricOutput:
        return cls(np.full(n, np.nan), None, [SKIPPED] * n, [reason] * n)


@dataclass(frozen=True)
class MetricInfo:
    name: str
    fn: Callable[..., MetricOutput]  # with a family variant's constants bound
    params: dict[str, dict]  # JSON-schema fragment per config parameter, derived from the signature
    kind: str
    direction: str
    module: str
    requires: tuple[str, ...] = ()  # what the dataset must provide, e.g. ("masks",)
    function: str = ""  # the Python name of the (shared) function in `module`
    constants: dict[str, Any] = field(default_factory=dict)  # what a family variant fixes
    doc: str = ""

    def options(self) -> dict[str, Any]:
        """The registration's settings as the catalogue records them."""
        return {"kind": self.kind, "direction": self.direction, "requires": list(self.requires)}


METRICS: Registry[MetricInfo] = Registry("metric")


REQUIREMENTS = ("masks", "severity")


def register_metric(
    name: str,
    *,
    kind: str,
    direction: str,
    requires: list[str] | None = None,
    bind: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    doc: str | None = None,
    **old_style: Any,
) -> Callable[[Callable[..., MetricOutput]], Callable[..., MetricOutput]]:
    """Register ``fn`` under ``name``.

    Its config parameters are its keyword parameters after ``inputs``, less the runtime keywords;
    each is declared once, by its annotation and default (`attrflow.params`). ``requires`` lists
    what the dataset must provide (``"masks"``: ground-truth object masks;
    ``"severity"``: per-pixel severity maps); the config check
    refuses such a metric on a dataset kind that cannot provide it. A family registers one
    function under several names in a loop: ``bind`` fixes parameters for a variant (they stop
    being config parameters), ``defaults`` changes a default for it, ``doc`` describes it.
    """
    refuse_old_style(name, "register_metric", old_style)
    if kind not in KINDS:
        raise ValueError(f"{name}: kind must be one of {KINDS}, not {kind!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"{name}: direction must be one of {DIRECTIONS}, not {direction!r}")
    unknown = set(requires or ()) - set(REQUIREMENTS)
    if unknown:
        raise ValueError(f"{name}: unknown requirement(s) {sorted(unknown)}; known: {REQUIREMENTS}")

    def decorate(fn: Callable[..., MetricOutput]) -> Callable[..., MetricOutput]:
        params = parameter_schemas(
            fn, positional=1, runtime=RUNTIME_KWARGS, bound=bind, defaults=defaults, name=name
        )
        info = MetricInfo(
            name, bound_function(fn, bind, defaults), params, kind, direction, fn.__module__,
            tuple(requires or ()), fn.__name__, dict(bind or {}),
            doc if doc is not None else inspect.getdoc(fn) or "",
        )  # fmt: skip
        METRICS.add(name, info)
        return fn

    return decorate


def call_metric(
    info: MetricInfo,
    inputs: MetricInputs,
    params: dict[str, Any],
    *,
    generator: torch.Generator | None = None,
    max_batch: int = 256,
    where: str | None = None,
) -> MetricOutput:
    """Call a registered metric; ``params`` are checked as the config checks them (errors name
    ``where.key``, ``where`` defaulting to the metric's name)."""
    check_params(info.params, params, where or info.name)
    accepted = signature_params(info.fn, positional=1)
    runtime: dict[str, Any] = {}
    if "generator" in accepted:
        runtime["generator"] = generator
    if "max_batch" in accepted:
        runtime["max_batch"] = max_batch
    out = info.fn(inputs, **params, **runtime)
    if not isinstance(out, MetricOutput):
        raise TypeError(f"{info.name} returned {type(out).__name__}, not MetricOutput")
    if out.values.shape[0] != inputs.n:
        raise ValueError(f"{info.name} returned {out.values.shape[0]} values for {inputs.n} samples")
    return out
