"""Rule score_axioms → attrflow.jobs.axioms.score_axioms."""

from attrflow.jobs.runtime import run_job


def paths(named) -> list[str]:
    """A named input as a list: Snakemake hands a one-file list over as a bare string."""
    return [named] if isinstance(named, str) else list(named)


run_job(
    "attrflow.jobs.axioms:score_axioms",
    dict(
        inputs_paths=paths(snakemake.input.inputs),
        maps_paths=paths(snakemake.input.maps),
        out_path=snakemake.output[0],
        model_name=snakemake.wildcards.model,
        **dict(snakemake.params.setting),
    ),
    log=snakemake.log[0],
)
