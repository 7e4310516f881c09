import copy
from pathlib import Path

from attrflow.config import ConfigError, validate_config
from attrflow.fingerprint import remember_fingerprints_in
from attrflow.jobs import forkserver
from attrflow.plan import Plan, score_file
from attrflow.preflight import PreflightError, preflight

# A config given with --configfile replaces the embedded default instead of being merged into it
# key by key (Snakemake's default): otherwise config.yaml's selections and `models:` limits would
# leak into config/imagenet.yaml. --config overrides still apply on top.
if workflow.overwrite_configfiles:
    config = copy.deepcopy(workflow.config_settings.overwrite_config)

try:
    config = validate_config(config, workdir=Path.cwd())
except ConfigError as err:
    raise WorkflowError(str(err)) from None

# Code fingerprints are kept between planning runs, keyed by the package's content (a changed
# byte anywhere discards them): following the closures is most of planning's fixed cost.
remember_fingerprints_in(Path(".snakemake") / "attrflow")
PLAN = Plan(config, workdir=str(Path.cwd()))
RESULTS = "results"
SCRIPTS = Path(workflow.basedir) / "workflow_scripts"

# What can be checked before any job is checked here, read-only: every image of a folder opens,
# every checkpoint matches its architecture, and no finished store is damaged. A problem stops
# the run with every culprit named, before a job could delete a good output.
try:
    preflight(PLAN, RESULTS)
except PreflightError as err:
    raise WorkflowError(str(err)) from None


wildcard_constraints:
    dataset="[A-Za-z0-9_.-]+",
    model="[A-Za-z0-9_.-]+",
    references="train_pool|lpi|feature_stats",
    method="[A-Za-z0-9_.-]+",
    metric="[A-Za-z0-9_.-]+",
    shard="[0-9]+",


def final_outputs():
    # The caches are targets too: Snakemake would otherwise accept a missing intermediate
    # (a store deleted by hand or by `attrflow.clean`) as long as the reports downstream exist.
    return [
        f"{RESULTS}/reports/scores.parquet",
        f"{RESULTS}/reports/summary.parquet",
        f"{RESULTS}/reports/summary.md",
        f"{RESULTS}/reports/report.html",
        f"{RESULTS}/reports/costs.parquet",
        f"{RESULTS}/reports/comparisons.parquet",
        f"{RESULTS}/reports/ranks.parquet",
        f"{RESULTS}/reports/metric_quality.parquet",
        f"{RESULTS}/reports/metric_agreement.parquet",
        *PLAN.sample_stores(RESULTS),
        *PLAN.eval_shard_stores(RESULTS),
        *PLAN.attribution_stores(RESULTS),
        *PLAN.roar_outputs(RESULTS),
        *PLAN.axiom_stores(RESULTS),
        *PLAN.dissection_outputs(RESULTS),
    ]


def samples_store(dataset):
    return f"{RESULTS}/data/{dataset}/samples.zarr"


def eval_shard_store(dataset, shard):
    return f"{RESULTS}/data/{dataset}/eval/shard-{shard}.zarr"


def model_files(model):
    return {
        "weights": f"{RESULTS}/models/{model}/model.safetensors",
        "card": f"{RESULTS}/models/{model}/card.json",
    }


def prepare_model_inputs(wildcards):
    # `ancient` for the same reason as in attribute_inputs: adding evaluation samples must not
    # retrain; the dataset spec in params (less its evaluation count) re-runs on real changes.
    inputs = {}
    dataset = PLAN.model_dataset(wildcards.model)
    if dataset:
        inputs["samples"] = ancient(samples_store(dataset))
    weights_file = PLAN.model_spec(wildcards.model).get("checkpoint")
    if weights_file:
        inputs["checkpoint"] = weights_file
    return inputs


def references_store(dataset, model, kind):
    return f"{RESULTS}/references/{dataset}/{model}/{kind}.zarr"


def job_eval_stores(wildcards):
    # A job reads the evaluation shard stores of its samples (one unless the method's entry sets
    # `shards_per_job`): a changed image re-runs the jobs (and scores) that hold it, and a grown
    # dataset adds jobs without touching finished ones.
    return [
        eval_shard_store(wildcards.dataset, s)
        for s in PLAN.job_eval_shards(
            wildcards.dataset, int(wildcards.shard), wildcards.method
        )
    ]


def attribute_inputs(wildcards):
    return {
        "samples": job_eval_stores(wildcards),
        **model_files(wildcards.model),
        **method_references_input(wildcards),
    }


