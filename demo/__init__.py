"""The demo (`python -m demo`): a travel-booking database's DMS files through every layer of a local lake.

`dms_writer` writes single files exactly as the AWS DMS S3 target writes them (tests and benches use
it too), `generate` a deterministic travel-booking source with full load, CDC rounds and late
deliveries, `dbt_report` prints what each consumer sees. Not part of the installed package.
"""
