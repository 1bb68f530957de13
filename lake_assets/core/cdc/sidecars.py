"""The lake's own tables beside each source-aligned table: tombstones and quarantined rows.

Both are written before the main table's commit and carry the batch id, so resuming a batch after a
crash neither repeats nor loses them. A batch that is abandoned before its main commit (its files
failed or are merged again under new batch ids) has its sidecar writes rolled back first, so they
never outlive the batch that made them.
"""

from __future__ import annotations

import datetime as dt
import warnings

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import AlwaysTrue, EqualTo

from lake_assets.core.cdc.batch import SEQ
from lake_assets.core.cdc.dms import QuarantinedRow
from lake_assets.core.cdc.iceberg import BATCH_ID, batch_summary, committed_batches, conform, load_or_create, load_table
from lake_assets.core.naming import tombstone_identifier
from lake_assets.core.registry import TableConfig

DELETED_AT = "_lake_deleted_at"

QUARANTINE_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("file_version", pa.int32()),
        ("row", pa.int64()),
        ("reason", pa.string()),
        ("raw", pa.string()),
        ("batch_id", pa.string()),
        ("quarantined_at", pa.timestamp("us", tz="UTC")),
    ]
)


def write_quarantine(
    catalog: Catalog,
    table: TableConfig,
    batch_id: str,
    rows: list[tuple[str, QuarantinedRow]],
    now: dt.datetime,
    versions: dict[str, int] | None = None,
) -> int:
    if not rows:
        return 0
    tbl = load_or_create(catalog, table.quarantine_identifier, QUARANTINE_SCHEMA)
    if batch_id in committed_batches(tbl):
        return len(rows)
    versions = versions or {}
    data = pa.table(
        {
            "file": [f for f, _ in rows],
            "file_version": [versions.get(f, 1) for f, _ in rows],
            "row": [q.row for _, q in rows],
            "reason": [q.reason for _, q in rows],
            "raw": [q.raw for _, q in rows],
            "batch_id": [batch_id] * len(rows),
            "quarantined_at": [now] * len(rows),
        },
        schema=QUARANTINE_SCHEMA,
    )
    files = sorted({f for f, _ in rows})
    tbl.append(conform(data, tbl.schema().as_arrow()), snapshot_properties=batch_summary(batch_id, files, {"quarantined": len(rows)}))
    return len(rows)


def load_tombstones(catalog: Catalog, table: TableConfig, *, now: dt.datetime | None = None) -> pa.Table | None:
    """The table's tombstones; with `now`, only those still within tombstone_retention_days (an
    expired tombstone guards nothing, even before a batch gets round to dropping it)."""
    tbl = load_table(catalog, tombstone_identifier(table.source, table.name))
    if tbl is None:
        return None
    rows = tbl.scan().to_arrow()
    if now is None or rows.num_rows == 0:
        return rows
    cutoff = now - dt.timedelta(days=table.tombstone_retention_days)
    return rows.filter(pc.greater_equal(rows.column(DELETED_AT), pa.scalar(cutoff, rows.column(DELETED_AT).type)))


def update_tombstones(
    catalog: Catalog,
    table: TableConfig,
    batch_id: str,
    *,
    old: pa.Table | None,
    deleted: pa.Table,
    rewritten_keys: pa.Table,
    reload: bool,
    now: dt.datetime,
) -> int:
    """Keep one tombstone per deleted key (its delete's position) for the retention period.

    deleted: key columns + _lake_seq of applied deletes; rewritten_keys: keys written by this batch,
    whose older tombstones are no longer needed (the table row's position now guards them).
    Returns the number of tombstones kept.
    """
    keys = list(table.primary_key)
    identifier = tombstone_identifier(table.source, table.name)
    if old is None and deleted.num_rows == 0 and (not reload or load_table(catalog, identifier) is None):
        return 0  # nothing to keep, and (on a reload) no old load's tombstones to clear
    cutoff = now - dt.timedelta(days=table.tombstone_retention_days)
    new = pa.table({**{k: deleted.column(k) for k in keys}, SEQ: deleted.column(SEQ)}).append_column(
        DELETED_AT, pa.array([now] * deleted.num_rows, pa.timestamp("us", tz="UTC"))
    )
    con = duckdb.connect()
    con.register("new", new)
    con.register("rw", pa.table({k: rewritten_keys.column(k) for k in keys}) if rewritten_keys.num_rows else new.select(keys).slice(0, 0))
    kcols = ", ".join(f'"{k}"' for k in keys)

    def on(a: str, b: str) -> str:
        return " AND ".join(f'{a}."{k}" = {b}."{k}"' for k in keys)

    if old is not None and not reload and old.num_rows:
        con.register("old", old.select(keys + [SEQ, DELETED_AT]))
        union = "SELECT * FROM old UNION ALL SELECT * FROM new"
    else:
        union = "SELECT * FROM new"
    kept = con.execute(
        f"""SELECT u.* FROM ({union}) u
        WHERE u.{DELETED_AT} >= ? AND NOT EXISTS (SELECT 1 FROM rw WHERE {on('rw', 'u')})
        QUALIFY row_number() OVER (PARTITION BY {kcols} ORDER BY u.{SEQ} DESC) = 1""",
        [cutoff],
    ).arrow().read_all()
    con.close()
    unchanged = old is not None and not reload and deleted.num_rows == 0 and kept.num_rows == old.num_rows
    if unchanged:
        return kept.num_rows
    tbl = load_or_create(catalog, identifier, new.schema)
    if batch_id in committed_batches(tbl):
        return kept.num_rows
    txn = tbl.transaction()
    with warnings.catch_warnings():  # an empty tombstone table "matches no records": expected
        warnings.simplefilter("ignore", UserWarning)
        txn.overwrite(conform(kept, txn.table_metadata.schema().as_arrow()),
                      snapshot_properties=batch_summary(batch_id, [], {"tombstones": kept.num_rows}))
    txn.commit_transaction()
    return kept.num_rows


