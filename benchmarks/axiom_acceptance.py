"""Acceptance of axiom synthesis per scenario on a trained model: the three outcome counts,
iterations and seconds per accepted sample, and how robust the accepted samples are.

    .venv/bin/python benchmarks/axiom_acceptance.py --model-dir results/models/shapes_cnn \
        [--config config.yaml] [--model shapes_cnn] [--scenarios null_feature ...] \
        [--set samples=8 --set max_candidates=16 ...] [--recheck 16] [--threads 1] [--seed 0 | --job-seed]

Each scenario runs `attrflow.axioms.synthesis.synthesize` with the setting the config resolves
for the model (``--set key=value`` overrides it, values parsed as YAML), on one thread. Columns:
candidates started, accepted, failed, unfinished; the acceptance rate (accepted / finished);
candidate-iterations, model evaluations (images through the model: the load-independent cost)
and wall seconds per accepted sample; and ``fresh pass``: each accepted
sample re-checked, independently of the synthesis, on ``--recheck`` new backgrounds and
placements (own-class probability, and the change below ``--fresh-effect`` (0.15) of the patch's
own effect, or below the authors' 0.14), averaged over the accepted samples — the robustness a reader of the stored
samples can rely on. ``AXIOM_BENCH_SRC=<checkout>/src`` measures another checkout's synthesis
(the "before" figures). It prints a markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
# AXIOM_BENCH_SRC: measure another checkout's synthesis (e.g. the code before a change); the
# independent re-check always uses this checkout's measures.
sys.path.insert(0, os.environ.get("AXIOM_BENCH_SRC", str(ROOT / "src")))

from attrflow.axioms.placement import coalitions, random_background, random_boxes  # noqa: E402
from attrflow.axioms.settings import SCENARIOS, resolve_setting  # noqa: E402
from attrflow.axioms.synthesis import compose_stored, synthesize  # noqa: E402


def _measures():
    spec = importlib.util.spec_from_file_location("axiom_measures", ROOT / "src/attrflow/axioms/synthesis.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.constraint_measures


constraint_measures = _measures()


def fresh_pass_fraction(model, result, setting: dict, draws: int, seed: int, rule: str, effect: float) -> float:
    """Mean over accepted samples of the share of ``draws`` fresh draws on which the property holds:
    own-class probability above the entry's threshold and, by ``rule``, the change below ``effect``
    of the patch's own effect (``effect``) or the authors' tanh relative change below 0.14 (``seed``)."""
    sc = SCENARIOS[setting["scenario"]]
    gen = torch.Generator().manual_seed(seed)
    size, patch = int(setting["input_size"]), int(setting["patch_size"])
    threshold = {"effect": effect, "seed": 0.14}[rule]
    order = coalitions(sc.patches)
    shares = []
    for i in np.flatnonzero(result.accepted):
        patches = np.repeat(result.patches[i : i + 1], draws, 0)
        backgrounds = random_background(draws, patches.shape[2], size, gen).numpy()
        boxes = random_boxes(draws, sc.patches, size, patch, gen).numpy()
        targets = torch.from_numpy(np.repeat(result.targets[i : i + 1], draws, 0))
        with torch.no_grad():
            logits = torch.stack([model(torch.from_numpy(compose_stored(backgrounds, patches, boxes, s))) for s in order])
        pair = logits.gather(2, targets[None].expand(len(order), -1, 2)).permute(1, 0, 2)
        probs = torch.softmax(logits, 2).gather(2, targets[None].expand(len(order), -1, 2))
        own = torch.stack([probs[order.index((j,)), :, cls] for j, cls in enumerate(sc.patch_class)], 1)
        passed = (own > float(setting["accuracy_threshold"])).all(1)
        passed &= (constraint_measures(sc, pair)[rule] < threshold).all(1)
        shares.append(passed.float().mean().item())
    return float(np.mean(shares)) if shares else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--model", default="shapes_cnn", help="the model's name in the config")
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS))
    parser.add_argument("--set", action="append", default=[], help="key=value override of every entry")
    parser.add_argument("--recheck", type=int, default=16)
    parser.add_argument("--fresh-effect", type=float, default=0.15, help="effect threshold of the independent re-check")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--job-seed", action="store_true",
                        help="seed each scenario as the synthesize_axioms job does (the config's seed, the model, the entry): the samples `make run` gets")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from attrflow.models.cards import load_model

    model = load_model(args.model_dir).eval().requires_grad_(False)
    config = yaml.safe_load((ROOT / args.config).read_text())
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    print("| scenario | started | accepted | failed | unfinished | rate | iterations / accepted | model evaluations / accepted | s / accepted | fresh pass (effect) | fresh pass (seed) | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for scenario in args.scenarios:
        config.setdefault("axioms", {}).setdefault(scenario, {}).update(overrides)
        setting = resolve_setting(config, args.model, scenario)
        started, evaluated = time.perf_counter(), int(getattr(model, "forward_samples", 0))
        seed = args.seed
        if args.job_seed:
            from attrflow.jobs.runtime import derive_seed

            seed = derive_seed(int(config.get("seed", 0)), args.model, scenario)
        result = synthesize(model, setting, seed=seed)
        wall = time.perf_counter() - started
        evaluations = int(getattr(model, "forward_samples", 0)) - evaluated  # images through the model, re-checks included
        st = result.stats
        outcome = getattr(result, "outcome", None)
        accepted = int(result.accepted.sum())
        failed = int((outcome == "failed").sum()) if outcome is not None else int((~result.accepted).sum())
        unfinished = st.get("unfinished", st.get("candidates_dropped", 0))
        started_n = st.get("candidates_started", accepted + failed + unfinished)
        iterations = st.get("candidate_iterations")
        fresh = [fresh_pass_fraction(model, result, setting, args.recheck, args.seed + 17, r, args.fresh_effect) for r in ("effect", "seed")]
        rate = accepted / (accepted + failed) if accepted + failed else float("nan")
        per_it = f"{iterations / accepted:.0f}" if iterations and accepted else "—"
        per_s = f"{wall / accepted:.1f}" if accepted else "—"
        per_eval = f"{evaluations / accepted:.0f}" if evaluations and accepted else "—"
        print(f"| {scenario} | {started_n} | {accepted} | {failed} | {unfinished} | {rate:.2f} | {per_it} | {per_eval} | {per_s} | "
              f"{fresh[0]:.2f} | {fresh[1]:.2f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
