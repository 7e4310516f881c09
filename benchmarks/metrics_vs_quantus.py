"""Time per image of attrflow's map metrics against Quantus 0.6 and the bare forward passes.

    .venv/bin/python benchmarks/metrics_vs_quantus.py --models embedded_cnn --images 16
    # as recorded on the shared 2-core CPU:
    .venv/bin/python benchmarks/metrics_vs_quantus.py --models embedded_cnn --images 16 \
        --rounds 3 --threads 1 --clock cpu
    .venv/bin/python benchmarks/metrics_vs_quantus.py --models resnet18 --images 2 --rounds 2 \
        --max-batch 16 --threads 1 --clock cpu
    options: [--rounds 3] [--max-batch 64] [--sensn-subsets 20] [--device cpu]

Issue 5, "Performance": a map metric should cost ≤ 1.2 × the bare batched forward passes its
perturbations need, and run ≥ 3 × faster than Quantus on the same metric, inputs and settings.
For each metric, interleaved in one process on the same model, images and maps (channel-summed
`gradient` maps of the target, the predicted class), it times

* ours, through `call_metric` with ``max_batch`` as the workflow passes it;
* bare: one forward pass of ``max_batch`` inputs, scaled to the forward passes ours makes (the
  WrappedModel's forward_samples per image), i.e. the model cost of the perturbations alone;
* Quantus, where it computes the same quantity, with the settings of
  tests/conformance/test_quantus*.py: ``deletion`` (p pixels per step, black fill, softmax
  probability, signed order) ↔ `PixelFlipping(features_in_step = C·p, perturb_baseline="black",
  normalise=False)`; ``faithfulness_correlation`` (100 subsets of 224 pixels, black, logit,
  Pearson) ↔ `FaithfulnessCorrelation(nr_runs=100, subset_size=224, normalise=False)` (on colour
  images Quantus removes single colour values where we remove pixels: the same number of
  forward passes, a pinned difference in what is removed).

Quantus's `SensitivityN` is a different quantity (cumulative removal, correlation across the
images of a batch; pinned in tests/conformance/test_quantus_faithfulness.py), so it is timed per
forward pass against ours with ``features_in_step`` chosen to make about as many passes; there is
no Quantus counterpart of insertion (its `RegionPerturbation` removes patches with noise, MoRF or
LeRF) or of Xplique's `mufidelity`: those rows show ours against bare only.
"""

from __future__ import annotations

import argparse
import math
import warnings
from types import SimpleNamespace

import numpy as np
import torch

from _bench import (
    MODELS,
    add_common_arguments,
    bare_forward,
    batch_of,
    counted,
    description,
    images_for,
    interleaved,
    setup,
)
from attrflow.methods import call_method, get_method
from attrflow.metrics import MetricInputs, call_metric, get_metric


