"""Rule prepare_dataset → attrflow.jobs.prepare.prepare_dataset_store."""

from attrflow.jobs.runtime import job_log, mark_ready

with job_log(snakemake.log[0]):
    from attrflow.jobs.prepare import prepare_dataset_store

    mark_ready()

    prepare_dataset_store(
        name=snakemake.wildcards.dataset,
        spec=snakemake.params.setting["spec"],
        out_path=snakemake.output[0],
    )
