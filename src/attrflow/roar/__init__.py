"""ROAR and DiffROAR (Hooker et al., 2019; Shah et al., 2021): remove pixels by attribution, retrain, evaluate.

`masking` builds the masked datasets, `retrain` trains a fresh network on them, `report` turns
the retrain results into Parquet rows, a table and a figure. The jobs are in `attrflow.jobs.roar`.
"""
