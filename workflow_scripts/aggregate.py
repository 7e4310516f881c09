"""Rule aggregate → attrflow.report.aggregate.aggregate."""

from attrflow.jobs.runtime import job_log, mark_ready

with job_log(snakemake.log[0]):
    from attrflow.report.aggregate import aggregate
    from attrflow.report.costs import write_costs

    mark_ready()

    aggregate(
        snakemake.input.scores,
        snakemake.output.scores,
        snakemake.output.summary,
        sample_filter=snakemake.params.sample_filter,
    )
    write_costs(snakemake.input.maps, snakemake.output.costs)
