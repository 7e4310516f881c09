"""ROAR and DiffROAR (seed digest §B.16–B.17): remove pixels by attribution, retrain, evaluate.

`masking` builds the masked datasets, `retrain` trains a fresh network on them, `report` turns
the retrain results into Parquet rows, a table and a figure. The jobs are in `attrflow.jobs.roar`.
"""
