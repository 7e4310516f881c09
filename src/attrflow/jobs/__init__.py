"""Job bodies: what each workflow rule does, as plain functions with explicit arguments.

`workflow_scripts/*.py` unpack the Snakemake object and call these; tests call them directly.
"""
