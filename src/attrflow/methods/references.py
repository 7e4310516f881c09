"""Reference sets for methods that integrate from training images (Expected Gradients, LPI).

`build_references` is called once per (dataset, model, kind) by the ``prepare_references`` job
and its result cached; the attribution job then hands ``references`` and ``reference_weights`` to
every method registered with that kind. It is pure: no file IO, randomness only from ``seed``.

Kinds:

* ``"train_pool"`` — ``pool_size`` train images drawn uniformly without replacement, uniform
  weights. Expected Gradients draws its references from this pool (Erion et al. draw from the
  whole train split; a fixed random pool of 256 keeps the job's memory bounded and changes the
  expectation only by the pool's sampling error).
* ``"lpi"`` — Local Path Integration's references (Yang et al., AAAI 2023; the authors'
  ``distribution_estimation.py``, read, not copied):

  1. represent every train image by the model's logit vector (the authors cluster logits);
  2. k-means the logits into ``clusters`` global clusters;
  3. k-means each cluster's logits into ``sub_clusters`` sub-clusters;
  4. each sub-cluster's reference is the train image whose logits lie nearest its sub-centre;
  5. its weight is the sub-cluster's size over the whole train split, so the weights sum to 1
     and, renormalised within a cluster, are the authors' "density" (sub-cluster size over
     cluster size).

  The images are returned cluster-major: cluster c owns rows ``c·R .. c·R + R − 1`` (R =
  ``sub_clusters``). `attrflow.methods.lpi` relies on that layout to find an input's cluster.
  Defaults are those of the authors' quantitative runs (``main.py``: 11 centres, 20 references
  per centre, k = 1 → 20 backward passes per image, the LPI supplement's (Yang et al., 2023) "20 references"); the authors' k-means
  settings are ``n_init=3, max_iter=600``. A cluster with fewer than R members gets every member
  as its own reference and its remaining rows are filled with copies of its first member at
  weight 0 (recorded in ``attrs["padded_rows"]``), so the layout stays rectangular.

* ``"feature_stats"`` — not images but the per-element mean and standard deviation of the
  activations at the layers IBA and InputIBA place their bottleneck (`FEATURE_LAYERS`), with the
  share of images in which each element is nonzero. `build_feature_statistics` computes them; see
  its docstring.

k-means here is Lloyd's algorithm in float64 torch on the CPU, k-means++ seeding from a seeded
`torch.Generator`, at most ``iterations`` rounds (it stops early once no label changes, which is
what further rounds would also give), best of ``restarts`` by inertia. An emptied cluster is
re-seeded at the point farthest from its current centre, deterministically.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from attrflow.methods._batching import check_max_batch, evaluation_mode
from attrflow.methods._bottleneck import LayerStatistics  # what a feature_stats store holds per layer
from attrflow.methods.lpi import estimated_centres, squared_distances
from attrflow.models.layers import STAGES, prefix_tokens, resolve_layer, tokens_to_grid

if TYPE_CHECKING:
    from attrflow.data.sample_store import SampleSet

KINDS = ("train_pool", "lpi")


def build_references(
    kind: str,
    model: torch.nn.Module,
    train: SampleSet,
    *,
    seed: int,
    max_batch: int = 256,
    **params: Any,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(images (K, C, H, W) float32, weights (K,) float64 summing to 1, attrs) for ``kind``.

    ``attrs`` holds plain JSON types only (indices and ids of the chosen train images, cluster
    statistics) so the caller can store them beside the arrays.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown reference kind {kind!r}; use one of {', '.join(KINDS)}")
    if len(train) == 0:
        raise ValueError(f"{kind} references need a train split, and it holds no images")
    check_max_batch(max_batch)
    builder = _train_pool if kind == "train_pool" else _lpi_references
    signature = inspect.signature(builder).parameters.values()
    known = [p.name for p in signature if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"{kind} references: unknown parameter(s) {unknown}; known: {known}")
    generator = torch.Generator().manual_seed(int(seed))
    if kind == "train_pool":
        return _train_pool(train, generator, **params)
    return _lpi_references(model, train, generator, max_batch, **params)


def _train_pool(
    train: SampleSet, generator: torch.Generator, *, pool_size: int = 256
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    _check_positive_int("train_pool", "pool_size", pool_size)
    n = len(train)
    chosen = torch.randperm(n, generator=generator)[: min(pool_size, n)].sort().values.numpy()
    weights = np.full(len(chosen), 1.0 / len(chosen))
    attrs = {
        "pool_size": int(len(chosen)),
        "train_indices": chosen.tolist(),
        "train_ids": [train.ids[i] for i in chosen],
    }
    return train.images[chosen], weights, attrs


def _lpi_references(
    model: torch.nn.Module,
    train: SampleSet,
    generator: torch.Generator,
    max_batch: int,
    *,
    clusters: int = 11,
    sub_clusters: int = 20,
    iterations: int = 600,
    restarts: int = 3,
    max_train: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    for name, value in [
        ("clusters", clusters),
        ("sub_clusters", sub_clusters),
        ("iterations", iterations),
        ("restarts", restarts),
    ]:
        _check_positive_int("lpi", name, value)
    candidates = np.arange(len(train))
    if max_train is not None:
        _check_positive_int("lpi", "max_train", max_train)
        if max_train < len(train):
            drawn = torch.randperm(len(train), generator=generator)[:max_train]
            candidates = drawn.sort().values.numpy()
    if clusters > len(candidates):
        raise ValueError(
            f"lpi references: parameter clusters is {clusters} but only {len(candidates)} train "
            "images are available"
        )
    logits = train_logits(model, train.images[candidates], max_batch)
    fit_settings = dict(generator=generator, iterations=iterations, restarts=restarts)
    global_fit = kmeans(logits, clusters, **fit_settings)

    rows: list[int] = []  # positions into `candidates`, cluster-major
    weights: list[float] = []
    reference_cluster: list[int] = []
    sub_sizes: list[list[int]] = []
    padded = 0
    total = len(candidates)
    for c in range(clusters):
        members = torch.nonzero(global_fit.labels == c).squeeze(1)
        if len(members) == 0:
            raise ValueError(
                f"lpi references: cluster {c} of parameter clusters={clusters} is empty; the train "
                "split has fewer distinct logit vectors than clusters"
            )
        member_logits = logits[members]
        if len(members) >= sub_clusters:
            local = kmeans(member_logits, sub_clusters, **fit_settings)
            nearest = squared_distances(local.centres, member_logits).argmin(dim=1)
            counts = torch.bincount(local.labels, minlength=sub_clusters)
            chosen = members[nearest].tolist()
            sizes = counts.tolist()
        else:  # too few members for R sub-clusters: each member is its own, the rest weigh 0
            chosen = members.tolist() + [int(members[0])] * (sub_clusters - len(members))
            sizes = [1] * len(members) + [0] * (sub_clusters - len(members))
            padded += sub_clusters - len(members)
        rows += chosen
        weights += [size / total for size in sizes]
        reference_cluster += [c] * sub_clusters
        sub_sizes.append(sizes)

    weights_np = np.asarray(weights, dtype=np.float64)
    weights_np /= weights_np.sum()  # exact 1 despite float division
    train_indices = candidates[np.asarray(rows)]
    agreement = _centre_estimate_agreement(
        logits, global_fit.labels, rows, weights_np, clusters, sub_clusters
    )
    attrs = {
        "representation": "logits",
        "clusters": int(clusters),
        "sub_clusters": int(sub_clusters),
        "train_size": int(total),
        "train_indices": train_indices.tolist(),
        "train_ids": [train.ids[i] for i in train_indices],
        "reference_cluster": reference_cluster,
        "cluster_sizes": torch.bincount(global_fit.labels, minlength=clusters).tolist(),
        "sub_cluster_sizes": sub_sizes,
        "cluster_centres": global_fit.centres.tolist(),
        "inertia": float(global_fit.inertia),
        "kmeans": {"init": "k-means++", "iterations": int(iterations), "restarts": int(restarts)},
        "padded_rows": int(padded),
        "centre_estimate_agreement": agreement,
    }
    return train.images[train_indices], weights_np, attrs


def _centre_estimate_agreement(
    logits: torch.Tensor,
    labels: torch.Tensor,
    rows: list[int],
    weights: np.ndarray,
    clusters: int,
    sub_clusters: int,
) -> float:
    """Share of train images that `lpi`'s centre estimate puts in their own k-means cluster.

    The method only sees the references and their weights, so it estimates each cluster's
    centre as the weight-averaged logits of the cluster's references (exact if each reference
    sat on its sub-centre, since a k-means centre is the size-weighted mean of its sub-centres).
    This records how well that estimate reproduces the k-means assignment.
    """
    centres = estimated_centres(logits[rows], torch.as_tensor(weights), clusters, sub_clusters)
    assigned = squared_distances(logits, centres).argmin(dim=1)
    return float((assigned == labels).double().mean())


def train_logits(model: torch.nn.Module, images: np.ndarray, max_batch: int) -> torch.Tensor:
    """The model's logits for ``images`` (N, C, H, W), float64 on the CPU, in chunks."""
    device, dtype = _model_device_dtype(model)
    out = []
    with evaluation_mode(model), torch.no_grad():
        for start in range(0, len(images), max_batch):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + max_batch]))
            out.append(model(chunk.to(device=device, dtype=dtype)).double().cpu())
    logits = torch.cat(out)
    bad = ~torch.isfinite(logits).all(dim=1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(f"train image {first}: the model's logits are not finite")
    return logits


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


class KMeansFit:
    """Centres (k, D), labels (N,) and inertia (Σ squared distance to the own centre)."""

    def __init__(self, centres: torch.Tensor, labels: torch.Tensor, inertia: float) -> None:
        self.centres = centres
        self.labels = labels
        self.inertia = inertia


def kmeans(
    points: torch.Tensor,
    k: int,
    *,
    generator: torch.Generator,
    iterations: int = 600,
    restarts: int = 3,
) -> KMeansFit:
    """Lloyd's k-means with k-means++ seeding; the best of ``restarts`` runs by inertia."""
    points = points.detach().to(device="cpu", dtype=torch.float64)
    if points.dim() != 2 or len(points) < k:
        raise ValueError(f"k-means of {tuple(points.shape)} points into {k} clusters is impossible")
    best: KMeansFit | None = None
    for _ in range(restarts):
        fit = _lloyd(points, _kmeans_plus_plus(points, k, generator), iterations)
        if best is None or fit.inertia < best.inertia:
            best = fit
    assert best is not None
    return best


def _kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Arthur & Vassilvitskii's seeding: each next centre drawn ∝ squared distance to the
    nearest centre chosen so far."""
    n = len(points)
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [points[first]]
    nearest_sq = ((points - points[first]) ** 2).sum(dim=1)
    for _ in range(1, k):
        total = float(nearest_sq.sum())
        if total > 0:
            pick = int(torch.multinomial(nearest_sq / total, 1, generator=generator))
        else:  # every point coincides with a centre: any point will do
            pick = int(torch.randint(n, (1,), generator=generator))
        centres.append(points[pick])
        nearest_sq = torch.minimum(nearest_sq, ((points - points[pick]) ** 2).sum(dim=1))
    return torch.stack(centres)


def _lloyd(points: torch.Tensor, centres: torch.Tensor, iterations: int) -> KMeansFit:
    k = len(centres)
    labels = squared_distances(points, centres).argmin(dim=1)
    for _ in range(iterations):
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, labels, points)  # CPU: deterministic
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
        for empty in torch.nonzero(counts == 0).squeeze(1).tolist():
            own_sq = ((points - centres[labels]) ** 2).sum(dim=1)
            far = int(own_sq.argmax())
            centres[empty] = points[far]
            labels[far] = empty
        new_labels = squared_distances(points, centres).argmin(dim=1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    inertia = float(((points - centres[labels]) ** 2).sum())
    return KMeansFit(centres, labels, inertia)


def _check_positive_int(kind: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{kind} references: parameter {name} must be an integer >= 1; got {value!r}"
        )


# ---------------------------------------------------------------------------------------------
# Feature statistics for the information-bottleneck methods (IBA, InputIBA).

FEATURE_LAYERS = ("default", *STAGES)
DEFAULT_FEATURE_TRAIN = 5000  # the IBA README estimates from 5000 images (10 000 recommended)


def build_feature_statistics(
    model: torch.nn.Module,
    train: SampleSet,
    *,
    seed: int,
    max_batch: int = 256,
    max_train: int = DEFAULT_FEATURE_TRAIN,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """({layer name: {"mean", "std", "nonzero"}}, attrs) over at most ``max_train`` train images.

    IBA's variational prior Q(Z) = N(μ_R, σ_R²) is estimated per feature element (channel ×
    position), as Schulz et al.'s estimator does, at every layer name of `FEATURE_LAYERS`, so
    that one cached store serves ``iba`` and its layerwise variants. ``std`` is the unbiased
    (n − 1) standard deviation; ``nonzero`` is the share of images in which the element is not 0
    (IBA calls an element active when it is nonzero in more than 1 % of images). Arrays are
    (C, h, w) float32; ViT token outputs are reshaped to their patch grid first (prefix tokens
    dropped). A layer name the model cannot resolve (no CAM layer), or whose output is not a
    feature map, is listed in ``attrs["unavailable"]`` with the reason instead of failing the
    job: a method asking for it then names that reason.

    Sums run in float64, merged chunk by chunk with Chan et al.'s pairwise update, so neither
    the result nor its precision depends on ``max_batch``.
    """
    check_max_batch(max_batch)
    _check_positive_int("feature_stats", "max_train", max_train)
    if len(train) == 0:
        raise ValueError("feature_stats references need a train split, and it holds no images")
    generator = torch.Generator().manual_seed(int(seed))
    candidates = np.arange(len(train))
    if max_train < len(train):
        candidates = torch.randperm(len(train), generator=generator)[:max_train].sort().values.numpy()

    paths: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    for name in FEATURE_LAYERS:
        try:
            paths[name] = resolve_layer(model, name)[0]
        except ValueError as why:
            unavailable[name] = str(why)
    net = getattr(model, "net", model)
    moments = {path: _RunningMoments() for path in dict.fromkeys(paths.values())}
    captured: dict[str, torch.Tensor] = {}

    def capture(path: str):
        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.dim() in (3, 4):
                captured[path] = tokens_to_grid(output, prefix_tokens(net)).detach()

        return hook

    handles = [net.get_submodule(path).register_forward_hook(capture(path)) for path in moments]
    device, dtype = _model_device_dtype(model)
    try:
        with evaluation_mode(model), torch.no_grad():
            for start in range(0, len(candidates), max_batch):
                chunk = np.ascontiguousarray(train.images[candidates[start : start + max_batch]])
                captured.clear()
                model(torch.from_numpy(chunk).to(device=device, dtype=dtype))
                for path, running in moments.items():
                    if path in captured:
                        running.add(captured[path])
    finally:
        for handle in handles:
            handle.remove()

    stats: dict[str, dict[str, np.ndarray]] = {}
    for name, path in paths.items():
        running = moments[path]
        if running.count == 0:
            unavailable[name] = f"layer {name!r} ({path!r}) does not output a (n, C, h, w) feature map or tokens"
            continue
        stats[name] = running.arrays()
    attrs = {
        "layers": {name: paths[name] for name in stats},
        "unavailable": unavailable,
        "train_size": int(len(candidates)),
        "train_indices": candidates.tolist(),
        "std": "unbiased (n - 1), per element (channel x position)",
    }
    return stats, attrs


class _RunningMoments:
    """Count, mean, sum of squared deviations and nonzero count per element, in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None
        self.nonzero: torch.Tensor | None = None

    def add(self, batch: torch.Tensor) -> None:
        batch = batch.double()
        k = batch.shape[0]
        batch_mean = batch.mean(dim=0)
        batch_squares = ((batch - batch_mean) ** 2).sum(dim=0)
        batch_nonzero = (batch != 0).sum(dim=0).double()
        if self.mean is None:
            self.count, self.mean, self.squares, self.nonzero = k, batch_mean, batch_squares, batch_nonzero
            return
        total = self.count + k
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (k / total)
        self.squares = self.squares + batch_squares + delta**2 * (self.count * k / total)
        self.nonzero = self.nonzero + batch_nonzero
        self.count = total

    def arrays(self) -> dict[str, np.ndarray]:
        assert self.mean is not None and self.squares is not None and self.nonzero is not None
        variance = self.squares / max(self.count - 1, 1)
        return {
            "mean": self.mean.float().cpu().numpy(),
            "std": variance.sqrt().float().cpu().numpy(),
            "nonzero": (self.nonzero / self.count).float().cpu().numpy(),
        }