def train_maps_inputs(wildcards):
    # ROAR's train-split maps read the whole-dataset store's train split. `ancient`: a store
    # rebuilt only to add evaluation samples must not re-run them; the train split's spec is in
    # their params.
    return {
        "samples": ancient(samples_store(wildcards.dataset)),
        **model_files(wildcards.model),
        **method_references_input(wildcards),
    }


def method_references_input(wildcards):
    kind = PLAN.method_references(wildcards.method)
    if not kind:
        return {}
    return {"references": references_store(wildcards.dataset, wildcards.model, kind)}


def references_params(wildcards):
    return {
        "kind": wildcards.references,
        "params": PLAN.references_spec(wildcards.references),
        "code": PLAN.references_code,
        "device": config["device"],
        "seed": config["seed"],
        "max_batch": config["max_batch"],
    }


def attribute_params(wildcards):
    return {
        "method": wildcards.method,
        "entry": PLAN.method_entry(wildcards.method),
        "code": PLAN.method_fingerprint(wildcards.method),
        "dataset_spec": PLAN.shard_dataset_spec(wildcards.dataset),
        "sample_range": PLAN.shard_range(
            wildcards.dataset, int(wildcards.shard), wildcards.method
        ),
        **PLAN.runtime(),
    }


def eval_shard_params(wildcards):
    return PLAN.eval_shard_setting(wildcards.dataset, int(wildcards.shard))


def score_inputs(wildcards):
    kind = PLAN.method_references(wildcards.method)
    extra = (
        {"references": references_store(wildcards.dataset, wildcards.model, kind)}
        if kind
        else {}
    )
    # Stored maps of other method entries that metrics compare against (exact Shapley values).
    peers = PLAN.peer_stores(
        wildcards.dataset,
        wildcards.model,
        wildcards.method,
        int(wildcards.shard),
        RESULTS,
    )
    return {
        **extra,
        **{f"peer_{name}": path for name, path in peers.items()},
        "samples": job_eval_stores(wildcards),
        **model_files(wildcards.model),
        "maps": f"{RESULTS}/attributions/{wildcards.dataset}/{wildcards.model}/{wildcards.method}/shard-{wildcards.shard}.zarr",
    }


def score_params(wildcards):
    return PLAN.score_setting(
        wildcards.dataset, wildcards.model, wildcards.method, int(wildcards.shard)
    )


def dataset_params(wildcards):
    return PLAN.dataset_setting(wildcards.dataset)


def prepare_model_params(wildcards):
    return PLAN.model_setting(wildcards.model)


# Jobs that run models claim the `gpu` resource only when they will really use a GPU, so a
# CPU-only machine runs them in parallel while a workstation caps them at its GPU count.
GPU_PER_JOB = PLAN.gpu_per_job()


# Baseline-bias probes: requested only when a selected `corrupted` dataset has its clean base
# selected too.
def probe_report_outputs():
    if not PLAN.corrupted_datasets():
        return []
    return [
        f"{RESULTS}/reports/probes.md",
        f"{RESULTS}/reports/probes.parquet",
        f"{RESULTS}/reports/probes_bias.parquet",
    ]


# Axiom synthesis (rules/axioms.smk)
def synthesize_axioms_params(wildcards):
    return {
        "entry": wildcards.scenario,
        "setting": PLAN.axiom_setting(wildcards.model, wildcards.scenario),
        "code": PLAN.axioms_code["synthesis"],
        **PLAN.runtime(),
    }


def axiom_references(wildcards):
    # Methods with a reference set (EG, LPI, DeepSHAP, IBA) draw it from the model's training
    # dataset: axiom inputs belong to no dataset of their own.
    kind = PLAN.method_references(wildcards.method)
    dataset = PLAN.model_dataset(wildcards.model)
    if kind and dataset:
        return {"references": references_store(dataset, wildcards.model, kind)}
    return {}


def attribute_axioms_params(wildcards):
    return {
        "entries": PLAN.axiom_entries(),
        "method": wildcards.method,
        "method_entry": PLAN.method_entry(wildcards.method),
        "code": PLAN.method_fingerprint(wildcards.method),
        **PLAN.runtime(),
    }


def score_axioms_params(wildcards):
    return {
        "entries": PLAN.axiom_entries(),
        "methods": {
            me: {"fn": PLAN.method_entry(me)["fn"], "code": PLAN.method_fingerprint(me)}
            for me in PLAN.axiom_methods(wildcards.model)
        },
        "metric_code": PLAN.axioms_code["metrics"],
    }


# Network Dissection (rules/dissection.smk)
def dissection_params(wildcards):
    return PLAN.dissection_setting(wildcards.dataset, wildcards.model, wildcards.layer)
