"""Rule score → attrflow.jobs.score.score_method."""

from pathlib import Path

from attrflow.jobs.runtime import job_log, mark_ready

with job_log(snakemake.log[0], threads=snakemake.threads):
    from attrflow.jobs.score import score_method

    mark_ready()

    setting = dict(snakemake.params.setting)
    score_method(
        samples_path=snakemake.input.samples,
        model_dir=Path(snakemake.input.card).parent,
        map_paths=list(snakemake.input.maps),
        references_path=snakemake.input.get("references"),
        out_paths={Path(p).stem: p for p in snakemake.output},
        **setting,
    )
