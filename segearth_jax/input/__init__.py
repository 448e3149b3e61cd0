"""Dataset records, readers of the released layouts, and input pipelines."""