def update_delete_events(catalog: Catalog, table: TableConfig, batch_id: str, *, old: pa.Table | None,
                         deletes: pa.Table, reload: bool, now: dt.datetime) -> int:
    """scd2 tables keep every delete for the retention period, not one per key: a late change that
    lands between two deletes of a key is closed by the later one (cdc/scd2.py).

    deletes: key columns, _lake_seq and _valid_to of this batch's deletes. Returns the number kept."""
    keys = list(table.primary_key)
    identifier = tombstone_identifier(table.source, table.name)
    if deletes.num_rows == 0 and (not reload or load_table(catalog, identifier) is None):
        return 0 if old is None else old.num_rows  # nothing new; expired ones go with the next write
    new = deletes.append_column(DELETED_AT, pa.array([now] * deletes.num_rows, pa.timestamp("us", tz="UTC")))
    kept = new
    if old is not None and not reload and old.num_rows:
        cutoff = pa.scalar(now - dt.timedelta(days=table.tombstone_retention_days), old.column(DELETED_AT).type)
        fresh = old.filter(pc.greater_equal(old.column(DELETED_AT), cutoff)).select(new.schema.names)
        known = set(zip(*(fresh.column(c).to_pylist() for c in keys + [SEQ])))
        is_new = [k not in known for k in zip(*(new.column(c).to_pylist() for c in keys + [SEQ]))]
        kept = pa.concat_tables([fresh, new.filter(pa.array(is_new, pa.bool_()))], promote_options="permissive")
    tbl = load_or_create(catalog, identifier, new.schema)
    if batch_id in committed_batches(tbl):
        return kept.num_rows
    txn = tbl.transaction()
    with warnings.catch_warnings():  # an empty tombstone table "matches no records": expected
        warnings.simplefilter("ignore", UserWarning)
        txn.overwrite(conform(kept, txn.table_metadata.schema().as_arrow()),
                      snapshot_properties=batch_summary(batch_id, [], {"tombstones": kept.num_rows}))
    txn.commit_transaction()
    return kept.num_rows


def rollback_sidecars(catalog: Catalog, table: TableConfig, batch_id: str) -> list[str]:
    """Undo what an abandoned (never committed) batch wrote to the sidecar tables. Returns what it undid."""
    undone = []
    tomb = load_table(catalog, tombstone_identifier(table.source, table.name))
    snap = tomb.current_snapshot() if tomb is not None else None
    if tomb is not None and snap is not None and (snap.summary.additional_properties if snap.summary else {}).get(BATCH_ID) == batch_id:
        if snap.parent_snapshot_id is not None:
            tomb.manage_snapshots().rollback_to_snapshot(snap.parent_snapshot_id).commit()
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                tomb.delete(AlwaysTrue(), snapshot_properties=batch_summary(f"rollback-{batch_id}", [], {}))
        undone.append(f"tombstones written by batch {batch_id}")
    quarantine = load_table(catalog, table.quarantine_identifier)
    if quarantine is not None and batch_id in committed_batches(quarantine):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            # EqualTo(term, literal) is pyiceberg's own __init__; mypy sees only the pydantic fields.
            by_batch = EqualTo("batch_id", batch_id)  # type: ignore[call-arg, misc, unused-ignore]
            quarantine.delete(by_batch, snapshot_properties=batch_summary(f"rollback-{batch_id}", [], {}))
        undone.append(f"quarantined rows written by batch {batch_id}")
    return undone


def drop_sidecars(catalog: Catalog, table: TableConfig) -> None:
    for identifier in (tombstone_identifier(table.source, table.name), table.quarantine_identifier):
        if load_table(catalog, identifier) is not None:
            catalog.drop_table(identifier)
