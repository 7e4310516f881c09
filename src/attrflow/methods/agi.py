"""Adversarial Gradient Integration (Pan, Li, Zhu, IJCAI 2021).

AGI needs no baseline: for each false class j it walks from x along the steepest ascent of f_j
until the model predicts j (or ``steps`` run out), and integrates the explained class's gradient
along that walk, backwards from the adversarial end to x:

    AGI(x) = Σ_j Σ_t −∇f_i(x_t) ⊙ (x_{t+1} − x_t),
    x_{t+1} = clip_[0,1](x_t + ε · sign(∇f_j(x_t))),

with i the explained class (``target``), stopping walker j at the first x_t with
argmax f(x_t) = j. This is the paper's accumulating path (normalising ∇f_j inside the sign, as
the paper writes it, changes nothing). The authors' code instead builds every step from the
original x — x_{t+1} = clip(x + ε·sign(∇f_j(x_t))) and Δ = x_{t+1} − x — so its "path" never
leaves the ε-box around x; ``restart_from_input: true`` reproduces that. f is the softmax
PROBABILITY by default, as in the paper and its code (``output: logit`` follows LPI's
re-implementation); the stored diagnostics use the same output. Pixels are clipped to [0, 1]
(our inputs are pixel space, like the authors' models with normalisation inside).

False classes: ``false_classes`` of them per image, drawn uniformly without replacement from the
classes other than ``target`` with the runtime generator (the authors' quantitative scripts
draw 1 or 5 at random; the LPI supplement (Yang et al., 2023) compares with "one targeted adversarial class" and 20 steps, ε = 0.05
as in the code). Maps are summed over the false classes, as in the paper and code.

Batching: every (image, false class) pair is a walker; walkers are cut into chunks of at most
``max_batch`` that step together, one forward and two backward passes (∇f_j, ∇f_i) per step,
with walkers that have reached their class dropped from later forwards. A walker's path depends
only on its own image and class, so maps do not depend on ``max_batch``.

Diagnostics: ``adversarial_classes``, ``attack_steps`` (steps walked), ``attack_succeeded``
(n, false_classes); ``baselines`` — the walkers' end points averaged over false classes;
``path_alphas``, ``path_logits``, ``path_probs`` (n, steps + 1) — the explained class's output
at each step averaged over false classes (a finished walker keeps its end value), ordered from the
adversarial end (α = 0) to x (α = 1) like an IG path; ``output_delta`` Σ_j [f_i(x) − f_i(x_end,j)]
and ``completeness_residual`` |Σ maps − output_delta| (with sign steps of size ε the left-point
sum is coarse, so AGI claims no completeness).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated, Literal

import torch

from attrflow.methods._batching import check_max_batch, evaluation_mode, validate_batch
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, register_method
from attrflow.params import Doc, Ge, Gt



@dataclass
class _Walk:
    """What a chunk of walkers produced; first dimension = walkers."""

    attributions: torch.Tensor  # Σ_t −∇f_i ⊙ Δx
    end_points: torch.Tensor
    logits: torch.Tensor  # (w, steps + 1) explained-class logit at x_0 .. x_steps
    probs: torch.Tensor
    steps_walked: torch.Tensor
    succeeded: torch.Tensor


def draw_false_classes(
    target: torch.Tensor, num_classes: int, count: int, generator: torch.Generator | None
) -> torch.Tensor:
    """(n, count) distinct classes ≠ target per image, uniformly at random."""
    scores = torch.rand((target.shape[0], num_classes), generator=generator, device=target.device)
    scores.scatter_(1, target.unsqueeze(1), float("inf"))  # the explained class sorts last
    return scores.argsort(dim=1)[:, :count]


@register_method("agi")
def agi(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    false_classes: Annotated[
        int,
        Ge(1),
        Doc(
            "adversarial target classes per image (the LPI supplement (Yang et al., 2023): "
            "one); maps sum over them"
        ),
    ] = 1,
    steps: Annotated[
        int,
        Ge(1),
        Doc(
            "maximum adversarial steps per false class (the LPI supplement (Yang et al., "
            "2023): 20)"
        ),
    ] = 20,
    epsilon: Annotated[
        float,
        Gt(0),
        Doc("L∞ step size in pixel space [0, 1] (authors' code: 0.05)"),
    ] = 0.05,
    output: Annotated[
        Literal["prob", "logit"],
        Doc("f: softmax probability (paper and code) or logit"),
    ] = "prob",
    restart_from_input: Annotated[
        bool,
        Doc("the authors' code: every step starts from x instead of the path"),
    ] = False,
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """AGI of the ``target`` class against ``false_classes`` randomly drawn adversarial classes."""
    x, target = validate_batch(model, x, target)
    _check_false_classes(int(model.num_classes), false_classes)
    check_max_batch(max_batch)
    n = x.shape[0]
    adversarial = draw_false_classes(target, int(model.num_classes), false_classes, generator)
    walker_sample = torch.arange(n, device=x.device).repeat_interleave(false_classes)
    walker_class = adversarial.reshape(-1)

    walks = [
        _walk(
            model,
            x[walker_sample[lo:hi]],
            target[walker_sample[lo:hi]],
            walker_class[lo:hi],
            steps=steps,
            epsilon=epsilon,
            output=output,
            restart_from_input=restart_from_input,
        )
        for lo, hi in _chunks(n * false_classes, max_batch)
    ]
    walk = _Walk(*(torch.cat([getattr(w, f.name) for w in walks]) for f in fields(_Walk)))

    def per_image(values: torch.Tensor) -> torch.Tensor:
        return values.reshape(n, false_classes, *values.shape[1:])

    maps = per_image(walk.attributions).sum(dim=1)
    explained = walk.probs if output == "prob" else walk.logits
    output_delta = (per_image(explained)[:, :, 0] - per_image(explained)[:, :, -1]).sum(dim=1)
    reversed_steps = torch.arange(steps, -1, -1, device=x.device)
    alphas = 1.0 - torch.arange(steps, -1, -1, dtype=x.dtype, device=x.device) / steps
    return Attribution(
        maps=maps,
        diagnostics={
            "adversarial_classes": adversarial,
            "attack_steps": per_image(walk.steps_walked),
            "attack_succeeded": per_image(walk.succeeded),
            "baselines": per_image(walk.end_points).mean(dim=1),
            "path_alphas": alphas.expand(n, -1).contiguous(),
            "path_logits": per_image(walk.logits).mean(dim=1)[:, reversed_steps],
            "path_probs": per_image(walk.probs).mean(dim=1)[:, reversed_steps],
            "output_delta": output_delta,
            "completeness_residual": (maps.flatten(1).sum(dim=1) - output_delta).abs(),
        },
    )


def _check_false_classes(num_classes: int, false_classes: int) -> None:
    """The one check the signature cannot declare: it depends on the model."""
    if false_classes > num_classes - 1:
        raise ValueError(
            f"agi: parameter false_classes is {false_classes} but the model has only "
            f"{num_classes - 1} classes besides the target"
        )


def _chunks(total: int, size: int):
    for lo in range(0, total, size):
        yield lo, min(lo + size, total)


def _walk(
    model: torch.nn.Module,
    start: torch.Tensor,
    explained: torch.Tensor,
    adversarial: torch.Tensor,
    *,
    steps: int,
    epsilon: float,
    output: str,
    restart_from_input: bool,
) -> _Walk:
    """Walk every row of ``start`` towards its ``adversarial`` class; see the module doc."""
    count = start.shape[0]
    position = start.clone()
    attributions = torch.zeros_like(start)
    logits_path = torch.empty((count, steps + 1), dtype=start.dtype, device=start.device)
    probs_path = torch.empty_like(logits_path)
    steps_walked = torch.zeros(count, dtype=torch.int64, device=start.device)
    succeeded = torch.zeros(count, dtype=torch.bool, device=start.device)
    active = torch.arange(count, device=start.device)
    with evaluation_mode(model), torch.enable_grad():
        for step in range(steps + 1):
            if len(active) == 0:
                logits_path[:, step:] = logits_path[:, step - 1 : step]
                probs_path[:, step:] = probs_path[:, step - 1 : step]
                break
            point = position[active].detach().requires_grad_(step < steps)
            logits = model(point)
            probs = torch.softmax(logits, dim=1)
            rows = torch.arange(len(active), device=start.device)
            logits_path[:, step] = logits_path[:, step - 1] if step else 0
            probs_path[:, step] = probs_path[:, step - 1] if step else 0
            logits_path[active, step] = logits.detach()[rows, explained[active]]
            probs_path[active, step] = probs.detach()[rows, explained[active]]
            arrived = logits.detach().argmax(dim=1) == adversarial[active]
            succeeded[active[arrived]] = True
            moving = ~arrived
            if step == steps or not bool(moving.any()):
                active = active[moving]
                continue
            f = probs if output == "prob" else logits
            (towards,) = torch.autograd.grad(
                f[rows, adversarial[active]].sum(), point, retain_graph=True
            )
            (explained_grad,) = torch.autograd.grad(f[rows, explained[active]].sum(), point)
            with torch.no_grad():
                walkers = active[moving]
                origin = start[walkers] if restart_from_input else position[walkers]
                new = (origin + epsilon * towards[moving].sign()).clamp(0.0, 1.0)
                moved_from = start[walkers] if restart_from_input else position[walkers]
                attributions[walkers] -= explained_grad[moving] * (new - moved_from)
                position[walkers] = new
                steps_walked[walkers] += 1
            active = walkers
    return _Walk(attributions, position, logits_path, probs_path, steps_walked, succeeded)