def quantus_call(metric, model, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, **call):
    """Quantus's own entry point, on numpy copies as a Quantus user passes them ((n, 1, H, W)
    maps, as in the conformance tests)."""
    x_np, y_np, a_np = x.cpu().numpy(), target.cpu().numpy(), maps.unsqueeze(1).cpu().numpy()
    device = str(x.device)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return metric(
                model=model,
                x_batch=x_np,
                y_batch=y_np,
                a_batch=a_np,
                channel_first=True,
                device=device,
                **call,
            )

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="embedded_cnn")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument(
        "--deletion-steps", type=int, default=16, help="pixel-flipping steps (p = HW / steps)"
    )
    parser.add_argument(
        "--sensn-subsets", type=int, default=20, help="subsets per n of sensitivity_n"
    )
    add_common_arguments(parser)
    args = parser.parse_args()
    import quantus
    from quantus.metrics.faithfulness import pixel_flipping

    # PixelFlipping asserts that features_in_step divides H·W, though it steps through the C·H·W
    # elements: C·p never divides a power-of-two H·W. The check guards nothing the algorithm
    # needs (the conformance test matches our curves where it passes), so it is bypassed here.
    # It is the only assertion that module makes.
    pixel_flipping.asserts = SimpleNamespace(assert_features_in_step=lambda **kwargs: None)

    device = setup(args)
    n = args.images
    print(
        f"{description(device, args.clock)}, {n} images, max_batch {args.max_batch}, median of {args.rounds} "
        "interleaved rounds\n"
    )
    print(
        "| model | metric (settings) | fwd / img | ours ms / img | bare ms / img | ours / bare "
        "| Quantus counterpart | Quantus ms / img | Quantus / ours |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model, side, origin = MODELS[name]()
        model = model.to(device)
        x = images_for(origin, n, side).to(device)
        with torch.no_grad():
            target = model(x).argmax(1)
        maps = call_method(get_method("gradient"), model, x, target, {}).maps.sum(dim=1)
        inputs = MetricInputs(
            model=model,
            images=x,
            maps=maps,
            targets=target,
            labels=target,
            ids=[str(i) for i in range(n)],
        )
        channels, pixels = x.shape[1], side * side
        per_step = pixels // args.deletion_steps
        sensn_sizes = [1, 4, 16, 64, 256]
        sensn_forwards = len(sensn_sizes) * args.sensn_subsets
        # Quantus asserts that features_in_step divides H·W: a power of two near the step that
        # gives as many forward passes as ours makes
        sensn_feature_step = 2 ** round(math.log2(0.8 * channels * pixels / sensn_forwards))

        def ours(metric: str, params: dict):
            info = get_metric(metric)
            generator = torch.Generator(device=device)

            def run():
                generator.manual_seed(0)
                return call_metric(
                    info, inputs, params, generator=generator, max_batch=args.max_batch
                )

            return run

        quiet = {"disable_warnings": True, "display_progressbar": False}
        rows = {
            f"deletion (p = {per_step} px/step, black, prob)": (
                ours("deletion", {"pixels_per_step": per_step, "fill": "black", "output": "prob"}),
                "PixelFlipping",
                quantus_call(
                    quantus.PixelFlipping(
                        features_in_step=channels * per_step,
                        perturb_baseline="black",
                        abs=False,
                        normalise=False,
                        **quiet,
                    ),
                    model,
                    x,
                    target,
                    maps,
                    softmax=True,
                ),
            ),
            "insertion (20 steps, blur 29/15, prob)": (ours("insertion", {}), "–", None),
            "faithfulness_correlation (100 × 224 px, black, logit)": (
                ours("faithfulness_correlation", {}),
                "FaithfulnessCorrelation",
                quantus_call(
                    quantus.FaithfulnessCorrelation(
                        nr_runs=100,
                        subset_size=224,
                        perturb_baseline="black",
                        abs=False,
                        normalise=False,
                        return_aggregate=False,
                        **quiet,
                    ),
                    model,
                    x,
                    target,
                    maps,
                    softmax=False,
                ),
            ),
            f"sensitivity_n (n 1…256, {args.sensn_subsets} subsets each)": (
                ours("sensitivity_n", {"subsets": args.sensn_subsets, "n": sensn_sizes}),
                f"SensitivityN, ≠ quantity, {sensn_feature_step} features/step",
                quantus_call(
                    quantus.SensitivityN(
                        features_in_step=sensn_feature_step,
                        n_max_percentage=0.8,
                        normalise=False,
                        return_aggregate=False,
                        **quiet,
                    ),
                    model,
                    x,
                    target,
                    maps,
                    softmax=False,
                ),
            ),
            "mufidelity (9×9, 200 subsets, Spearman)": (ours("mufidelity", {}), "–", None),
        }
        unit_x = batch_of(x, args.max_batch)
        contenders = {"bare": lambda: bare_forward(model, unit_x)}
        for label, (run_ours, _, run_quantus) in rows.items():
            contenders[label] = run_ours
            if run_quantus is not None:
                contenders[f"quantus {label}"] = run_quantus
        forwards = {
            key: counted(model, run)[0] for key, run in contenders.items()
        }  # also the warm-up
        seconds = interleaved(contenders, args.rounds, device, warm_up=False, clock=args.clock)
        unit_ms = seconds["bare"] * 1000 / args.max_batch
        for label, (_, counterpart, run_quantus) in rows.items():
            per_image = forwards[label] / n
            ms = seconds[label] * 1000 / n
            bare = per_image * unit_ms
            quantus_cells = "– | –"
            if run_quantus is not None:
                quantus_ms = seconds[f"quantus {label}"] * 1000 / n
                quantus_per_image = forwards[f"quantus {label}"] / n
                ratio = quantus_ms / ms
                counterpart += f" ({quantus_per_image:.0f} fwd / img"
                if "≠" in counterpart:  # compare per forward pass: the quantities differ
                    ratio = (quantus_ms / quantus_per_image) / (ms / per_image)
                    counterpart += ", ratio per forward"
                counterpart += ")"
                quantus_cells = f"{quantus_ms:.1f} | {ratio:.1f}"
            print(
                f"| {name} ({origin}) | {label} | {per_image:.0f} | {ms:.1f} | {bare:.1f} | {ms / bare:.2f} "
                f"| {counterpart} | {quantus_cells} |",
                flush=True,
            )
        print(f"| {name} | bare forward, batch {args.max_batch} | 1 | {unit_ms:.3f} | | | | | |")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
