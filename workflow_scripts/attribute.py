"""Rule attribute → attrflow.jobs.attribute.attribute_shard."""

from pathlib import Path

from attrflow.jobs.runtime import job_log, mark_ready

with job_log(snakemake.log[0], threads=snakemake.threads):
    from attrflow.jobs.attribute import attribute_shard

    mark_ready()

    setting = dict(snakemake.params.setting)
    attribute_shard(
        samples_path=list(snakemake.input.samples),
        model_dir=Path(snakemake.input.card).parent,
        out_path=snakemake.output[0],
        dataset=snakemake.wildcards.dataset,
        model_name=snakemake.wildcards.model,
        shard=int(snakemake.wildcards.shard),
        references_path=snakemake.input.get("references"),
        **setting,
    )
