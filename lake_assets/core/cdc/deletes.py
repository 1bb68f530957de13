"""Iceberg v2 position-delete files: what merge-on-read writes instead of rewriting data files.

pyiceberg 0.12 reads position deletes (so do DuckDB's `iceberg_scan` and Spark) but does not write
them (apache/iceberg-python#1078). This module writes them on the engine's own commit path: a
Parquet file of (file_path, pos) per partition, registered in a DELETES manifest of the same
snapshot that adds the batch's new rows and carries its batch id. The rows a delete file names
are the original row positions of their data files, as the Iceberg spec defines them.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import _read_deletes
from pyiceberg.manifest import (
    DataFile,
    DataFileContent,
    FileFormat,
    ManifestContent,
    ManifestEntry,
    ManifestEntryStatus,
    ManifestFile,
    ManifestWriterV2,
)
from pyiceberg.table import FileScanTask, Table, Transaction
from pyiceberg.table.snapshots import Operation, Summary
from pyiceberg.table.update.snapshot import _OverwriteFiles
from pyiceberg.typedef import Record

# Reserved field ids of the position-delete schema (Iceberg spec, "Position Delete Files").
FILE_PATH_ID, POS_ID = 2147483546, 2147483545
POSITION_DELETE_SCHEMA = pa.schema([
    pa.field("file_path", pa.string(), nullable=False, metadata={b"PARQUET:field_id": str(FILE_PATH_ID).encode()}),
    pa.field("pos", pa.int64(), nullable=False, metadata={b"PARQUET:field_id": str(POS_ID).encode()}),
])


def deleted_positions(io: FileIO, task: FileScanTask) -> pa.Array:
    """Positions of a scan task's data file that its delete files already remove (sorted, unique)."""
    parts = []
    for delete_file in task.delete_files:
        if delete_file.content != DataFileContent.POSITION_DELETES:
            raise NotImplementedError(f"{delete_file.file_path}: equality deletes are not supported by the lake's merge")
        found = _read_deletes(io, delete_file).get(task.file.file_path)
        if found is not None:
            parts.append(found.combine_chunks() if isinstance(found, pa.ChunkedArray) else found)
    if not parts:
        return pa.array([], pa.int64())
    return pc.unique(pa.concat_arrays([p.cast(pa.int64()) for p in parts])).sort()


def write_position_deletes(tbl: Table, removed: Iterable[tuple[DataFile, pa.Array]]) -> list[DataFile]:
    """One position-delete file per partition for (data file, positions) pairs; returns them as
    DataFiles to register. Positions must be original row positions in their data files."""
    # One delete file per data file: its path bounds are equal, so readers (pyiceberg's delete-file
    # index, our merges) apply it to that file alone. A delete file covering many data files is read
    # for each of them, and split by path each time: merges and scans grew with every merge.
    by_partition: dict[tuple[int, tuple, str], list[tuple[DataFile, pa.Array]]] = defaultdict(list)
    for data_file, positions in removed:
        if len(positions):
            by_partition[(data_file.spec_id, partition_values(data_file.partition), data_file.file_path)].append((data_file, positions))
    out = []
    location = tbl.location_provider()
    for (spec_id, _, _), group in by_partition.items():
        group.sort(key=lambda g: g[0].file_path)
        paths = pa.concat_arrays([pa.array([f.file_path] * len(p), pa.string()) for f, p in group])
        positions = pa.concat_arrays([p.cast(pa.int64()).sort() for _, p in group])
        rows = pa.Table.from_arrays([paths, positions], schema=POSITION_DELETE_SCHEMA)
        path = location.new_data_location(f"delete-{uuid.uuid4()}.parquet")
        buffer = pa.BufferOutputStream()
        pq.write_table(rows, buffer, compression="zstd")
        data = buffer.getvalue().to_pybytes()
        with tbl.io.new_output(path).create(overwrite=False) as out_file:
            out_file.write(data)
        size = len(data)
        referenced = group[0][0].file_path if len(group) == 1 else None
        df = DataFile.from_args(
            content=DataFileContent.POSITION_DELETES,
            file_path=path,
            file_format=FileFormat.PARQUET,
            partition=group[0][0].partition,
            record_count=rows.num_rows,
            file_size_in_bytes=size,
            lower_bounds={FILE_PATH_ID: min(paths.to_pylist()).encode(), POS_ID: _long(pc.min(positions).as_py())},
            upper_bounds={FILE_PATH_ID: max(paths.to_pylist()).encode(), POS_ID: _long(pc.max(positions).as_py())},
            referenced_data_file=referenced,
        )
        df.spec_id = spec_id
        out.append(df)
    return out


