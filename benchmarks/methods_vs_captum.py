"""Time per image of attrflow's path methods against their compute bound, and IG against Captum.

    .venv/bin/python benchmarks/methods_vs_captum.py                       # timing table
    .venv/bin/python benchmarks/methods_vs_captum.py --part chunking       # IG-1024 memory check

    # as recorded on the shared 2-core CPU (one run per model, CPU-time clock):
    .venv/bin/python benchmarks/methods_vs_captum.py --models embedded_cnn --images 16 \
        --rounds 5 --threads 1 --clock cpu
    .venv/bin/python benchmarks/methods_vs_captum.py --models resnet18 --images 2 --rounds 2 \
        --max-batch 16 --gig-steps 16 --threads 1 --clock cpu
    options: [--models embedded_cnn,resnet18] [--images 16,2] [--rounds 3] [--max-batch 64]
             [--steps 32] [--gig-steps 50] [--eg-k 32] [--device cpu]

Timing (issue 3, "Performance"). For each model (the embedded width-16 CNN at 64², trained if
benchmarks/workflow_timing.py left its weights, and timm resnet18 at 224² with random weights)
it runs, interleaved in one process, `integrated_gradients` (right rule, black baseline,
``steps``), Captum's `IntegratedGradients` (riemann_right, same steps, same internal batch),
`uni` (its defaults), `expected_gradients` with ``eg_k`` references drawn from 32 "train"
images, `guided_ig` (``gig_steps`` steps; PAIR's 200 cost the same per step) and one bare
batched forward+backward pass of ``max_batch`` inputs. The bound of a method is

    gradient evaluations per image (the WrappedModel's backward_samples / images)
      × the bare pass's time per input,

so forward-only passes (path end points, UNI's θ̂ forward) are overhead against it, and UNI's
per-sample parameter gradient counts as one evaluation. Guided IG is sequential in its steps,
so its batches hold only the images (not images × steps): its bound is a bare pass of
``max_batch`` inputs all the same.

Chunking. ``--part chunking`` runs, each in a fresh subprocess, IG on one resnet18 image with
``max_batch`` 16 at 64 and at 1024 steps and reports the wall time and the peak memory above the
state before the call: torch.cuda.max_memory_allocated on a GPU; on a CPU the growth of the
process's peak RSS (resource.getrusage ru_maxrss), an approximate figure (allocator caching,
page granularity). Bounded chunking shows as equal peaks at 64 and 1024 steps.

It prints markdown tables of medians over ``rounds`` rounds and their ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from _bench import (
    MODELS,
    add_common_arguments,
    bare_forward_backward,
    batch_of,
    counted,
    description,
    images_for,
    interleaved,
    resnet18,
    setup,
)
from attrflow.methods import call_method, get_method


def timing(args: argparse.Namespace, device: torch.device) -> None:
    from captum.attr import IntegratedGradients

    images_per_model = dict(zip(args.models.split(","), map(int, args.images.split(","))))
    print(
        f"{description(device, args.clock)}, max_batch {args.max_batch}, median of {args.rounds} interleaved rounds\n"
    )
    print(
        "| model | method | images | grad evals / img | fwd-only / img | ms / img | bound ms / img "
        "| ours / bound | Captum ms / img | ours / Captum |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, n in images_per_model.items():
        model, side, origin = MODELS[name]()
        model = model.to(device)
        x = images_for(origin, n, side).to(device)
        references = images_for(origin, 32, side, split="train", seed=1).to(device)
        with torch.no_grad():
            target = model(x).argmax(1)
        captum_ig = IntegratedGradients(model)
        unit_x = batch_of(x, args.max_batch)
        unit_target = batch_of(target, args.max_batch)

        def method(method_name: str, params: dict, **runtime):
            info = get_method(method_name)
            generator = torch.Generator(device=device)

            def run():
                generator.manual_seed(0)
                return call_method(
                    info,
                    model,
                    x,
                    target,
                    params,
                    generator=generator,
                    max_batch=args.max_batch,
                    **runtime,
                )

            return run

        contenders = {
            "integrated_gradients": method(
                "integrated_gradients", {"steps": args.steps, "rule": "right", "baseline": "black"}
            ),
            "captum_ig": lambda: captum_ig.attribute(
                x,
                target=target,
                n_steps=args.steps,
                method="riemann_right",
                internal_batch_size=args.max_batch,
            ),
            "uni": method("uni", {}),
            f"eg{args.eg_k}": method("expected_gradients", {"k": args.eg_k}, references=references),
            "guided_ig": method("guided_ig", {"steps": args.gig_steps}),
            "bare": lambda: bare_forward_backward(model, unit_x, unit_target),
        }
        # the counted call of each contender is also its warm-up
        passes = {key: counted(model, run) for key, run in contenders.items()}
        seconds = interleaved(contenders, args.rounds, device, warm_up=False, clock=args.clock)
        unit_ms = seconds["bare"] * 1000 / args.max_batch
        labels = {
            "integrated_gradients": f"IG right, {args.steps} steps",
            "uni": "UNI (T 10, B 15)",
            f"eg{args.eg_k}": f"EG k={args.eg_k}",
            "guided_ig": f"Guided IG, {args.gig_steps} steps",
        }
        for key, label in labels.items():
            forwards, backwards = passes[key]
            evals = backwards / n
            ms = seconds[key] * 1000 / n
            bound = evals * unit_ms
            captum = "– | –"
            if key == "integrated_gradients":
                captum_ms = seconds["captum_ig"] * 1000 / n
                captum = f"{captum_ms:.1f} | {ms / captum_ms:.2f}"
            print(
                f"| {name} ({origin}) | {label} | {n} | {evals:.0f} | {(forwards - backwards) / n:.0f} "
                f"| {ms:.1f} | {bound:.1f} | {ms / bound:.2f} | {captum} |",
                flush=True,
            )
        print(
            f"| {name} | bare fwd+bwd, batch {args.max_batch} | | 1 | 0 | {unit_ms:.2f} | | | | |"
        )


def chunking_child(steps: int, max_batch: int, device: torch.device) -> dict:
    """IG on one resnet18 image in this (fresh) process; peak memory above the state before."""
    model, side, _ = resnet18()
    model = model.to(device)
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device)
    target = torch.zeros(1, dtype=torch.long, device=device)
    info = get_method("integrated_gradients")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    before_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    result = call_method(
        info, model, x, target, {"steps": steps, "rule": "right"}, max_batch=max_batch
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    report = {
        "steps": steps,
        "max_batch": max_batch,
        "wall_s": wall,
        "backward_samples": model.backward_samples,
        "rss_peak_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_rss)
        / 1024,
        "relative_residual": float(
            result.diagnostics["completeness_residual"][0]
            / result.diagnostics["output_delta"][0].abs()
        ),
    }
    if device.type == "cuda":
        report["cuda_peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    return report


def chunking(args: argparse.Namespace, device: torch.device) -> None:
    print(
        f"{description(device)}, wall clock: IG (right rule) on one resnet18 224² image, max_batch "
        f"{args.chunk_max_batch}, each in a fresh process\n"
    )
    memory = (
        "CUDA peak above start MiB" if device.type == "cuda" else "peak RSS growth MiB (approx.)"
    )
    print(
        f"| steps | max_batch | grad evals | wall s | {memory} | completeness residual / abs(ΔF) |"
    )
    print("|---|---|---|---|---|---|")
    for steps in (64, args.chunk_steps):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--chunk-child",
                str(steps),
                "--chunk-max-batch",
                str(args.chunk_max_batch),
                "--device",
                str(device),
                "--threads",
                str(torch.get_num_threads()),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        peak = r.get("cuda_peak_mib", r["rss_peak_growth_mib"])
        print(
            f"| {r['steps']} | {r['max_batch']} | {r['backward_samples']} | {r['wall_s']:.1f} | "
            f"{peak:.0f} | {r['relative_residual']:.2%} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["timing", "chunking"], default="timing")
    parser.add_argument("--models", default="embedded_cnn,resnet18")
    parser.add_argument("--images", default="16,2", help="images per model, in --models order")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32, help="IG steps (ours and Captum)")
    parser.add_argument("--gig-steps", type=int, default=50)
    parser.add_argument("--eg-k", type=int, default=32)
    parser.add_argument("--chunk-steps", type=int, default=1024)
    parser.add_argument("--chunk-max-batch", type=int, default=16)
    parser.add_argument("--chunk-child", type=int, default=None, help=argparse.SUPPRESS)
    add_common_arguments(parser)
    args = parser.parse_args()
    device = setup(args)
    if args.chunk_child is not None:
        print(json.dumps(chunking_child(args.chunk_child, args.chunk_max_batch, device)))
    elif args.part == "timing":
        timing(args, device)
    else:
        chunking(args, device)


if __name__ == "__main__":
    main()
