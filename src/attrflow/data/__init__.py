"""Datasets: adapters that turn a config entry into sample sets, and the sample store."""
