"""Rule prepare_model → attrflow.jobs.prepare.prepare_model_files."""

from pathlib import Path

from attrflow.jobs.runtime import job_log, mark_ready

with job_log(snakemake.log[0], threads=snakemake.threads):
    from attrflow.jobs.prepare import prepare_model_files

    mark_ready()

    setting = snakemake.params.setting
    prepare_model_files(
        name=setting["model"],
        spec=setting["spec"],
        samples_path=snakemake.input.get("samples"),
        out_dir=Path(snakemake.output.card).parent,
        seed=setting["seed"],
        threads=snakemake.threads,
    )
