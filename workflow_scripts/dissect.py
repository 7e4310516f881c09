"""Rule dissect → attrflow.dissection.job.dissect_layer."""

from pathlib import Path

from attrflow.jobs.runtime import job_log, mark_ready

with job_log(snakemake.log[0], threads=snakemake.threads):
    from attrflow.dissection.job import dissect_layer

    mark_ready()

    dissect_layer(
        samples_path=snakemake.input.samples,
        model_dir=Path(snakemake.input.card).parent,
        out_path=snakemake.output[0],
        **dict(snakemake.params.setting),
    )
