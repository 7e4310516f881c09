"""Batched gradient and output evaluation over many points per sample, shared by methods.

Path and sampling methods (IG, BlurIG, Expected Gradients, UNI, SmoothGrad) all evaluate the
model at ``n_points`` points per sample and sum weighted input gradients per sample. Looping over
steps in Python and running one tiny batch per step wastes the device; stacking all n·P points
at once runs out of memory for large step counts. Here the (sample, point) grid is flattened
sample-major and cut into chunks of at most ``max_batch`` model inputs. Each chunk builds its
points on the fly (``points(sample_idx, point_idx)``), runs one forward and one backward on the
sum of its target logits, weighs the per-point gradients exactly (``weigh``), and adds them to
their samples. Chunk boundaries need not align with samples, so every chunk is full.

Per-sample sums are formed by slicing and reshaping (a sample's points are contiguous in the
flat order), never with ``index_add_``: that uses atomics on CUDA and would make maps differ
bit-wise between identical runs.

**Differentiable maps.** Inside `differentiable_maps()` the methods registered with
``differentiable=True`` return maps that carry a graph to their input x, so that ∇_x of any
function of the map (an attack objective, Ghorbani et al. 2019) is exact double back-propagation.
Two things change, and nothing else: `validate_batch` keeps x attached, and
`accumulate_gradients` builds all n·P points with their graph to x (inputs-sized tensors only),
takes the per-point input gradients in chunks of ``max_batch`` without keeping any chunk's graph,
and, when the caller back-propagates into those gradients, recomputes one chunk at a time with
``create_graph=True`` (half a chunk: a double-backprop graph is about twice a backward's) and
returns the Hessian-vector product (`_PointGradients`). So at most ``max_batch`` points'
activations are alive at any time, in both passes. Outside the context
(the default) every line of the usual path runs as before: stored maps are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

PointBuilder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(sample_idx (k,), point_idx (k,)) -> model inputs (k, C, H, W) for those grid cells."""

GradientWeigher = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(grads (k, C, H, W), sample_idx (k,), point_idx (k,)) -> contributions (k, C, H, W)."""


_DIFFERENTIABLE: ContextVar[bool] = ContextVar("attrflow_differentiable_maps", default=False)


@contextmanager
def differentiable_maps() -> Iterator[None]:
    """Within this context, methods registered ``differentiable=True`` return maps with a graph
    to x (module doc); `attrflow.methods.call_method` refuses the others with
    `MapsNotDifferentiable`. Only attacks need it; the workflow's maps never use it."""
    token = _DIFFERENTIABLE.set(True)
    try:
        yield
    finally:
        _DIFFERENTIABLE.reset(token)


def maps_differentiable() -> bool:
    """Whether the caller asked for maps with a graph to x (`differentiable_maps`)."""
    return _DIFFERENTIABLE.get()


@dataclass
class PathGradients:
    """What one sweep over a (sample, point) grid yields.

    ``gradient_sums`` (n, C, H, W): Σ_p weigh(∇_x logit_target(point p)) per sample.
    ``target_logits`` / ``target_probs`` (n, P): the target's logit and softmax probability at
    every point, in point order.
    """

    gradient_sums: torch.Tensor
    target_logits: torch.Tensor
    target_probs: torch.Tensor


@dataclass
class PathOutputs:
    """Target logits and softmax probabilities (n, P) at every grid point (no gradients)."""

    target_logits: torch.Tensor
    target_probs: torch.Tensor


