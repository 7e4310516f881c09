"""Rule synthesize_axioms → attrflow.jobs.axioms.synthesize_axioms."""

from pathlib import Path

from attrflow.jobs.runtime import run_job

run_job(
    "attrflow.jobs.axioms:synthesize_axioms",
    dict(
        model_dir=Path(snakemake.input.card).parent,
        out_path=snakemake.output[0],
        model_name=snakemake.wildcards.model,
        **dict(snakemake.params.setting),
    ),
    log=snakemake.log[0],
    threads=snakemake.threads,
)
