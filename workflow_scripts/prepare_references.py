"""Rule prepare_references → attrflow.jobs.references.prepare_reference_store."""

from pathlib import Path

from attrflow.jobs.runtime import run_job

run_job(
    "attrflow.jobs.references:prepare_reference_store",
    dict(
        samples_path=snakemake.input.samples,
        model_dir=Path(snakemake.input.card).parent,
        out_path=snakemake.output[0],
        dataset=snakemake.wildcards.dataset,
        model_name=snakemake.wildcards.model,
        **dict(snakemake.params.setting),
    ),
    log=snakemake.log[0],
    threads=snakemake.threads,
)
