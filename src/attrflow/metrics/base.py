"""The contract every metric follows.

Four kinds:

* ``map``: reads stored maps and queries the model (deletion, insertion, MuFidelity, …);
* ``explainer``: must call the method again (attack robustness, randomisation checks, …);
* ``diagnostic``: reads what the method stored (completeness residual, path monotonicity);
* ``retraining``: runs through the ``retrain`` rules (ROAR, DiffROAR).

A metric is a function ``fn(inputs: MetricInputs, **params) -> MetricOutput`` returning one
value per sample and optionally a curve. Its direction (is higher better?) is part of its
registration. As for methods, the registration's arguments are literals so the workflow can read
them without importing torch, and ``generator`` / ``max_batch`` are injected at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attrflow.methods.base import RUNTIME_KWARGS, check_declared
from attrflow.registry import Registry, signature_params

KINDS = ("map", "explainer", "diagnostic", "retraining")
DIRECTIONS = ("higher", "lower")

OK, NAN, SKIPPED = "ok", "nan", "skipped"


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
    fn: Callable[..., MetricOutput]
    params: dict[str, dict]
    kind: str
    direction: str
    module: str
    requires: tuple[str, ...] = ()  # what the dataset must provide, e.g. ("masks",)


METRICS: Registry[MetricInfo] = Registry("metric")


REQUIREMENTS = ("masks",)


def register_metric(
    name: str,
    *,
    kind: str,
    direction: str,
    params: dict[str, dict] | None = None,
    requires: list[str] | None = None,
) -> Callable[[Callable[..., MetricOutput]], Callable[..., MetricOutput]]:
    """Register ``fn`` under ``name``.

    ``requires`` lists what the dataset must provide (``"masks"``: ground-truth object masks);
    the config check refuses such a metric on a dataset kind that cannot provide it.
    """
    if kind not in KINDS:
        raise ValueError(f"{name}: kind must be one of {KINDS}, not {kind!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"{name}: direction must be one of {DIRECTIONS}, not {direction!r}")
    unknown = set(requires or ()) - set(REQUIREMENTS)
    if unknown:
        raise ValueError(f"{name}: unknown requirement(s) {sorted(unknown)}; known: {REQUIREMENTS}")
    declared = dict(params or {})

    def decorate(fn: Callable[..., MetricOutput]) -> Callable[..., MetricOutput]:
        in_signature = {
            k: v for k, v in signature_params(fn, positional=1).items() if k not in RUNTIME_KWARGS
        }
        check_declared(name, declared, in_signature)
        info = MetricInfo(name, fn, declared, kind, direction, fn.__module__, tuple(requires or ()))
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
) -> MetricOutput:
    unknown = set(params) - set(info.params)
    if unknown:
        raise TypeError(f"{info.name}: unknown parameter(s) {sorted(unknown)}")
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
