"""What a job pays before its work starts: interpreter, Snakemake's script preamble, imports.

    .venv/bin/python benchmarks/job_startup.py [--repeat 5] [--run-dir DIR] [--baseline OTHER/src]

Part 1 times, each in a fresh interpreter (best of `--repeat`, so a busy machine inflates it
least), the start-up pieces every job pays: the bare interpreter, the imports of Snakemake's
`script:` preamble, torch, and each workflow script's job module, and then what a job imports
lazily while it runs (a method's or a metric's module, the model loader). Part 2, with
`--run-dir` (a working directory after `make run`), reads the run's own records, as
`workflow_timing.py` does: Snakemake's `benchmark:` wall seconds per job and each job log's
"startup X s" line, and prints the start-up share per rule. Prints Markdown for RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

# The model loader, in this tree or (for a before/after comparison) one from before models/
# was split by job.
LOADER = "try:\n    import attrflow.models.cards, attrflow.models.preparation\nexcept ImportError:\n    import attrflow.models.loading\n"
# What each piece imports; the job entries are what the workflow scripts import before the
# job's code is ready (`mark_ready`), then what the job's function imports when it runs.
PIECES = {
    "interpreter (python -c pass)": "pass",
    "Snakemake script preamble": "import pickle; from snakemake.logging import logger; "
    "from snakemake.iocontainers import Snakemake; import snakemake.script",
    "torch": "import torch",
    "attribute job (module + model loader + gradient)": LOADER + "import attrflow.jobs.attribute; "
    "from attrflow.methods import get_method; get_method('gradient')",
    "attribute job, DeepLIFT": LOADER + "import attrflow.jobs.attribute; "
    "from attrflow.methods import get_method; get_method('deeplift')",
    "attribute job, Guided Backprop (captum)": LOADER + "import attrflow.jobs.attribute; "
    "from attrflow.methods import get_method; get_method('guided_backprop'); import captum.attr",
    "score job (module + model loader + deletion)": LOADER + "import attrflow.jobs.score; "
    "from attrflow.metrics import get_metric; get_metric('deletion')",
    "axiom attribution job": LOADER + "import attrflow.jobs.axioms",
    "references job": LOADER + "import attrflow.jobs.references",
    "prepare_model job (trained model)": LOADER + "import attrflow.jobs.prepare",
    "aggregate job": "import attrflow.report.aggregate, attrflow.report.costs",
    "evidence job": "import attrflow.report.evidence",
    "report job": "import attrflow.report.html, attrflow.report.tables",
}


def best_walls(code: str, repeat: int, sources: list[Path]) -> list[float]:
    """Best wall time of `code` per source tree, the trees taking turns (each sees the same load)."""
    times: list[list[float]] = [[] for _ in sources]
    for _ in range(repeat):
        for i, src in enumerate(sources):
            env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env, stdout=subprocess.DEVNULL)
            times[i].append(time.perf_counter() - started)
    return [min(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout's src/ to time alongside this tree's, alternately (same machine load)")
    args = parser.parse_args()
    sources = [REPO / "src"] if args.baseline is None else [args.baseline, REPO / "src"]
    names = ["wall s"] if args.baseline is None else ["baseline s", "this tree s"]
    print(f"| start-up piece (fresh interpreter, best of {args.repeat}) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, code in PIECES.items():
        walls = best_walls(code, args.repeat, sources)
        print(f"| {label} | " + " | ".join(f"{w:.2f}" for w in walls) + " |", flush=True)
    if args.run_dir is not None:
        from workflow_timing import per_rule

        rules = per_rule(args.run_dir)
        wall = sum(r["wall_s"] for r in rules.values())
        startup = sum(r["startup_s"] for r in rules.values())
        print("\n| rule | jobs | wall s (sum) | start-up s (sum) | share |")
        print("|---|---|---|---|---|")
        for rule, r in sorted(rules.items(), key=lambda kv: -kv[1]["wall_s"]):
            share = r["startup_s"] / r["wall_s"] if r["wall_s"] else float("nan")
            print(f"| {rule} | {int(r['jobs'])} | {r['wall_s']:.1f} | {r['startup_s']:.1f} | {share:.0%} |")
        print(f"| all | {sum(int(r['jobs']) for r in rules.values())} | {wall:.1f} | {startup:.1f} | {startup / wall:.1%} |")


if __name__ == "__main__":
    main()
