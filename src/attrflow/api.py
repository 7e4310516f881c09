"""attrflow from Python: explain, score, compare and open a workflow's results.

The notebook face of the registry the workflow uses. A prototype here gives the numbers a
workflow run gives for the same samples, parameters and seed, because both call the same code:
parameters are checked by the config's own check (`attrflow.config.check_entry`), maps
are made by the same bound `attrflow.explainer.Explainer`, scores by the score job's own
`attrflow.jobs.score.score_metric`, and the statistics by `attrflow.report.evidence`.

    import attrflow
    e = attrflow.explain(model, x, target, "integrated_gradients", steps=32)
    s = attrflow.score(model, x, e, "deletion", steps=20)
    table = attrflow.compare(model, x, target, methods=["gradient", "integrated_gradients"],
                             metrics=["deletion", "insertion"])

``model`` is any `torch.nn.Module` that maps (N, C, H, W) images to logits. Images are pixel
space, floating point, in [0, 1]; the model's input normalisation is given once with
`wrap` (or read from a timm model's pretrained config) and applied inside, as the workflow does.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from attrflow.config import GENERIC_METRIC_KEYS, ConfigError, ParameterError, check_entry
from attrflow.explainer import Explainer
from attrflow.methods.base import DEFAULT_MAX_BATCH
from attrflow.models.wrapper import WrappedModel

if TYPE_CHECKING:
    import pandas as pd

    from attrflow.metrics import MetricOutput

# Where a plain module given to `explain`/`score`/`compare` keeps the wrapper made for it, so
# repeated calls reuse one wrapper (and its pass counters) instead of re-inspecting the module.
_WRAPPER_ATTRIBUTE = "_attrflow_wrapped"
# Tolerance of the [0, 1] check: images that went through a float conversion may be off by an ulp.
PIXEL_TOLERANCE = 1e-6


def _quiet(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run without the job log's progress bars: a notebook call is not a job."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        from attrflow.jobs.runtime import quiet_progress

        with quiet_progress():
            return fn(*args, **kwargs)

    return call


# ------------------------------------------------------------------------------------- models


def wrap(
    model: nn.Module,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_classes: int | None = None,
    cam_layer: str | None = None,
    x_dnn: bool = False,
    name: str = "",
) -> WrappedModel:
    """``model`` as attrflow explains it: pixel-space [0, 1] input, normalisation inside.

    ``mean``/``std``: the normalisation the network expects (per channel). Left out, they come
    from a timm model's ``pretrained_cfg``; a torchvision classifier must be told (its weights
    expect ImageNet statistics, but the module does not record them); any other module is
    taken to read [0, 1] pixels as they are. ``num_classes`` defaults to the module's
    ``num_classes`` or the output size of its last linear layer; ``cam_layer`` to the layer the
    workflow picks (a ResNet's ``layer4``, else the last convolution). ``x_dnn`` declares a
    bias-free, nonnegatively homogeneous network (X-Gradient); it is checked. The module is put
    in eval mode, as the workflow's models are, and remembers its wrapper: passing the plain
    module to `explain`, `score` or `compare` afterwards uses this normalisation.
    """
    if isinstance(model, WrappedModel):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (the normalisation the network expects), or neither")
    if mean is None:
        mean, std = _default_normalisation(model)
    classes = num_classes if num_classes is not None else _num_outputs(model)
    if x_dnn:
        from attrflow.models.xdnn import check_x_dnn

        offenders = check_x_dnn(model)
        if offenders:
            raise ValueError(f"model declared x_dnn=True but {', '.join(offenders)} break nonnegative homogeneity")
    if cam_layer is None:
        from attrflow.models.architectures import default_cam_layer

        cam_layer = default_cam_layer(model)
    elif not isinstance(model.get_submodule(cam_layer), nn.Module):  # get_submodule raises on a bad name
        raise ValueError(f"cam_layer {cam_layer!r} is not a module of {type(model).__name__}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    wrapped = WrappedModel(
        model, num_classes=classes, mean=list(mean), std=list(std), cam_layer=cam_layer, is_x_dnn=x_dnn,
        name=name or type(model).__name__,
    )  # fmt: skip
    wrapped = wrapped.to(device).eval()
    # Said once: the plain module, given later to explain/score/compare, reuses this wrapper.
    object.__setattr__(model, _WRAPPER_ATTRIBUTE, wrapped)
    return wrapped


def _default_normalisation(model: nn.Module) -> tuple[list[float], list[float]]:
    config = getattr(model, "pretrained_cfg", None)
    if isinstance(config, Mapping) and config.get("mean") is not None and config.get("std") is not None:
        return list(config["mean"]), list(config["std"])
    if type(model).__module__.startswith("torchvision.models"):
        raise ValueError(
            f"{type(model).__name__} is a torchvision model: say which normalisation its weights expect, "
            "e.g. attrflow.wrap(model, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) for ImageNet "
            "weights, or mean=(0, 0, 0), std=(1, 1, 1) for a network trained on [0, 1] pixels"
        )
    return [0.0], [1.0]  # broadcasts over any channel count


def _num_outputs(model: nn.Module) -> int:
    declared = getattr(model, "num_classes", None)
    if isinstance(declared, int) and not isinstance(declared, bool) and declared > 0:
        return declared
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linear:
        return int(linear[-1].out_features)
    raise ValueError(
        f"cannot tell how many classes {type(model).__name__} outputs (no num_classes attribute, no linear "
        "layer); wrap it with attrflow.wrap(model, num_classes=...)"
    )


def as_wrapped(model: nn.Module) -> WrappedModel:
    """``model`` wrapped with `wrap`'s defaults (once per module), or itself if already wrapped.

    The wrapper is kept in the module's ``__dict__`` (not as a submodule: its parameters and
    state dict are untouched), so repeated calls reuse it and it is freed with the module."""
    if isinstance(model, WrappedModel):
        return model
    wrapped = model.__dict__.get(_WRAPPER_ATTRIBUTE)
    if not isinstance(wrapped, WrappedModel):
        wrapped = wrap(model)
        object.__setattr__(model, _WRAPPER_ATTRIBUTE, wrapped)
    device = next((p.device for p in model.parameters()), wrapped.device)
    return wrapped if device == wrapped.device else wrapped.to(device)  # the module moved since


# ------------------------------------------------------------------------------------- inputs


def check_images(x: Any, *, name: str = "x", device: torch.device | None = None) -> torch.Tensor:
    """``x`` as a float32 (N, C, H, W) tensor on ``device``, after checking it is what every
    attrflow model takes: floating point, finite, pixel values in [0, 1].

    The error names the likely cause: integer pixels (uint8, 0–255), or an image already
    normalised with the model's mean and std (attrflow normalises inside the model).
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of images, not {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be (N, C, H, W) images; got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(
            f"{name} is {x.dtype}, not floating point: integer pixels (0–255, as decoded images come)? "
            f"attrflow takes pixel-space images in [0, 1]: pass {name}.float() / 255"
        )
    low_t, high_t = torch.aminmax(x.detach())  # one pass; NaN and inf show in the extremes
    low, high = float(low_t), float(high_t)
    if not (np.isfinite(low) and np.isfinite(high)):
        sample = int((~torch.isfinite(x).flatten(1).all(dim=1)).nonzero()[0, 0])
        raise ValueError(f"{name}: sample {sample} holds a non-finite value (NaN or inf)")
    if low < -PIXEL_TOLERANCE:
        raise ValueError(
            f"{name} holds values down to {low:.3g}, below 0: it looks already normalised (mean subtracted, "
            "divided by std). attrflow takes pixel-space images in [0, 1] and normalises inside the model: "
            "pass the images before normalisation and give the normalisation once with "
            "attrflow.wrap(model, mean=..., std=...)"
        )
    if high > 1 + PIXEL_TOLERANCE:
        cause = (
            "pixels on a 0–255 scale (divide by 255)"
            if high <= 255 and bool((x == x.round()).all())
            else "an image already normalised (mean subtracted, divided by std), or pixels on a 0–255 scale"
        )
        raise ValueError(
            f"{name} holds values up to {high:.4g}, above 1: {cause}. attrflow takes pixel-space images in "
            "[0, 1] and normalises inside the model (attrflow.wrap(model, mean=..., std=...))"
        )
    return x.to(device=device, dtype=torch.float32) if device is not None else x.float()


def _targets(target: Any, n: int, device: torch.device, model: WrappedModel, x: torch.Tensor, max_batch: int) -> torch.Tensor:
    """Classes to explain: an int (every sample), a sequence/tensor of n, or "predicted"."""
    if isinstance(target, str):
        if target != "predicted":
            raise ValueError(f"target must be class indices or 'predicted', not {target!r}")
        from attrflow.jobs.attribute import choose_targets

        with _evaluation(model):
            return choose_targets(model, x, torch.zeros(n, dtype=torch.long, device=device), "predicted", max_batch)
    if isinstance(target, int | np.integer):
        return torch.full((n,), int(target), dtype=torch.long, device=device)
    chosen = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target, device=device)
    if chosen.dim() != 1 or chosen.shape[0] != n:
        raise ValueError(f"target must hold one class per sample ({n}); got shape {tuple(chosen.shape)}")
    if chosen.dtype.is_floating_point or chosen.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices; got {chosen.dtype}")
    return chosen.long()


