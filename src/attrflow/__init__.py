"""attrflow: evaluate feature-attribution methods for image classifiers.

The package root imports nothing heavy: the Snakefile imports `attrflow.catalog` and
`attrflow.config` while it plans the DAG, and those must not pay for importing torch.
"""

__version__ = "0.1.0"
