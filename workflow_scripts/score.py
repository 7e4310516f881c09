"""Rule score → attrflow.jobs.score.score_shard."""

from pathlib import Path

from attrflow.jobs.runtime import run_job

run_job(
    "attrflow.jobs.score:score_shard",
    dict(
        samples_path=list(snakemake.input.samples),
        model_dir=Path(snakemake.input.card).parent,
        maps_path=snakemake.input.maps,
        references_path=snakemake.input.get("references"),
        peer_paths={
            key.removeprefix("peer_"): list(paths)
            for key, paths in snakemake.input.items()
            if key.startswith("peer_")
        },
        out_path=snakemake.output[0],
        **dict(snakemake.params.setting),
    ),
    log=snakemake.log[0],
    threads=snakemake.threads,
)
