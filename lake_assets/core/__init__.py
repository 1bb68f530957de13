"""The lake's own logic, free of Dagster: settings, names, the table registry, the landing zone, the
file ledger and the CDC core. The Dagster layer (`lake_assets`) and the resources (`resources`) build
on it; nothing here imports them."""
