"""Rule prepare_eval_shard → attrflow.jobs.prepare.prepare_eval_shard."""

from attrflow.jobs.runtime import job_log, mark_ready

with job_log(snakemake.log[0]):
    from attrflow.jobs.prepare import prepare_eval_shard

    mark_ready()

    setting = snakemake.params.setting
    prepare_eval_shard(
        name=snakemake.wildcards.dataset,
        spec=setting["dataset_spec"],
        sample_range=setting["sample_range"],
        shard=int(snakemake.wildcards.shard),
        out_path=snakemake.output[0],
    )
