"""Network Dissection (Bau et al., 2017): which units of a layer detect which concepts.

`network_dissection` holds the algorithm (per-unit top-quantile thresholds, IoU with concept
masks, detectors); `attrflow.dissection.job` runs it on a dataset's stored concept labels for one
(dataset, model, layer) and writes the table the report reads.
"""
