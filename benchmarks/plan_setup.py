"""Time validating the embedded config.yaml and building the plan, as the Snakefile does at
every invocation; run from the repository root with PYTHONPATH pointing at the source to time.

    PYTHONPATH=src python benchmarks/plan_setup.py
"""

import sys, time
t0 = time.perf_counter()
from attrflow.config import load_config
from attrflow.plan import Plan
cfg = load_config("config.yaml")
plan = Plan(cfg)
t1 = time.perf_counter()
print(f"load_config+Plan: {(t1-t0)*1e3:.0f} ms; torch imported: {'torch' in sys.modules}")
