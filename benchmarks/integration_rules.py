"""Completeness residual of IG against gradient evaluations, per integration rule, vs Captum.

    .venv/bin/python benchmarks/integration_rules.py --models embedded_cnn --images 16
    .venv/bin/python benchmarks/integration_rules.py --models resnet18 --images 2 --max-steps 48 \
        --max-batch 16
    options: [--max-batch 64] [--max-steps 512] [--device cpu]

Issue 3 asks, for each integration rule, how many gradient evaluations IG needs for a
completeness residual below 1 %, with the goal of half what Captum's default needs. For every
rule of attrflow's `integrated_gradients` (left, right, trapezoid, gausslegendre; black
baseline, target = the predicted class, F = the target logit) and for Captum's
`IntegratedGradients` default (method "gausslegendre"; its default n_steps is 50) it computes

    |Σ maps − (F(x) − F(x′))| / |F(x) − F(x′)|

per image over a geometric grid of step counts, and reports the median over the images against
gradient evaluations (attrflow: the WrappedModel's backward_samples per image, so the trapezoid's
B + 1 points count; Captum: n_steps). A rule's *need* is the first grid point from which the
median stays below 1 % at the next grid point too (one lucky crossing does not count); the rule
stops there. Weights matter here: the embedded CNN is the trained one that
benchmarks/workflow_timing.py leaves in benchmarks/out (random weights otherwise, and the table
says so); resnet18 has random weights (no downloads on this machine).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from _bench import MODELS, add_common_arguments, description, images_for, setup
from attrflow.methods import call_method, get_method
from attrflow.methods.integrated_gradients import RULES

GRID = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
CAPTUM_DEFAULT_STEPS = 50
TOLERANCE = 0.01


def sweep(residual_at, grid: list[int]) -> tuple[list[tuple[int, float]], int | None]:
    """Median relative residuals (evaluations, median) along the grid until two consecutive
    points are below TOLERANCE; the evaluations of the first of them (None if never)."""
    curve: list[tuple[int, float]] = []
    for steps in grid:
        curve.append(residual_at(steps))
        if len(curve) >= 2 and curve[-1][1] < TOLERANCE and curve[-2][1] < TOLERANCE:
            return curve, curve[-2][0]
    return curve, None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="embedded_cnn")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=512)
    parser.add_argument("--max-batch", type=int, default=64)
    add_common_arguments(parser)
    args = parser.parse_args()
    from captum.attr import IntegratedGradients

    device = setup(args)
    grid = [s for s in GRID if s <= args.max_steps]
    ig = get_method("integrated_gradients")
    print(
        f"{description(device)}, {args.images} images, black baseline, median of "
        f"|Σ maps − ΔF| / |ΔF| over the images, need = first of two grid points below {TOLERANCE:.0%}\n"
    )
    for name in args.models.split(","):
        model, side, origin = MODELS[name]()
        model = model.to(device)
        x = images_for(origin, args.images, side).to(device)
        with torch.no_grad():
            target = model(x).argmax(1)
            output_delta = (
                (model(x) - model(torch.zeros_like(x))).gather(1, target[:, None]).squeeze(1)
            )

        def ours(rule: str):
            def residual_at(steps: int) -> tuple[int, float]:
                model.reset_counters()
                result = call_method(
                    ig, model, x, target, {"steps": steps, "rule": rule}, max_batch=args.max_batch
                )
                relative = (
                    result.diagnostics["completeness_residual"]
                    / result.diagnostics["output_delta"].abs()
                )
                return model.backward_samples // args.images, statistics.median(relative.tolist())

            return residual_at

        captum = IntegratedGradients(model)

        def captum_residual_at(steps: int) -> tuple[int, float]:
            _, delta = captum.attribute(
                x,
                baselines=torch.zeros_like(x),
                target=target,
                n_steps=steps,
                internal_batch_size=args.max_batch,
                return_convergence_delta=True,
            )
            return steps, statistics.median((delta.abs() / output_delta.abs()).tolist())

        curves: dict[str, list[tuple[int, float]]] = {}
        needs: dict[str, int | None] = {}
        for rule in RULES:
            curves[rule], needs[rule] = sweep(ours(rule), grid)
        label = "Captum default (gausslegendre)"
        curves[label], needs[label] = sweep(captum_residual_at, grid)
        at_default = captum_residual_at(CAPTUM_DEFAULT_STEPS)[1]

        print(f"### {name} ({origin}, {side}², median |ΔF| = {output_delta.abs().median():.3g})\n")
        print("median residual at B steps (B gradient evaluations; trapezoid B + 1):\n")
        print("| rule \\ B | " + " | ".join(str(s) for s in grid) + " |")
        print("|---|" + "---|" * len(grid))
        for rule, curve in curves.items():
            row = [f"{value:.2%}" for _, value in curve]
            print(f"| {rule} | " + " | ".join(row + [""] * (len(grid) - len(row))) + " |")
        captum_need = needs[label]
        print(
            f"\nCaptum's default (n_steps {CAPTUM_DEFAULT_STEPS}): median residual {at_default:.2%}.\n"
        )
        print(
            "| rule | evaluations for median residual < 1 % | / Captum default's need | "
            f"/ Captum's default {CAPTUM_DEFAULT_STEPS} steps |"
        )
        print("|---|---|---|---|")
        for rule, need in needs.items():
            if need is None:
                print(f"| {rule} | > {curves[rule][-1][0]} | – | – |")
                continue
            ratio = f"{need / captum_need:.2f}" if captum_need else "–"
            print(f"| {rule} | {need} | {ratio} | {need / CAPTUM_DEFAULT_STEPS:.2f} |")
        print(flush=True)


if __name__ == "__main__":
    main()
