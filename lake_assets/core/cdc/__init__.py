"""The CDC core: landing-file formats, change batches, merge semantics and engines.

Nothing here imports Dagster, so the same code runs in tests, in the Dagster assets and inside the
Spark job.
"""