class _evaluation:
    def __init__(self, model: nn.Module) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was)


def _references(references: Any, device: torch.device) -> tuple[Any, torch.Tensor | None]:
    """(pool, weights) from a reference-store path, an image tensor (uniform weights), an
    (images, weights) pair, or a layer → feature-statistics mapping (IBA, InputIBA)."""
    if references is None:
        return None, None
    if isinstance(references, str | Path):
        from attrflow.jobs.references import load_references

        return load_references(references, device)
    if isinstance(references, Mapping):
        return references, None
    if isinstance(references, tuple):
        pool, weights = references
        pool = check_images(pool, name="references", device=device)
        return pool, torch.as_tensor(weights, device=device, dtype=pool.dtype)
    pool = check_images(references, name="references", device=device)
    return pool, torch.full((pool.shape[0],), 1.0 / pool.shape[0], device=device, dtype=pool.dtype)


def _checked(family: str, entry: dict) -> dict:
    """``entry`` checked as a config entry of ``family`` is (`attrflow.config.check_entry`),
    defaults filled in; the error is the config's, its key path ``<fn>.<key>``."""
    try:
        return check_entry(family, str(entry.get("fn")), entry)
    except ConfigError as err:
        raise ParameterError(err.key_path.split(".", 1)[1], err.detail) from None


