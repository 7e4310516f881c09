"""Rule report → attrflow.report.tables.write_markdown and attrflow.report.html.write_report."""

from attrflow.jobs.runtime import job_log, mark_ready

with job_log(snakemake.log[0]):
    from pathlib import Path

    from attrflow.report.html import write_report
    from attrflow.report.tables import write_markdown

    mark_ready()

    write_markdown(
        snakemake.input.summary,
        snakemake.output.markdown,
        snakemake.input.costs,
        snakemake.input.ranks,
        scores_path=snakemake.input.scores,
    )
    write_report(
        reports=Path(snakemake.output.html).parent,
        out_html=snakemake.output.html,
        sample_stores=snakemake.input.samples,
        attribution_stores=snakemake.input.maps,
        axiom_stores=snakemake.input.axioms,
        roar_outputs=snakemake.input.roar,
        probe_outputs=snakemake.input.probes,
        dissection_outputs=snakemake.input.dissection,
    )
