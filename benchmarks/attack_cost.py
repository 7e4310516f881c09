"""Cost and strength of the attribution attack (`attack_topk` / `attack_spearman`, issue 18).

``cost``: one attack of ``--images`` images with ``--method`` (gradient or ig32, IG with 32
right-Riemann steps from black) on ``--model``: seconds (wall and process CPU), images through
the network (forward rows: every map, the gradient step, the label checks and the noise check),
and the process's peak resident memory before and after (``ru_maxrss``; run each configuration
in a fresh process, as the command lines below do). On CUDA the peak is
``torch.cuda.max_memory_allocated`` instead.

``versus``: the table of the issue re-measured — the metric after the exact-gradient attack,
after random ±ε sign noise of the same ε (recorded by the same call), and after the old
attack (the SPSA estimate, 16 directions over 4×4 tiles, step 1/255, forced here by hiding the
maps' graph: the fallback that methods without differentiable maps still take).

    python benchmarks/attack_cost.py cost --model resnet18 --method gradient --images 2
    python benchmarks/attack_cost.py cost --model resnet18 --method ig32 --images 1
    python benchmarks/attack_cost.py versus --model resnet18 --images 4 --side 224
    python benchmarks/attack_cost.py versus --model embedded_cnn --images 8
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from _bench import MODELS, add_common_arguments, images_for

import attrflow.metrics.attack as attack_module  # noqa: E402
from attrflow.methods import call_method, get_method, reduce_channels  # noqa: E402
from attrflow.metrics import MetricInputs, call_metric, get_metric  # noqa: E402
from attrflow.metrics.attack import predicted_classes  # noqa: E402

METHODS = {"gradient": ("gradient", {}), "ig32": ("integrated_gradients", {"steps": 32})}


def explainer(fn: str, params: dict, net, max_batch: int, hide_graph: bool = False):
    info = get_method(fn)

    def explain(x, target, model=None, **overrides):
        if hide_graph:  # the maps then carry no graph to x: the attack falls back to SPSA
            x = x.detach()
        maps = call_method(
            info, model or net, x, target, {**params, **overrides},
            generator=torch.Generator(device=x.device).manual_seed(0), max_batch=max_batch,
        ).maps  # fmt: skip
        return reduce_channels(maps)

    return explain


def inputs_for(model, x, fn, params, max_batch, hide_graph=False) -> MetricInputs:
    targets = predicted_classes(model, x, max_batch)
    explain = explainer(fn, params, model, max_batch, hide_graph)
    return MetricInputs(
        model=model, images=x, maps=explain(x, targets), targets=targets, labels=targets,
        ids=[f"s{i}" for i in range(x.shape[0])], method=fn, method_fn=fn, explain=explain,
        method_params=params,
    )  # fmt: skip


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cost(args, model, x) -> None:
    fn, params = METHODS[args.method]
    rows = [0]
    def count(_module, inputs) -> None:
        rows[0] += inputs[0].shape[0]

    model.net.register_forward_pre_hook(count)
    inputs = inputs_for(model, x, fn, params, args.max_batch)
    if x.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before_rss, rows[0] = peak_rss_mib(), 0
    wall, cpu = time.perf_counter(), time.process_time()
    attack_module._LAST_ATTACK.clear()
    out = call_metric(get_metric("attack_topk"), inputs, {}, max_batch=args.max_batch)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = x.shape[0]
    peak = (
        f"cuda peak allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
        if x.device.type == "cuda"
        else f"peak RSS {before_rss:.0f} MiB before the attack, {peak_rss_mib():.0f} MiB after"
    )
    print(
        f"{args.model} {args.side}² {args.method} max_batch {args.max_batch} {args.device} "
        f"threads {torch.get_num_threads()}: {n} image(s), {wall / n:.1f} s wall / "
        f"{cpu / n:.1f} s CPU per image, {rows[0] / n:.0f} images through the network per "
        f"image, {peak}; curves {[np.round(c, 3).tolist() for c in out.curves]}, "
        f"values {np.round(out.values, 3).tolist()}"
    )


def versus(args, model, x) -> None:
    fn, params = METHODS[args.method]
    print(f"{args.model} {args.side}² {args.method}, {x.shape[0]} images (mean ± sd over images)")
    print("| metric | exact-gradient FGSM | random ±ε noise | old SPSA attack |")
    print("|---|---|---|---|")
    exact = inputs_for(model, x, fn, params, args.max_batch)
    spsa = inputs_for(model, x, fn, params, args.max_batch, hide_graph=True)
    for metric in ("attack_topk", "attack_spearman"):
        cells = []
        attack_module._LAST_ATTACK.clear()
        out = call_metric(get_metric(metric), exact, {}, max_batch=args.max_batch)
        noise = np.array([c[1] if c is not None else np.nan for c in out.curves])
        attack_module._LAST_ATTACK.clear()
        old = call_metric(get_metric(metric), spsa, {}, max_batch=args.max_batch)
        for values in (out.values, noise, old.values):
            cells.append(f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}")
        print(f"| {metric} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["cost", "versus"])
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet18")
    parser.add_argument("--method", choices=sorted(METHODS), default="gradient")
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--side", type=int, default=None, help="image side (default: the model's)")
    parser.add_argument("--max-batch", type=int, default=32)
    add_common_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, side, origin = MODELS[args.model]()
    args.side = args.side or side
    device = torch.device(args.device)
    model = model.to(device)
    x = images_for(origin, args.images, args.side).to(device)
    (cost if args.what == "cost" else versus)(args, model, x)


if __name__ == "__main__":
    main()