def _method_entry(method: str | Mapping[str, Any], params: Mapping[str, Any], keep_channels: bool | None = None) -> dict:
    """A checked method entry (defaults filled) from a function name and its parameters."""
    entry = {**method, **params} if isinstance(method, Mapping) else {"fn": method, **params}
    if keep_channels is not None:
        entry["keep_channels"] = bool(keep_channels)
    return _checked("methods", entry)


def _metric_entry(metric: str | Mapping[str, Any], params: Mapping[str, Any]) -> dict:
    return _checked("metrics", {**metric, **params} if isinstance(metric, Mapping) else {"fn": metric, **params})


# ------------------------------------------------------------------------------------- explain


@dataclass(frozen=True)
class Explanation:
    """Maps of a batch, what the method stored beside them, and the explainer that made them.

    ``maps``: (n, H, W), channels summed as the workflow stores them ((n, C, H, W) with
    ``keep_channels=True``), on the model's device. ``diagnostics``: per-sample tensors (e.g.
    ``baselines``, ``path_logits``). ``params``: the method's complete parameters, defaults
    filled in — what a workflow store records.
    """

    maps: torch.Tensor
    diagnostics: dict[str, torch.Tensor]
    targets: torch.Tensor
    explainer: Explainer
    seed: int

    @property
    def method(self) -> str:
        return self.explainer.fn

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.explainer.params)

    def numpy(self) -> np.ndarray:
        return self.maps.detach().cpu().numpy()


def bind(
    model: nn.Module,
    method: str | Mapping[str, Any],
    *,
    keep_channels: bool = False,
    references: Any = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    seed: int = 0,
    **params: Any,
) -> Explainer:
    """A method with its (checked) parameters bound to ``model``: see `attrflow.explainer.Explainer`."""
    wrapped = as_wrapped(model)
    entry = _method_entry(method, params, keep_channels)
    pool, weights = _references(references, wrapped.device)
    bound = Explainer.from_entry(entry, wrapped, references=pool, reference_weights=weights, max_batch=max_batch, seed=seed)
    bound.check_references(
        f"{bound.fn} needs a {bound.info.references!r} reference set: pass references= "
        + (
            "a reference store (results/references/…zarr) built by the workflow"
            if bound.info.references == "feature_stats"
            else "(K, C, H, W) training images in [0, 1] (or an (images, weights) pair, or a reference store path)"
        )
    )
    return bound


