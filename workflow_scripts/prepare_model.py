"""Rule prepare_model → attrflow.jobs.prepare.prepare_model_files."""

from pathlib import Path

from attrflow.jobs.runtime import run_job

setting = snakemake.params.setting
run_job(
    "attrflow.jobs.prepare:prepare_model_files",
    dict(
        name=setting["model"],
        spec=setting["spec"],
        samples_path=snakemake.input.get("samples"),
        out_dir=Path(snakemake.output.card).parent,
        seed=setting["seed"],
        threads=snakemake.threads,
    ),
    log=snakemake.log[0],
    threads=snakemake.threads,
)
