"""Rule synthesize_axioms → attrflow.jobs.axioms.synthesize_axioms."""

from pathlib import Path

from attrflow.jobs.runtime import job_log, mark_ready

with job_log(snakemake.log[0], threads=snakemake.threads):
    from attrflow.jobs.axioms import synthesize_axioms

    mark_ready()

    synthesize_axioms(
        model_dir=Path(snakemake.input.card).parent,
        out_path=snakemake.output[0],
        model_name=snakemake.wildcards.model,
        **dict(snakemake.params.setting),
    )
