"""Prepare the regression study's data and train its model outside the workflow, timing both.

Usage: ``PYTHONPATH=src python benchmarks/regression_train.py OUT [N_TRAIN] [EPOCHS]`` (defaults 4000, 8:
config/regression.yaml's severity dataset with 64 test scenes and its severity_cnn). Writes
OUT/samples.zarr and OUT/model/ for benchmarks/regression_study_check.py.
"""
import sys, time, json
from pathlib import Path
from attrflow.data.adapters import prepare_dataset
from attrflow.data.sample_store import write_sample_store
from attrflow.models.cards import load_model, save_model
from attrflow.models.preparation import prepare_model
out = Path(sys.argv[1])
t = time.time()
ev, tr, attrs = prepare_dataset("severity", {"kind": "synthetic_severity", "n_train": int(sys.argv[2]) if len(sys.argv) > 2 else 4000, "n_test": 64}, 0)
write_sample_store(out / "samples.zarr", ev, tr, {**attrs, "fingerprint": "x"})
print("data", time.time() - t, flush=True)
t = time.time()
model, card = prepare_model("sev_cnn", {"kind": "trained", "arch": "small_cnn", "dataset": "severity", "width": 16, "epochs": int(sys.argv[3]) if len(sys.argv) > 3 else 8}, dataset_store=out / "samples.zarr", seed=0, threads=2)
print("train", time.time() - t, json.dumps(card["regression_quality"]), card["test_accuracy"], flush=True)
save_model(model, card, out / "model")
m = load_model(out / "model")
print(m.task, m.num_classes)
