# Axiom synthesis ("Do Explanations Explain? Model Knows Best"): per (model, axiom entry) the
# generated inputs; per (model, method) the maps for both classes on every entry; per model the
# scores of every method on every entry (few jobs: each costs seconds of start-up).
# Planned only when run.axioms selects entries; the logic is in attrflow.jobs.axioms.


wildcard_constraints:
    scenario="[A-Za-z0-9_.-]+",


rule synthesize_axioms:
    input:
        **model_files("{model}"),
    output:
        directory(f"{RESULTS}/axioms/{{model}}/{{scenario}}/inputs.zarr"),
    log:
        "logs/synthesize_axioms/{model}/{scenario}.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthesize_axioms/{{model}}/{{scenario}}.tsv"
    conda:
        "../envs/attrflow.yaml"
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    params:
        setting=synthesize_axioms_params,
    script:
        "../workflow_scripts/synthesize_axioms.py"


rule attribute_axioms:
    input:
        unpack(axiom_references),
        **model_files("{model}"),
        inputs=lambda wildcards: PLAN.axiom_inputs(wildcards.model, RESULTS),
    output:
        directory(f"{RESULTS}/axioms/{{model}}/maps/{{method}}.zarr"),
    log:
        "logs/attribute_axioms/{model}/{method}.log",
    benchmark:
        f"{RESULTS}/benchmarks/attribute_axioms/{{model}}/{{method}}.tsv"
    conda:
        "../envs/attrflow.yaml"
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    params:
        setting=attribute_axioms_params,
    script:
        "../workflow_scripts/attribute_axioms.py"


rule score_axioms:
    input:
        inputs=lambda wildcards: PLAN.axiom_inputs(wildcards.model, RESULTS),
        maps=lambda wildcards: PLAN.axiom_maps(wildcards.model, RESULTS),
    output:
        f"{RESULTS}/axioms/{{model}}/scores.parquet",
    log:
        "logs/score_axioms/{model}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score_axioms/{{model}}.tsv"
    # Seconds of reading stores and comparing maps: run on the submitting node, not as a job.
    localrule: True
    conda:
        "../envs/attrflow.yaml"
    threads: 1
    params:
        setting=score_axioms_params,
    script:
        "../workflow_scripts/score_axioms.py"