def only_for(delete_file: DataFile, data_path: str) -> bool:
    """Whether a position-delete file names this data file alone (its path bounds are that path)."""
    lo = (delete_file.lower_bounds or {}).get(FILE_PATH_ID)
    hi = (delete_file.upper_bounds or {}).get(FILE_PATH_ID)
    return lo is not None and lo == hi and lo == data_path.encode()


def partition_values(partition: Record) -> tuple:
    """A partition Record as a tuple (Record has no __iter__: tuple() walks it by index)."""
    return tuple(partition[i] for i in range(len(partition)))


def _long(n: int) -> bytes:
    return int(n).to_bytes(8, "little", signed=True)


class _DeleteManifestWriter(ManifestWriterV2):
    def content(self) -> ManifestContent:
        return ManifestContent.DELETES

    @property
    def _meta(self) -> dict[str, str]:
        return {**super()._meta, "content": "deletes"}


class OverwriteWithDeletes(_OverwriteFiles):
    """An overwrite snapshot that may also add position-delete files (pyiceberg writes only data
    manifests): removed data files, added data files and added delete files in one commit."""

    def __init__(self, transaction: Transaction, io: FileIO, snapshot_properties: dict[str, str]):
        super().__init__(operation=Operation.OVERWRITE, transaction=transaction, io=io, snapshot_properties=snapshot_properties)
        self._added_delete_files: list[DataFile] = []

    def append_delete_file(self, delete_file: DataFile) -> OverwriteWithDeletes:
        self._added_delete_files.append(delete_file)
        return self

    def _manifests(self) -> list[ManifestFile]:
        manifests = super()._manifests()
        if not self._added_delete_files:
            return manifests
        by_spec: dict[int, list[DataFile]] = defaultdict(list)
        for f in self._added_delete_files:
            by_spec[f.spec_id].append(f)
        for spec_id, files in by_spec.items():
            writer = _DeleteManifestWriter(self.spec(spec_id), self.schema(), self.new_manifest_output(), self._snapshot_id,
                                           self._compression)
            with writer:
                for f in files:
                    writer.add(ManifestEntry.from_args(status=ManifestEntryStatus.ADDED, snapshot_id=self._snapshot_id,
                                                       sequence_number=None, file_sequence_number=None, data_file=f))
            manifests.append(writer.to_manifest_file())
        return manifests

    def _existing_manifests(self) -> list[ManifestFile]:
        """pyiceberg's, but a delete manifest that loses entries (a data file's delete file replaced
        by one holding all its positions) is rewritten as a delete manifest, not a data manifest."""
        out: list[ManifestFile] = []
        snapshot = self._transaction.table_metadata.snapshot_by_name(name=self._target_branch)
        if snapshot is None:
            return out
        removed = {f.file_path for f in self._deleted_data_files}
        for manifest in snapshot.manifests(io=self._io):
            entries = manifest.fetch_manifest_entry(io=self._io, discard_deleted=True)
            kept = [e for e in entries if e.data_file.file_path not in removed]
            if len(kept) == len(entries):
                out.append(manifest)
                continue
            if not kept:
                continue
            spec = self.spec(manifest.partition_spec_id)
            writer = (_DeleteManifestWriter(spec, self.schema(), self.new_manifest_output(), self._snapshot_id, self._compression)
                      if manifest.content == ManifestContent.DELETES else self.new_manifest_writer(spec))
            with writer:
                for e in kept:
                    writer.add_entry(ManifestEntry.from_args(
                        status=ManifestEntryStatus.EXISTING, snapshot_id=e.snapshot_id, sequence_number=e.sequence_number,
                        file_sequence_number=e.file_sequence_number, data_file=e.data_file))
            out.append(writer.to_manifest_file())
        return out

    def _deleted_entries(self) -> list[ManifestEntry]:
        # Removed delete files are left out of the snapshot's DELETED entries: pyiceberg writes those
        # into a data manifest. The summary still counts them (removed-delete-files).
        removed = self._deleted_data_files
        self._deleted_data_files = {f for f in removed if f.content == DataFileContent.DATA}
        try:
            return super()._deleted_entries()
        finally:
            self._deleted_data_files = removed

    def _summary(self, snapshot_properties: dict[str, str] | None = None) -> Summary:
        added = self._added_data_files
        self._added_data_files = added + self._added_delete_files  # counted as added-delete-files
        try:
            return super()._summary(snapshot_properties or {})
        finally:
            self._added_data_files = added
