"""Rule prepare_eval_shard → attrflow.jobs.prepare.prepare_eval_shard."""

from attrflow.jobs.runtime import run_job

setting = snakemake.params.setting
run_job(
    "attrflow.jobs.prepare:prepare_eval_shard",
    dict(
        name=snakemake.wildcards.dataset,
        spec=setting["dataset_spec"],
        sample_range=setting["sample_range"],
        shard=int(snakemake.wildcards.shard),
        out_path=snakemake.output[0],
    ),
    log=snakemake.log[0],
)
