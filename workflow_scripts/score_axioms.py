"""Rule score_axioms → attrflow.jobs.axioms.score_axioms."""

from attrflow.jobs.runtime import job_log, mark_ready


def paths(named) -> list[str]:
    """A named input as a list: Snakemake hands a one-file list over as a bare string."""
    return [named] if isinstance(named, str) else list(named)


with job_log(snakemake.log[0]):
    from attrflow.jobs.axioms import score_axioms

    mark_ready()

    score_axioms(
        inputs_paths=paths(snakemake.input.inputs),
        maps_paths=paths(snakemake.input.maps),
        out_path=snakemake.output[0],
        model_name=snakemake.wildcards.model,
        **dict(snakemake.params.setting),
    )