def explain(
    model: nn.Module,
    x: Any,
    target: Any,
    method: str | Mapping[str, Any],
    *,
    seed: int = 0,
    keep_channels: bool = False,
    references: Any = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    **params: Any,
) -> Explanation:
    """Maps explaining ``target`` (class indices, one int for all, or "predicted") for images
    ``x`` with the registered ``method`` and its ``params`` (checked as a config entry's are).

    ``seed`` seeds the method's generator (noise, baselines, references): the same call gives
    the same maps. A workflow shard of the same samples is reproduced with the shard's seed
    (`attrflow.jobs.runtime.derive_seed(seed, dataset, model, method, shard)`).
    """
    bound = bind(model, method, keep_channels=keep_channels, references=references, max_batch=max_batch, seed=seed, **params)
    wrapped = bound.model
    x = check_images(x, device=wrapped.device)
    targets = _targets(target, x.shape[0], wrapped.device, wrapped, x, max_batch)
    generator = torch.Generator(device=wrapped.device)
    generator.manual_seed(int(seed))
    result = bound.attribute_all(x, targets, generator=generator)
    return Explanation(maps=result.maps, diagnostics=result.diagnostics, targets=targets, explainer=bound, seed=int(seed))


# ------------------------------------------------------------------------------------- score


@_quiet
def score(
    model: nn.Module,
    x: Any,
    maps: Explanation | torch.Tensor | np.ndarray | None,
    metric: str | Mapping[str, Any],
    *,
    target: Any = None,
    labels: Any = None,
    masks: Any = None,
    method: str | Mapping[str, Any] | None = None,
    method_params: Mapping[str, Any] | None = None,
    references: Any = None,
    seed: int = 0,
    max_batch: int = DEFAULT_MAX_BATCH,
    **params: Any,
) -> MetricOutput:
    """One metric's value per sample (`attrflow.metrics.MetricOutput`: values, curves, status,
    reasons) for ``maps`` of images ``x``.

    ``maps`` is an `Explanation` (its targets, diagnostics and method come with it), or a
    tensor of maps with ``target``. Explainer metrics (attack robustness, randomisation checks,
    Riemann-step stability) re-run the method: it is the Explanation's, or ``method`` (a
    registered name) with ``method_params`` — with ``maps=None`` the maps are then made by it.
    ``labels`` default to the targets; ``masks`` ((n, H, W) bool) feed localisation metrics.
    ``seed`` seeds the metric's generator, batch by batch as the score job does.
    """
    from attrflow.jobs.score import ScoringContext, ShardMaps, score_batches
    from attrflow.metrics import get_metric

    wrapped = as_wrapped(model)
    entry = _metric_entry(metric, params)
    info = get_metric(entry["fn"])
    x = check_images(x, device=wrapped.device)
    n = x.shape[0]
    if isinstance(maps, Explanation):
        if method is not None:
            raise ValueError("maps is an Explanation, which names its method: leave method= out")
        bound, targets, diagnostics = maps.explainer, maps.targets, maps.diagnostics
        maps_tensor = maps.maps
    else:
        bound = None
        if method is not None:
            bound = bind(wrapped, method, references=references, max_batch=max_batch, seed=seed, **(method_params or {}))
        elif method_params:
            raise ValueError("method_params given without method=")
        if target is None:
            raise ValueError("target= is needed with maps that are not an Explanation")
        targets = _targets(target, n, wrapped.device, wrapped, x, max_batch)
        diagnostics = {}
        if maps is None:
            if bound is None:
                raise ValueError("maps=None: pass method= (and method_params=) to make them")
            made = explain(wrapped, x, targets, dict(fn=bound.fn, **bound.params), seed=seed, max_batch=max_batch, references=references)
            maps_tensor, diagnostics = made.maps, made.diagnostics
        else:
            maps_tensor = torch.as_tensor(maps, device=wrapped.device).float()
    if maps_tensor.shape[0] != n or maps_tensor.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"maps have shape {tuple(maps_tensor.shape)}; expected ({n}, {x.shape[2]}, {x.shape[3]})")
    if info.kind == "explainer" and bound is None:
        raise ValueError(
            f"{info.name} is an explainer metric: it re-runs the method. Pass maps=attrflow.explain(...), or "
            "method='<registered method>' with method_params={...}"
        )
    label_tensor = targets if labels is None else _targets(labels, n, wrapped.device, wrapped, x, max_batch)
    mask_tensor = None if masks is None else torch.as_tensor(masks, device=wrapped.device).bool()
    shards = ShardMaps(
        ids=[str(i) for i in range(n)], targets=targets.cpu().numpy(), labels=label_tensor.cpu().numpy(),
        maps=None, diagnostics={}, method_fn=bound.fn if bound else "",
        claims_completeness=bool(bound and bound.info.completeness),
    )  # fmt: skip
    context = ScoringContext(
        model=wrapped, images=x, maps=maps_tensor, targets=targets, labels=label_tensor, masks=mask_tensor,
        diagnostics=dict(diagnostics), ids=shards.ids, method=bound.fn if bound else "", shards=shards,
        explainer=bound, max_batch=max_batch, seed=int(seed),
    )  # fmt: skip
    metric_params = {k: v for k, v in entry.items() if k not in GENERIC_METRIC_KEYS}
    return score_batches(context, n, info, metric_params, int(seed))


