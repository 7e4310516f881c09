"""Rule prepare_references → attrflow.jobs.references.prepare_reference_store."""

from pathlib import Path

from attrflow.jobs.runtime import job_log, mark_ready

with job_log(snakemake.log[0], threads=snakemake.threads):
    from attrflow.jobs.references import prepare_reference_store

    mark_ready()

    prepare_reference_store(
        samples_path=snakemake.input.samples,
        model_dir=Path(snakemake.input.card).parent,
        out_path=snakemake.output[0],
        dataset=snakemake.wildcards.dataset,
        model_name=snakemake.wildcards.model,
        **dict(snakemake.params.setting),
    )
