"""Rule attribute_axioms → attrflow.jobs.axioms.attribute_axioms."""

from pathlib import Path

from attrflow.jobs.runtime import run_job


def paths(named) -> list[str]:
    """A named input as a list: Snakemake hands a one-file list over as a bare string."""
    return [named] if isinstance(named, str) else list(named)


run_job(
    "attrflow.jobs.axioms:attribute_axioms",
    dict(
        inputs_paths=paths(snakemake.input.inputs),
        model_dir=Path(snakemake.input.card).parent,
        out_path=snakemake.output[0],
        model_name=snakemake.wildcards.model,
        references_path=snakemake.input.get("references"),
        **dict(snakemake.params.setting),
    ),
    log=snakemake.log[0],
    threads=snakemake.threads,
)
