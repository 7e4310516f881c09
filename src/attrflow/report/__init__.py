"""Reports: the Parquet schemas, aggregation into summaries, and human-readable tables."""
