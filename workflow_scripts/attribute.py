"""Rule attribute → attrflow.jobs.attribute.attribute_shard."""

from pathlib import Path

from attrflow.jobs.runtime import run_job

run_job(
    "attrflow.jobs.attribute:attribute_shard",
    dict(
        samples_path=list(snakemake.input.samples),
        model_dir=Path(snakemake.input.card).parent,
        out_path=snakemake.output[0],
        dataset=snakemake.wildcards.dataset,
        model_name=snakemake.wildcards.model,
        shard=int(snakemake.wildcards.shard),
        references_path=snakemake.input.get("references"),
        **dict(snakemake.params.setting),
    ),
    log=snakemake.log[0],
    threads=snakemake.threads,
)
