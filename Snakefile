"""attrflow: evaluate feature-attribution methods for image classifiers.

Rules are wiring only; everything they decide or compute lives in src/attrflow.
"""

from snakemake.utils import min_version

min_version("9.19")


# The embedded default; `--configfile other.yaml` replaces it (see rules/common.smk).
configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/attribution.smk"
include: "rules/metrics.smk"
include: "rules/axioms.smk"
include: "rules/report.smk"
include: "rules/roar.smk"
include: "rules/probes.smk"
include: "rules/dissection.smk"


# A local run's torch jobs start as forks of one process that has imported torch already,
# instead of paying the imports in every job (attrflow.jobs.forkserver; same results).
onstart:
    forkserver.start(workflow)


onsuccess:
    forkserver.stop()


onerror:
    forkserver.stop()


rule all:
    default_target: True
    input:
        final_outputs(),
        probe_report_outputs(),
