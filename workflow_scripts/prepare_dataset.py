"""Rule prepare_dataset → attrflow.jobs.prepare.prepare_dataset_store."""

from attrflow.jobs.runtime import run_job

run_job(
    "attrflow.jobs.prepare:prepare_dataset_store",
    dict(name=snakemake.wildcards.dataset, spec=snakemake.params.setting["spec"], out_path=snakemake.output[0]),
    log=snakemake.log[0],
)
