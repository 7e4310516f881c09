"""A method with its parameters, bound to a model and its reference set: one `Explainer`.

The workflow computes maps in three places — the attribution shards, the axiom inputs and the
explainer metrics that must call the method again (attack robustness, randomisation sanity
checks, Riemann-step stability) — and the notebook API (`attrflow.explain`) in a fourth. All of
them build an `Explainer` from a method entry (``{"fn": ..., **params}``) and call it, so a map
means the same thing wherever it was made: the same parameters, the same runtime keywords
(``generator``, ``max_batch``, ``references``), and channels reduced the same way as the stored
maps (summed unless the method is channel-free or the entry keeps channels).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from attrflow.methods import Attribution, MethodInfo, MethodNotApplicable, call_method, get_method, reduce_channels
from attrflow.methods.base import DEFAULT_MAX_BATCH

# Keys of a method entry that are not the method function's parameters: how its maps are
# stored (`keep_channels`) and what it runs on and in how many jobs (`samples`, `models`,
# `datasets`, `shards_per_job`).
ENTRY_KEYS = ("fn", "keep_channels", "samples", "models", "datasets", "shards_per_job")
# Samples handed to a method per call when a whole set is explained (`explain_all`). Methods
# batch their own steps/noise/references up to `max_batch` model inputs inside a call; this only
# bounds host memory and paces the progress log.
SAMPLES_PER_CALL = 64


def method_params(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The method function's keyword arguments of a method entry (its other keys removed)."""
    return {k: v for k, v in entry.items() if k not in ENTRY_KEYS}


@dataclass(frozen=True)
class Explainer:
    """A registered method, its parameters and the model (and references) it explains.

    ``explainer.attribute(x, target, generator=g)`` runs the method once;
    ``explainer.explain_all(x, target, generator=g)`` runs it over a whole set in calls of
    `SAMPLES_PER_CALL` samples and returns numpy maps and diagnostics, as stored;
    ``explainer(x, target, model=None, **overrides)`` is what explainer metrics call
    (`attrflow.metrics.MetricInputs.explain`): a generator seeded with ``seed`` afresh on every
    call, another network in place of the model (a randomised copy), and parameter overrides
    (``steps`` for the Riemann-step stability).
    """

    info: MethodInfo
    model: torch.nn.Module  # a WrappedModel: pixel-space input in [0, 1], logits out
    params: dict[str, Any] = field(default_factory=dict)
    keep_channels: bool = False
    references: Any = None  # (K, C, H, W) images, or a layer → feature-statistics mapping
    reference_weights: torch.Tensor | None = None
    max_batch: int = DEFAULT_MAX_BATCH
    seed: int = 0  # the generator `__call__` seeds afresh on every call

    @classmethod
    def from_entry(
        cls,
        entry: Mapping[str, Any],
        model: torch.nn.Module,
        *,
        references: Any = None,
        reference_weights: torch.Tensor | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        seed: int = 0,
    ) -> Explainer:
        """The explainer of a method entry (``{"fn": name, **params}``, as in config.yaml)."""
        return cls(
            info=get_method(entry["fn"]),
            model=model,
            params=method_params(entry),
            keep_channels=bool(entry.get("keep_channels", False)),
            references=references,
            reference_weights=reference_weights,
            max_batch=int(max_batch),
            seed=int(seed),
        )

    @property
    def fn(self) -> str:
        return self.info.name

    @property
    def channel_reduction(self) -> str:
        """How the (n, C, H, W) maps a method returns become the stored ones."""
        return "none" if self.keep_channels or self.info.channel_free else "sum"

    def with_seed(self, seed: int) -> Explainer:
        return replace(self, seed=int(seed))

    def check_references(self, missing_reason: str | None = None) -> None:
        """Raise `MethodNotApplicable` when the method needs a reference set this explainer lacks."""
        if self.info.references is not None and self.references is None:
            raise MethodNotApplicable(
                missing_reason or f"{self.fn} needs a {self.info.references!r} reference set and has none"
            )

    def attribute(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        model: torch.nn.Module | None = None,
        **overrides: Any,
    ) -> Attribution:
        """One call of the method on a batch; maps reduced like the stored ones, not detached
        (inside `attrflow.methods.differentiable_maps` they carry their graph to x)."""
        result = call_method(
            self.info, self.model if model is None else model, x, target, {**self.params, **overrides},
            generator=generator, max_batch=self.max_batch, references=self.references,
            reference_weights=self.reference_weights,
        )  # fmt: skip
        maps = result.maps if self.keep_channels else reduce_channels(result.maps)
        return Attribution(maps=maps, diagnostics=result.diagnostics)

    def __call__(
        self, x: torch.Tensor, target: torch.Tensor, model: torch.nn.Module | None = None, **overrides: Any
    ) -> torch.Tensor:
        """Maps for explainer metrics: a fresh generator seeded with `seed` on every call, so
        the maps of the clean and of the perturbed input see the same noise and references."""
        generator = torch.Generator(device=x.device)
        generator.manual_seed(self.seed)
        return self.attribute(x, target, generator=generator, model=model, **overrides).maps

    def _calls(
        self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None, progress: bool
    ) -> Iterator[Attribution]:
        """The method over a whole set in calls of `SAMPLES_PER_CALL` samples that draw from one
        generator in turn (so a set gives the same maps however it is explained)."""
        n = int(images.shape[0])
        bar = _progress(n, self.fn) if progress else None
        try:
            for lo in range(0, n, SAMPLES_PER_CALL):
                hi = min(lo + SAMPLES_PER_CALL, n)
                yield self.attribute(images[lo:hi], targets[lo:hi], generator=generator)
                if bar is not None:
                    bar.update(hi - lo)
        finally:
            if bar is not None:
                bar.close()

    def explain_all(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Maps (float32) and diagnostics of every sample as numpy arrays, as a store holds them;
        each call's results leave the device before the next call."""
        maps: list[np.ndarray] = []
        diagnostics: dict[str, list[np.ndarray]] = {}
        for result in self._calls(images, targets, generator, progress):
            maps.append(result.maps.detach().float().cpu().numpy())
            for key, value in result.diagnostics.items():
                diagnostics.setdefault(key, []).append(value.detach().cpu().numpy())
        joined = {k: np.concatenate(v) for k, v in diagnostics.items()}
        return (np.concatenate(maps) if maps else np.zeros((0, *images.shape[2:]), np.float32)), joined

    def attribute_all(
        self, images: torch.Tensor, targets: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> Attribution:
        """`explain_all` as tensors on the model's device (detached): the same maps, in the same
        calls, for a caller that keeps working in torch."""
        maps: list[torch.Tensor] = []
        diagnostics: dict[str, list[torch.Tensor]] = {}
        for result in self._calls(images, targets, generator, progress=False):
            maps.append(result.maps.detach().float())
            for key, value in result.diagnostics.items():
                diagnostics.setdefault(key, []).append(value.detach())
        joined = {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in diagnostics.items()}
        return Attribution(maps=torch.cat(maps) if len(maps) > 1 else maps[0], diagnostics=joined)

    def provenance(self) -> dict[str, Any]:
        """What a store records about the maps' method."""
        return {
            "fn": self.fn,
            "params": dict(self.params),
            "keep_channels": self.keep_channels,
            "channel_reduction": self.channel_reduction,
            "claims_completeness": self.info.completeness,
        }


def _progress(total: int, desc: str):
    from attrflow.jobs.runtime import progress

    return progress(total, desc)
