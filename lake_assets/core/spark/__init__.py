"""The Spark merge engine's side of the process boundary: the PySpark job and the configuration it runs with.

`merge_job.py` is the script `spark-submit` runs (locally, in tests and on EMR Serverless); `conf.py`
says where the jars are and how Spark and pyiceberg both see the Iceberg catalog `lake`.
Importing this package does not import pyspark or Dagster.
"""
