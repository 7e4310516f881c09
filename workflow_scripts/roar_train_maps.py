"""Rule roar_train_maps → attrflow.jobs.roar.attribute_train_split."""

from pathlib import Path

from attrflow.jobs.runtime import run_job

run_job(
    "attrflow.jobs.roar:attribute_train_split",
    dict(
        samples_path=snakemake.input.samples,
        model_dir=Path(snakemake.input.card).parent,
        out_path=snakemake.output[0],
        dataset=snakemake.wildcards.dataset,
        model_name=snakemake.wildcards.model,
        references_path=snakemake.input.get("references"),
        **dict(snakemake.params.setting),
    ),
    log=snakemake.log[0],
    threads=snakemake.threads,
)