def validate_batch(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a method's inputs; return x detached (maps must not carry a caller's graph) and
    ``target`` as int64 on x's device.

    Errors name the parameter and the first offending sample, so a bad sample in a large
    shard can be found. Inside `differentiable_maps` x is returned attached.
    """
    if x.dim() != 4:
        raise ValueError(f"parameter x must be (n, C, H, W); got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("parameter x holds no samples")
    target = torch.as_tensor(target, device=x.device)
    if target.dim() != 1 or target.shape[0] != x.shape[0]:
        raise ValueError(
            f"parameter target must have shape ({x.shape[0]},) to match x; got {tuple(target.shape)}"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"parameter target must hold integer class indices; got {target.dtype}")
    finite = torch.isfinite(x).flatten(1).all(dim=1)
    if not bool(finite.all()):
        sample = int((~finite).nonzero()[0, 0])
        raise ValueError(f"sample {sample}: parameter x holds a non-finite value (NaN or inf)")
    num_classes = int(model.num_classes)
    out_of_range = (target < 0) | (target >= num_classes)
    if bool(out_of_range.any()):
        sample = int(out_of_range.nonzero()[0, 0])
        raise ValueError(
            f"sample {sample}: parameter target is {int(target[sample])}, outside "
            f"[0, {num_classes}) for model {getattr(model, 'name', '')!r}"
        )
    return (x if maps_differentiable() else x.detach()), target.long()


def check_max_batch(max_batch: int) -> int:
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"parameter max_batch must be an integer >= 1; got {max_batch!r}")
    return max_batch


@contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluate in eval mode (BatchNorm/dropout must not couple or perturb the points of a
    chunk) and hand the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _chunks(total: int, max_batch: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, max_batch):
        yield start, min(start + max_batch, total)


def _grid_indices(start: int, stop: int, n_points: int, device: torch.device):
    flat = torch.arange(start, stop, device=device)
    return flat // n_points, flat % n_points


def sums_per_sample(values: torch.Tensor, start: int, n_points: int) -> torch.Tensor:
    """Sum the rows of a chunk that starts at flat index ``start`` sample by sample.

    Returns one row per sample the chunk touches, in order: a partial head sample, whole
    samples (one reshape), a partial tail sample.
    """
    count = values.shape[0]
    offset = start % n_points
    pieces = []
    done = 0
    if offset:
        done = min(count, n_points - offset)
        pieces.append(values[:done].sum(dim=0, keepdim=True))
    whole = (count - done) // n_points
    if whole:
        block = values[done : done + whole * n_points]
        pieces.append(block.reshape(whole, n_points, *values.shape[1:]).sum(dim=1))
        done += whole * n_points
    if done < count:
        pieces.append(values[done:].sum(dim=0, keepdim=True))
    return torch.cat(pieces)


def accumulate_gradients(
    model: torch.nn.Module,
    target: torch.Tensor,
    *,
    n_points: int,
    points: PointBuilder,
    weigh: GradientWeigher,
    max_batch: int,
) -> PathGradients:
    """Sum weighted input gradients of the target logit over ``n_points`` points per sample.

    ``target`` (n,) gives the class per sample; every point of sample s explains target[s].
    One forward and one backward per chunk of at most ``max_batch`` points; the model's
    parameters are never differentiated. Methods that draw random points must make
    ``points`` depend only on (sample, point) (e.g. draw all noise up front, or per sample
    from a seeded generator) so that maps do not depend on ``max_batch``.
    """
    check_max_batch(max_batch)
    if maps_differentiable():
        return _differentiable_gradients(model, target, n_points, points, weigh, max_batch)
    n = int(target.shape[0])
    total = n * n_points
    sums: torch.Tensor | None = None
    logits_flat: list[torch.Tensor] = []
    probs_flat: list[torch.Tensor] = []
    with evaluation_mode(model), torch.enable_grad():
        for start, stop in _chunks(total, max_batch):
            sample_idx, point_idx = _grid_indices(start, stop, n_points, target.device)
            with torch.no_grad():
                inputs = points(sample_idx, point_idx)
            inputs = inputs.detach().requires_grad_(True)
            logits = model(inputs)
            index = target[sample_idx].unsqueeze(1)
            chosen = logits.gather(1, index).squeeze(1)
            (grads,) = torch.autograd.grad(chosen.sum(), inputs)
            with torch.no_grad():
                contributions = sums_per_sample(
                    weigh(grads, sample_idx, point_idx), start, n_points
                )
                if sums is None:
                    sums = torch.zeros(
                        (n, *contributions.shape[1:]), dtype=grads.dtype, device=grads.device
                    )
                first = start // n_points
                sums[first : first + contributions.shape[0]] += contributions
                logits_flat.append(chosen.detach())
                probs_flat.append(torch.softmax(logits.detach(), dim=1).gather(1, index).squeeze(1))
    if sums is None:
        raise ValueError("accumulate_gradients needs at least one sample and one point")
    return PathGradients(
        gradient_sums=sums,
        target_logits=torch.cat(logits_flat).reshape(n, n_points),
        target_probs=torch.cat(probs_flat).reshape(n, n_points),
    )


class _PointGradients(torch.autograd.Function):
    """∇_p logit_target(p) for every row p of ``points`` (m, C, H, W), in chunks of ``max_batch``.

    Forward: one forward and one backward per chunk, no graph kept. Backward (given the
    cotangent u of the gradients): per chunk of max(1, max_batch // 2) points, the gradient
    again with ``create_graph=True`` and then the Hessian-vector product H u — one chunk's
    double-backprop graph at a time. The target logits and probabilities (m,) come back too,
    as constants (diagnostics only).
    """

    @staticmethod
    def forward(ctx, points, flat_target, model, max_batch):  # noqa: ANN001, ANN205
        grads, logits, probs = [], [], []
        with evaluation_mode(model), torch.enable_grad():
            for start, stop in _chunks(points.shape[0], max_batch):
                inputs = points[start:stop].detach().requires_grad_(True)
                out = model(inputs)
                index = flat_target[start:stop].unsqueeze(1)
                chosen = out.gather(1, index).squeeze(1)
                (grad,) = torch.autograd.grad(chosen.sum(), inputs)
                grads.append(grad)
                logits.append(chosen.detach())
                probs.append(torch.softmax(out.detach(), dim=1).gather(1, index).squeeze(1))
                del inputs, out, chosen
        ctx.save_for_backward(points, flat_target)
        ctx.model, ctx.max_batch = model, max_batch
        logits_t, probs_t = torch.cat(logits), torch.cat(probs)
        ctx.mark_non_differentiable(logits_t, probs_t)
        return torch.cat(grads), logits_t, probs_t

    @staticmethod
    def backward(ctx, grad_of_grads, _logits, _probs):  # noqa: ANN001, ANN205
        points, flat_target = ctx.saved_tensors
        result = torch.zeros_like(points)
        # A double-backprop graph holds about twice the activations of a plain backward pass:
        # half the chunk keeps this pass within the memory one chunk of max_batch points takes.
        with evaluation_mode(ctx.model), torch.enable_grad():
            for start, stop in _chunks(points.shape[0], max(1, ctx.max_batch // 2)):
                inputs = points[start:stop].detach().requires_grad_(True)
                out = ctx.model(inputs)
                chosen = out.gather(1, flat_target[start:stop].unsqueeze(1)).sum()
                (grad,) = torch.autograd.grad(chosen, inputs, create_graph=True)
                if grad.requires_grad:  # else the gradient is constant in p (a linear model)
                    (hvp,) = torch.autograd.grad(
                        grad, inputs, grad_outputs=grad_of_grads[start:stop], allow_unused=True
                    )
                    if hvp is not None:
                        result[start:stop] = hvp
                del inputs, out, chosen, grad
        return result, None, None, None


def _differentiable_gradients(
    model: torch.nn.Module,
    target: torch.Tensor,
    n_points: int,
    points: PointBuilder,
    weigh: GradientWeigher,
    max_batch: int,
) -> PathGradients:
    """`accumulate_gradients` inside `differentiable_maps`: the same sums, with a graph to
    whatever ``points`` and ``weigh`` read (x, the baseline), memory bounded by ``max_batch``."""
    n = int(target.shape[0])
    if n * n_points == 0:
        raise ValueError("accumulate_gradients needs at least one sample and one point")
    sample_idx, point_idx = _grid_indices(0, n * n_points, n_points, target.device)
    with torch.enable_grad():
        inputs = points(sample_idx, point_idx)
        grads, logits, probs = _PointGradients.apply(
            inputs, target[sample_idx], model, max_batch
        )
        contributions = weigh(grads, sample_idx, point_idx)
        sums = contributions.reshape(n, n_points, *contributions.shape[1:]).sum(dim=1)
    return PathGradients(
        gradient_sums=sums,
        target_logits=logits.reshape(n, n_points),
        target_probs=probs.reshape(n, n_points),
    )


def evaluate_outputs(
    model: torch.nn.Module,
    target: torch.Tensor,
    *,
    n_points: int,
    points: PointBuilder,
    max_batch: int,
) -> PathOutputs:
    """Target logits and probabilities at ``n_points`` points per sample, forward passes only."""
    check_max_batch(max_batch)
    n = int(target.shape[0])
    logits_flat: list[torch.Tensor] = []
    probs_flat: list[torch.Tensor] = []
    with evaluation_mode(model), torch.no_grad():
        for start, stop in _chunks(n * n_points, max_batch):
            sample_idx, point_idx = _grid_indices(start, stop, n_points, target.device)
            logits = model(points(sample_idx, point_idx))
            index = target[sample_idx].unsqueeze(1)
            logits_flat.append(logits.gather(1, index).squeeze(1))
            probs_flat.append(torch.softmax(logits, dim=1).gather(1, index).squeeze(1))
    return PathOutputs(
        target_logits=torch.cat(logits_flat).reshape(n, n_points),
        target_probs=torch.cat(probs_flat).reshape(n, n_points),
    )


def input_gradients(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, *, max_batch: int
) -> PathGradients:
    """∇_x logit_target at x itself (one point per sample), in chunks of ``max_batch``."""
    return accumulate_gradients(
        model,
        target,
        n_points=1,
        points=lambda sample_idx, point_idx: x[sample_idx],
        weigh=lambda grads, sample_idx, point_idx: grads,
        max_batch=max_batch,
    )


def path_diagnostics(
    maps: torch.Tensor,
    baselines: torch.Tensor,
    alphas: torch.Tensor,
    path_logits: torch.Tensor,
    path_probs: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """What every path method stores: the path (alphas in [0, 1], shared by all samples, with the
    target logit and probability at each point, first = baseline, last = input) and the
    completeness residual |Σ maps − (F(x) − F(x'))| in logits."""
    output_delta = path_logits[:, -1] - path_logits[:, 0]
    return {
        "baselines": baselines,
        "path_alphas": alphas.expand(maps.shape[0], -1).contiguous(),
        "path_logits": path_logits,
        "path_probs": path_probs,
        "output_delta": output_delta,
        "completeness_residual": (maps.flatten(1).sum(dim=1) - output_delta).abs(),
    }
