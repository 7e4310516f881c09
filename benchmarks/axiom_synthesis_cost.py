"""Cost of axiom synthesis per iteration and per candidate, on the embedded CNN and timm resnet18.

    .venv/bin/python benchmarks/axiom_synthesis_cost.py                  # as recorded: 2 threads
    options: [--scenario class_sensitivity_single] [--iterations 20] [--embedded-iterations 50]
             [--batch 4] [--threads 2] [--device cpu]

Issue 6 ("Performance") asks for the synthesis cost per accepted sample on both models. An
accepted sample costs (iterations until acceptance) × (seconds per candidate-iteration), and
candidates that fail cost the whole iteration cap; the acceptance rate needs trained weights
(the embedded CNN's comes from `make run`'s stores), whereas the seconds per iteration do not
depend on the weights. So this script times iterations on random weights:

* each model runs with the setting its configuration resolves to — the embedded CNN (width 16,
  64²) with config.yaml's entry, resnet18 (224²) with config/imagenet.yaml's (the seed's
  defaults: patch 86 px, decoder width 32, batch 16, 1500 iterations), each file read on its
  own, as `attrflow.axioms.settings.resolve_setting` fills it in;
* only the batch (candidates optimised together, ``--batch``) and the number of timed
  iterations are changed, and acceptance is switched off (``check_after`` past the last
  iteration), so one round of ``batch`` candidates runs exactly ``iterations`` steps, half of
  them warm-up and half with the focal losses;
* the time is the round's wall time from `synthesize` (`SynthesisResult.seconds`: set-up of the
  decoders and class ranking excluded), divided by the iterations.

On a CPU the cost of an iteration grows linearly with the batch (every candidate adds its own
images to one model call), so the configured batch's time per iteration is extrapolated as
s/iteration × configured batch / measured batch; the per-candidate figures do not depend on it.
"s per candidate at cap" = s per candidate-iteration × the configured iteration cap: the cost
of a candidate that fails, and the bound on one that is accepted. It prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import ROOT, embedded_cnn, resnet18  # noqa: E402

from attrflow.axioms.settings import resolve_setting  # noqa: E402
from attrflow.axioms.synthesis import synthesize  # noqa: E402

# (row label, model builder, config file, the model's name in that file)
MODELS = [
    ("embedded CNN (width 16)", lambda: embedded_cnn(trained=False), "config.yaml", "shapes_cnn"),
    ("timm resnet18", resnet18, "config/imagenet.yaml", "resnet18"),
]


def configured_setting(config_file: str, model_name: str, scenario: str) -> dict:
    config = yaml.safe_load((ROOT / config_file).read_text())
    return resolve_setting(config, model_name, scenario)


def seconds_per_iteration(model, setting: dict, batch: int, iterations: int) -> float:
    timed = {
        **setting,
        "samples": batch, "max_candidates": batch, "batch": batch, "iterations": iterations,
        "warmup": iterations // 2, "check_after": iterations + 1,
    }
    result = synthesize(model, timed, seed=0, max_batch=10**6)
    assert len(result.seconds) == batch and (result.iterations == iterations).all()
    return float(result.seconds.max()) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="class_sensitivity_single")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations on resnet18")
    parser.add_argument("--embedded-iterations", type=int, default=50, help="timed iterations on the embedded CNN")
    parser.add_argument("--batch", type=int, default=4, help="candidates per round while timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print(f"scenario {args.scenario}; device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"wall clock, random weights\n")
    print("| model | input | patch | batch timed | iterations timed | s / iteration | s / candidate-iteration "
          "| configured batch, cap | s / iteration at configured batch (extrapolated) | s / candidate at cap |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, build, config_file, model_name in MODELS:
        model, side, _ = build()
        model = model.to(device)
        setting = configured_setting(config_file, model_name, args.scenario)
        assert setting["input_size"] == side, (label, setting["input_size"], side)
        iterations = args.embedded_iterations if "embedded" in label else args.iterations
        per_iteration = seconds_per_iteration(model, setting, args.batch, iterations)
        per_candidate_iteration = per_iteration / args.batch
        batch, cap = int(setting["batch"]), int(setting["iterations"])
        print(f"| {label} | {side}² | {setting['patch_size']} px | {args.batch} | {iterations} | {per_iteration:.3f} "
              f"| {per_candidate_iteration:.4f} | {batch}, {cap} ({config_file}) | {per_candidate_iteration * batch:.3f} "
              f"| {per_candidate_iteration * cap:.1f} |")


if __name__ == "__main__":
    main()
