"""A job imports only what it uses: each costs start-up time in every one of a run's jobs.

Importing a job's module (what a workflow script imports before the job's code is ready) must
not import timm or torchvision (a model library is imported when a model of its kind is
built), captum (imported when Guided Backprop or Deconvolution runs), or matplotlib (the
report draws figures; nothing else does). The jobs that only read and write tables import
no torch at all. Each check runs in a fresh interpreter, because this test process has
imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from attrflow.catalog import PACKAGE_DIR

# Libraries no job module may import when it is imported.
MODEL_LIBRARIES = ("timm", "torchvision", "captum", "matplotlib")
# Modules the workflow scripts import before their job's code is ready, and what each may not import.
TORCH_JOBS = [
    "attrflow.jobs.attribute",
    "attrflow.jobs.axioms",
    "attrflow.jobs.prepare",
    "attrflow.jobs.references",
    "attrflow.jobs.roar",
    "attrflow.jobs.score",
]
TABLE_JOBS = ["attrflow.jobs.runtime", "attrflow.report.aggregate", "attrflow.report.costs", "attrflow.report.evidence"]
# The modules `prepare_model`, `load_model` and the methods DeepLIFT and DeepSHAP run.
MODEL_CODE = [
    "attrflow.models.preparation",
    "attrflow.models.cards",
    "attrflow.models.hub",
    "attrflow.methods.backprop",
]


ENV = {"PYTHONPATH": str(PACKAGE_DIR.parent), "HF_HUB_OFFLINE": "1", "PATH": ""}


def imported_by(modules: list[str], watched: tuple[str, ...]) -> list[str]:
    """Which of `watched` a fresh interpreter has imported after importing `modules`."""
    code = (
        "import importlib, json, sys\n"
        f"for module in {modules!r}:\n"
        "    importlib.import_module(module)\n"
        f"print(json.dumps(sorted(m for m in {list(watched)!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=ENV)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def culprits(modules: list[str], watched: tuple[str, ...]) -> dict[str, list[str]]:
    """`imported_by` for all `modules` together (one interpreter start), and module by module
    only when something was imported, so that a failure names the module that imported it."""
    if not imported_by(modules, watched):
        return {}
    return {module: found for module in modules if (found := imported_by([module], watched))}


def test_job_modules_import_no_model_library():
    assert culprits(TORCH_JOBS + MODEL_CODE, MODEL_LIBRARIES) == {}


def test_table_jobs_import_no_torch():
    assert culprits(TABLE_JOBS, ("torch", *MODEL_LIBRARIES)) == {}


def test_guided_backprop_imports_captum_when_it_runs():
    # The other side of the lazy import: the method still finds captum when it is called.
    pytest.importorskip("captum")
    code = (
        "import sys, torch\n"
        "from attrflow.methods.backprop import guided_backprop\n"
        "assert 'captum' not in sys.modules\n"
        "net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(32, 2))\n"
        "from attrflow.models.wrapper import WrappedModel\n"
        "model = WrappedModel(net, num_classes=2)\n"
        "maps = guided_backprop(model, torch.rand(2, 3, 6, 6), torch.tensor([0, 1]))\n"
        "assert 'captum' in sys.modules and maps.maps.shape == (2, 3, 6, 6)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=ENV)
    assert result.returncode == 0, result.stderr
