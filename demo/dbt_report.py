"""Demo helper for the dbt layers: print a sample of every consumer dataset the governance policy
declares, read back from the Iceberg catalog."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from pyiceberg.exceptions import NoSuchTableError

from lake_assets.core import governance
from lake_assets.core.deployment import local_catalog
from lake_assets.core.naming import consumer_namespace
from lake_assets.core.settings import current_settings

MAX_WIDTH = 22


def _cell(value) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= MAX_WIDTH else text[: MAX_WIDTH - 1] + "…"


def _print_table(rows: list[dict], columns: list[str], out: TextIO) -> None:
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths)), file=out)
    print("  " + "  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)), file=out)


def print_consumer_samples(lake_home: str | Path, limit: int = 5, out: TextIO = sys.stdout) -> int:
    """Print the first `limit` rows of each consumer dataset; return the number of datasets found."""
    lake_home = Path(lake_home)
    policy = governance.load_policy()
    if not (lake_home / "catalog.db").exists():
        print(f"no Iceberg catalog at {lake_home}/catalog.db: consumer datasets not built yet", file=out)
        return 0
    catalog = local_catalog(lake_home)
    found = 0
    for cname, consumer in policy.consumers.items():
        print(f"\n== consumer {cname} (namespace {consumer_namespace(cname)}) ==", file=out)
        if consumer.description:
            print(f"   {consumer.description}", file=out)
        for dname, dataset in consumer.datasets.items():
            identifier = f"{consumer_namespace(cname)}.{dname}"
            try:
                table = catalog.load_table(identifier)
            except NoSuchTableError:
                print(f"\n-- {identifier}: not built yet (run the dbt layers)", file=out)
                continue
            found += 1
            data = table.scan().to_arrow()
            rules = []
            for name, rule in dataset.columns.items():
                if rule.mask not in (None, "none"):
                    rules.append(f"{rule.as_ or name}={rule.mask}")
            where = governance.row_filter_sql(dataset)
            print(
                f"\n-- {identifier}: {data.num_rows} rows from aggregated.{dataset.from_}"
                f"; masks: {', '.join(rules) or 'none'}; rows: {where or 'all'}",
                file=out,
            )
            _print_table(data.slice(0, limit).to_pylist(), data.column_names, out)
    return found


def empty_consumer_datasets(lake_home: str | Path) -> list[str]:
    """Consumer datasets that were built but hold no rows: a policy whose filter matches nothing in the
    data (a wrong region code, say) leaks nothing but serves nothing either. Row counts come from the
    snapshot summary, without a scan."""
    catalog = local_catalog(Path(lake_home))
    empty = []
    for cname, consumer in governance.load_policy().consumers.items():
        for dname in consumer.datasets:
            identifier = f"{consumer_namespace(cname)}.{dname}"
            try:
                snap = catalog.load_table(identifier).current_snapshot()
            except NoSuchTableError:
                continue
            if snap is None or int((snap.summary.additional_properties if snap.summary else {}).get("total-records", "0")) == 0:
                empty.append(identifier)
    return empty


if __name__ == "__main__":
    home = Path(sys.argv[1]) if len(sys.argv) > 1 else current_settings().home
    print_consumer_samples(home)
