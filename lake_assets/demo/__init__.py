"""Demo and benchmark data: files written exactly as the AWS DMS S3 target writes them.

`dms_writer` writes single files, `generate` a deterministic travel-booking source with full load,
CDC rounds and late deliveries, `taxi` a 1.37M-row benchmark table. Import the modules directly.
"""
