"""What `attrflow.explain` costs over calling the method function directly (issue 14: ≤ 5 %).

Contenders, timed interleaved in one process (`_bench.interleaved`), on the same images, the
same model weights and the same method parameters:

* ``direct``: the registered function itself, ``fn(wrapped, x, target, **params,
  generator=g, max_batch=m)``, on a `WrappedModel` the caller built;
* ``explain``: ``attrflow.explain(net, x, target, name, seed=0, **params)`` on the *plain*
  module (wrapped once, on the first call, and reused): parameter check with the config's schema,
  input check (float, finite, [0, 1]), the bound explainer, channel reduction.

The overhead is ``explain / direct − 1`` of the medians. It is largest where the method is
cheapest (a single gradient of a small CNN), so that case is measured too.

    python benchmarks/api_overhead.py --model embedded_cnn --images 8 --rounds 30 --threads 1 --clock cpu
    python benchmarks/api_overhead.py --model resnet18 --images 4 --rounds 10 --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse

import torch

from _bench import MODELS, add_common_arguments, description, images_for, interleaved, setup

import attrflow  # noqa: E402
from attrflow.methods import get_method  # noqa: E402

CASES = {
    "gradient": ("gradient", {}),
    "ig32": ("integrated_gradients", {"steps": 32}),
    "smoothgrad8": ("smoothgrad", {"n": 8}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="embedded_cnn")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    add_common_arguments(parser)
    args = parser.parse_args()
    device = setup(args)
    wrapped, side, origin = MODELS[args.model]()
    wrapped = wrapped.to(device)
    net = wrapped.net  # the plain module the API is given
    x = images_for(origin, args.images, side).to(device)
    with torch.no_grad():
        target = wrapped(x).argmax(dim=1)
    plain = attrflow.wrap(net, mean=wrapped.mean.flatten().tolist(), std=wrapped.std.flatten().tolist())
    print(f"{args.model} ({origin}), {args.images} images of {side}², {description(device, args.clock)}, "
          f"{args.rounds} rounds")  # fmt: skip
    print("| method | direct (median s) | attrflow.explain (median s) | overhead |")
    print("|---|---|---|---|")
    for case in args.cases:
        fn, params = CASES[case]
        info = get_method(fn)

        def direct(info=info, params=params) -> object:
            generator = torch.Generator(device=device).manual_seed(0)
            return info.fn(wrapped, x, target, **params, generator=generator, max_batch=256)

        def api(fn=fn, params=params) -> object:
            return attrflow.explain(plain, x, target, fn, seed=0, **params)

        if "generator" not in info.fn.__code__.co_varnames:
            def direct(info=info, params=params) -> object:  # noqa: F811 - deterministic methods take none
                return info.fn(wrapped, x, target, **params, max_batch=256)

        medians = interleaved({"direct": direct, "explain": api}, args.rounds, device, clock=args.clock)
        overhead = medians["explain"] / medians["direct"] - 1
        print(f"| {case} | {medians['direct']:.4f} | {medians['explain']:.4f} | {overhead * 100:+.1f} % |")


if __name__ == "__main__":
    main()