# ------------------------------------------------------------------------------------- compare


@dataclass(frozen=True)
class Comparison:
    """What a workflow run reports for the compared samples: the tidy scores (the workflow's
    columns), their summary, and the evidence — paired comparisons, ranks, metric quality against
    the random control and metric agreement (`attrflow.report.evidence`)."""

    scores: pd.DataFrame
    summary: pd.DataFrame
    comparisons: pd.DataFrame
    ranks: pd.DataFrame
    metric_quality: pd.DataFrame
    metric_agreement: pd.DataFrame

    def _repr_html_(self) -> str:
        return self.summary._repr_html_()


def _catalogue(items: Sequence[str] | Mapping[str, Any], kind: str) -> dict[str, dict]:
    """config-style entries {name: {fn, ...}} from a list of function names or such a mapping."""
    if isinstance(items, Mapping):
        out = {}
        for name, entry in items.items():
            out[str(name)] = {"fn": entry} if isinstance(entry, str) else dict(entry)
        return out
    if isinstance(items, str):
        raise TypeError(f"{kind} must be a list of names or a mapping of entries, not the string {items!r}")
    return {str(fn): {"fn": str(fn)} for fn in items}


@_quiet
def compare(
    model: nn.Module,
    x: Any,
    target: Any,
    *,
    methods: Sequence[str] | Mapping[str, Any],
    metrics: Sequence[str] | Mapping[str, Any],
    labels: Any = None,
    ids: Sequence[str] | None = None,
    masks: Any = None,
    references: Any = None,
    random_control: bool = True,
    seed: int = 0,
    shard_size: int = 256,
    max_batch: int = DEFAULT_MAX_BATCH,
    dataset: str = "notebook",
    model_name: str = "model",
    draws: int = 1000,
) -> Comparison:
    """Every method on every metric for these samples, as a workflow run would report them.

    ``methods``/``metrics``: function names, or config-style catalogues
    (``{"ig32": {"fn": "integrated_gradients", "steps": 32}}``), checked as config entries are.
    A random-map control (``random_attribution``) is added unless one is there or
    ``random_control=False``: the report judges methods and metrics against it. Seeds derive from
    ``seed`` and the names (``dataset``, ``model_name``, each entry's name) exactly as a workflow
    run derives them, shard by shard of ``shard_size`` samples — so a run of the same samples under
    the same names and seed gives the same table. ``target`` is class indices or "predicted";
    ``labels`` (the ground truth, for the ``correct`` column) default to the targets. Two
    provenance columns differ from a run's by construction: ``model_fingerprint`` hashes the
    module's state (a run hashes its weights file) and ``dataset_fingerprint`` covers the images,
    labels, ids and masks given here (a run's also covers concept labels and severity maps).
    """
    import pandas as pd
    import pyarrow as pa

    from attrflow.data.sample_store import SampleSet
    from attrflow.jobs.runtime import derive_seed
    from attrflow.jobs.score import ScoringContext, ShardMaps, predictions_of, reexplain_seed, score_metric
    from attrflow.methods import MethodNotApplicable
    from attrflow.report.aggregate import summarise
    from attrflow.report.evidence import evidence, metric_agreement, metric_quality
    from attrflow.report.schema import SCORES

    wrapped = as_wrapped(model)
    device = wrapped.device
    method_entries = {name: _method_entry(entry, {}) for name, entry in _catalogue(methods, "methods").items()}
    if random_control and not any(e["fn"] == "random_attribution" for e in method_entries.values()):
        method_entries.setdefault("random", _method_entry("random_attribution", {}))
    metric_entries = {name: _metric_entry(entry, {}) for name, entry in _catalogue(metrics, "metrics").items()}
    images = check_images(x, device=device)
    n = images.shape[0]
    targets = _targets(target, n, device, wrapped, images, max_batch)
    label_tensor = targets if labels is None else _targets(labels, n, device, wrapped, images, max_batch)
    sample_ids = [str(i) for i in (ids if ids is not None else range(n))]
    mask_array = None if masks is None else np.asarray(torch.as_tensor(masks).cpu().numpy(), dtype=bool)
    pool, weights = _references(references, device)
    predictions = predictions_of(wrapped, images, max_batch)
    model_fingerprint = state_fingerprint(wrapped.net)
    tables = []
    for method, entry in method_entries.items():
        bound = Explainer.from_entry(entry, wrapped, references=pool, reference_weights=weights, max_batch=max_batch)
        limit = n if entry.get("samples") is None else min(n, int(entry["samples"]))
        for shard, start in enumerate(range(0, limit, shard_size)):
            stop = min(start + shard_size, limit)
            samples = SampleSet(
                images[start:stop].cpu().numpy(), label_tensor[start:stop].cpu().numpy(), sample_ids[start:stop],
                None if mask_array is None else mask_array[start:stop],
            )  # fmt: skip
            generator = torch.Generator(device=device)
            generator.manual_seed(derive_seed(seed, dataset, model_name, method, shard))
            maps = diagnostics = None
            reason = None
            try:
                bound.check_references(f"{bound.fn} needs a {bound.info.references!r} reference set: pass references=")
                maps, diagnostics = bound.explain_all(images[start:stop], targets[start:stop], generator=generator)
                diagnostics["nonfinite"] = ~np.isfinite(maps.reshape(maps.shape[0], -1)).all(axis=1)
            except MethodNotApplicable as why:
                reason = str(why)
            shard_maps = ShardMaps(
                ids=samples.ids, targets=targets[start:stop].cpu().numpy(), labels=samples.labels, maps=maps,
                diagnostics=diagnostics or {}, method_fn=bound.fn, applicable=reason is None, reason=reason,
                claims_completeness=bound.info.completeness, model_fingerprint=model_fingerprint,
                dataset_fingerprint=samples.fingerprint(),
            )  # fmt: skip
            context = ScoringContext(
                model=wrapped, images=images[start:stop],
                maps=torch.from_numpy(maps).to(device) if maps is not None else None,
                targets=targets[start:stop], labels=label_tensor[start:stop],
                masks=None if mask_array is None else torch.from_numpy(samples.masks).to(device),
                diagnostics={k: torch.from_numpy(v).to(device) for k, v in (diagnostics or {}).items()},
                ids=samples.ids, method=method, shards=shard_maps,
                explainer=bound.with_seed(reexplain_seed(seed, dataset, model_name, method)),
                max_batch=max_batch, seed=derive_seed(seed, dataset, model_name, method),
            )  # fmt: skip
            for metric, metric_entry in metric_entries.items():
                if method not in metric_entry.get("methods", [method]):
                    continue
                scored = {k: v for k, v in metric_entry.items() if k != "methods"}
                tables.append(
                    score_metric(
                        context, metric, scored, metric_code(scored["fn"]), method_code(entry), predictions[start:stop],
                        names=(dataset, model_name, method), first_index=start, seed=seed,
                    )
                )  # fmt: skip
    table = pa.concat_tables(tables) if tables else SCORES.empty_table()
    frame = table.to_pandas()
    comparisons, ranks = evidence(frame, draws)
    agreement = metric_agreement(ranks)
    quality = metric_quality(frame, comparisons, ranks, agreement)
    return Comparison(
        scores=frame, summary=summarise(frame), comparisons=comparisons, ranks=ranks, metric_quality=quality,
        metric_agreement=agreement if isinstance(agreement, pd.DataFrame) else pd.DataFrame(agreement),
    )  # fmt: skip


def method_code(entry: Mapping[str, Any]) -> str:
    """The code fingerprint the workflow records for a method entry's maps."""
    from attrflow.plan import method_code_fingerprint

    return method_code_fingerprint(dict(entry))


def metric_code(fn: str) -> str:
    from attrflow.plan import metric_code_fingerprint

    return metric_code_fingerprint(fn)


def state_fingerprint(net: nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, shapes, dtypes, values).

    The workflow's model fingerprint is the SHA-256 of its weights file; an in-memory module has
    none, so its state is hashed instead."""
    digest = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------- results


def open_results(path: str | Path = "results") -> Any:
    """A workflow's results directory: scores (DuckDB, pandas), maps (lazily from Zarr), provenance.
    See `attrflow.results.Results`."""
    from attrflow.results import Results

    return Results(path)


__all__ = [
    "Comparison",
    "Explanation",
    "as_wrapped",
    "check_images",
    "compare",
    "explain",
    "bind",
    "open_results",
    "score",
    "wrap",
]

