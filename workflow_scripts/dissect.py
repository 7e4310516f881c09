"""Rule dissect → attrflow.dissection.job.dissect_layer."""

from pathlib import Path

from attrflow.jobs.runtime import run_job

run_job(
    "attrflow.dissection.job:dissect_layer",
    dict(
        samples_path=snakemake.input.samples,
        model_dir=Path(snakemake.input.card).parent,
        out_path=snakemake.output[0],
        **dict(snakemake.params.setting),
    ),
    log=snakemake.log[0],
    threads=snakemake.threads,
)
