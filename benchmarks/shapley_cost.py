"""Cost per image of exact grid Shapley values, LIME, KernelSHAP and LRP (issue 16).

For each contender: forward passes per image (counted by the wrapper), seconds per image (``--clock cpu``:
process CPU time, which other processes' load does not inflate; ``wall`` on a GPU) and the process's peak resident memory growth. Exact Shapley runs 2^(grid²) forward
passes per image in chunks of ``max_batch``; its memory is one chunk of images plus the
(n, 2^(grid²)) worth table, whatever the grid, which the ``--max-batch`` sweep shows.

    python benchmarks/shapley_cost.py --images 1 --threads 1 --clock cpu
    python benchmarks/shapley_cost.py --images 1 --threads 1 --clock cpu --only exact_shapley_4x4 --max-batch 64 256 1024
"""

from __future__ import annotations

import argparse
import resource

import torch

from _bench import CLOCKS, MODELS, add_common_arguments, description, images_for, setup

from attrflow.methods import call_method, get_method  # noqa: E402

CONTENDERS = {
    "exact_shapley_2x2": ("exact_shapley", {"grid": 2}),
    "exact_shapley_3x3": ("exact_shapley", {"grid": 3}),
    "exact_shapley_4x4": ("exact_shapley", {"grid": 4}),
    "kernel_shap_4x4_256": ("kernel_shap", {"n_segments": 4, "n_samples": 256}),
    "lime_8x8_256": ("lime", {"n_segments": 8, "n_samples": 256}),
    "lrp_epsilon_plus_flat": ("lrp", {"composite": "epsilon_plus_flat"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded_cnn", choices=sorted(MODELS))
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[64])
    parser.add_argument("--only", nargs="*", default=None, help="contenders to run (default: all)")
    add_common_arguments(parser)
    args = parser.parse_args()
    device = setup(args)
    model, side, origin = MODELS[args.model]()
    model = model.to(device)
    x = images_for(origin, args.images, side).to(device)
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    clock = CLOCKS[args.clock]
    print(f"model {args.model} ({origin}), {args.images} image(s) of {side}², {description(device, args.clock)}")
    print(f"{'contender':<24} {'max_batch':>9} {'forwards/img':>12} {'s/img':>9} {'peak RSS +MiB':>13}")
    for name in args.only or CONTENDERS:
        fn, params = CONTENDERS[name]
        info = get_method(fn)
        # One warm-up call on one image (imports, allocator), except for the costly 4×4 grid,
        # whose 65,536 passes dwarf any first-call cost.
        if not name.endswith("4x4"):
            call_method(info, model, x[:1], target[:1], params, generator=torch.Generator(device=device).manual_seed(0), max_batch=args.max_batch[0])
        for max_batch in args.max_batch:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            model.reset_counters()
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = clock()
            call_method(info, model, x, target, params, generator=torch.Generator(device=device).manual_seed(0), max_batch=max_batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = (clock() - start) / args.images
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
            print(f"{name:<24} {max_batch:>9} {model.forward_samples / args.images:>12.0f} {seconds:>9.3f} {grown:>13.1f}")


if __name__ == "__main__":
    main()
