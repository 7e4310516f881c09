"""Integrated Gradients against the bare batched forward+backward bound, per precision.

    python benchmarks/ig_bound.py --model resnet50 --images 64 --max-batch 128 --steps 32 \\
        --dtypes fp32,bf16 --device cuda [--rounds 3] [--json out.json]

IG (right rule, black baseline, ``steps`` steps, batched to ``max_batch``) runs interleaved with
one bare forward + input-gradient backward of ``max_batch`` inputs, both under the same
precision: fp32, or bf16 autocast (``torch.autocast``; attrflow's jobs run fp32 — this measures
what bf16 would give). The bound of IG is its gradient evaluations per image (counted by the
WrappedModel) × the bare pass's time per input; the efficiency is bound / IG time (the issue's
goal: ≥ 0.9 on a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import MODELS, add_common_arguments, bare_forward_backward, batch_of, counted, description, images_for, interleaved, setup  # noqa: E402

from attrflow.methods import call_method, get_method  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def precision(device: torch.device, dtype: str):
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def measure(args: argparse.Namespace, device: torch.device) -> list[dict]:
    model, side, origin = MODELS[args.model]()
    model = model.to(device)
    x = images_for(origin, args.images, side).to(device)
    with torch.no_grad():
        target = model(x).argmax(1)
    unit_x, unit_target = batch_of(x, args.max_batch), batch_of(target, args.max_batch)
    info = get_method("integrated_gradients")
    params = {"steps": args.steps, "rule": "right", "baseline": "black"}
    rows = []
    for dtype in args.dtypes.split(","):
        def ig():
            with precision(device, dtype):
                return call_method(info, model, x, target, params, generator=torch.Generator(device=device).manual_seed(0), max_batch=args.max_batch)

        def bare():
            with precision(device, dtype):
                bare_forward_backward(model, unit_x, unit_target)

        contenders = {"ig": ig, "bare": bare}
        passes = {name: counted(model, run) for name, run in contenders.items()}  # also the warm-up
        seconds = interleaved(contenders, args.rounds, device, warm_up=False, clock=args.clock)
        evals = passes["ig"][1] / args.images
        unit_ms = seconds["bare"] * 1000 / args.max_batch
        ig_ms = seconds["ig"] * 1000 / args.images
        bound_ms = evals * unit_ms
        rows.append(
            dict(model=f"{args.model} ({origin}, {side}²)", dtype=dtype, images=args.images, steps=args.steps,
                 max_batch=args.max_batch, grad_evals_per_image=evals, ig_ms_per_image=ig_ms,
                 bare_ms_per_input=unit_ms, bound_ms_per_image=bound_ms, efficiency=bound_ms / ig_ms)
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", choices=sorted(MODELS))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    add_common_arguments(parser)
    args = parser.parse_args()
    device = setup(args)
    print(f"{description(device, args.clock)}, median of {args.rounds} interleaved rounds\n")
    rows = measure(args, device)
    print("| model | precision | IG steps | grad evals / img | IG ms / img | bare fwd+bwd ms / input | bound ms / img | bound / IG |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['dtype']} | {r['steps']} | {r['grad_evals_per_image']:.0f} | {r['ig_ms_per_image']:.2f} "
              f"| {r['bare_ms_per_input']:.3f} | {r['bound_ms_per_image']:.2f} | **{r['efficiency']:.2f}** |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
