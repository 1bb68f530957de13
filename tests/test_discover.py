"""Schema discovery: the draft registry YAML `python -m lake_assets.discover` writes from landed files
(DMS, Debezium, Hive-partitioned and plain file drops, local and S3), and that a draft with its keys
filled in is a registry the lake loads and ingests to the source's state."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import re
import subprocess
import sys
import uuid
import zipfile
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demo.dms_writer import cdc_file_name, date_folder, load_file_name, write_dms_file
from lake_assets.core.deployment import REPO_ROOT
from lake_assets.core.registry import RegistryError, load_registry
from lake_assets.discover import DiscoveryError, discover, main
from tests.lakehelpers import make_lake

ORDERS = [("order_id", "long"), ("customer", "string"), ("total", "decimal(10,2)"), ("placed_at", "timestamp"),
          ("delivery", "date")]
PAYMENTS = [("payment_id", "long"), ("order_id", "long"), ("amount", "decimal(12,2)"), ("method", "string")]
T0 = dt.datetime(2026, 11, 21, 10, 15)


def _order(i: int, customer: str, total: str, op: str | None = None) -> dict:
    row = {"order_id": i, "customer": customer, "total": Decimal(total), "placed_at": T0 + dt.timedelta(minutes=i),
           "delivery": dt.date(2026, 12, i)}
    return row | ({"Op": op} if op else {})


def _payment(i: int, order: int, amount: str, method: str | None, op: str | None = None) -> dict:
    return {"payment_id": i, "order_id": order, "amount": Decimal(amount), "method": method} | ({"Op": op} if op else {})


def land_dms_source(landing: Path) -> None:
    """shop: orders as DMS Parquet (full load, then CDC in date folders), payments as header-less gzip CSV."""
    orders = landing / "shop" / "public" / "orders"
    write_dms_file(orders / load_file_name(1), [_order(1, "ann", "10.00"), _order(2, "bob", "20.50"), _order(3, "cy", "3.25")],
                   ORDERS, cdc=False)
    later = T0 + dt.timedelta(hours=1)
    write_dms_file(orders / date_folder(later) / cdc_file_name(later),
                   [_order(2, "bob", "22.00", "U"), _order(3, "cy", "3.25", "D"), _order(4, "dee", "4.40", "I")], ORDERS, cdc=True)
    payments = landing / "shop" / "billing" / "PAYMENTS"
    write_dms_file(payments / load_file_name(1), [_payment(1, 1, "10.00", "card"), _payment(2, 2, "20.50", None)],
                   PAYMENTS, fmt="csv", cdc=False, gzip=True, null_marker="NULL")
    write_dms_file(payments / cdc_file_name(later), [_payment(2, 2, "22.00", "cash", "U"), _payment(3, 4, "4.40", "card", "I")],
                   PAYMENTS, fmt="csv", cdc=True, gzip=True, null_marker="NULL")


# The draft for land_dms_source's files, as README.md shows it ("Discovering a new source").
DMS_DRAFT = """\
# Draft registry for source shop, discovered by `python -m lake_assets.discover LANDING`.
# Read 3 file(s) per table folder at most. Review every TODO, then move the file to a registry
# directory (LAKE_SOURCES_DIR); primary_key: [] is refused until a key is filled in.
source: shop
defaults:
  mode: current
  refresh: on_arrival
tables:

  # shop/billing/PAYMENTS/: 2 file(s), sampled 2 (20261121-111500000.csv.gz, LOAD00000001.csv.gz)
  - name: payments
    schema: billing
    source_table: "PAYMENTS"
    primary_key: []  # TODO: primary_key: the columns that identify a row (the files do not say)
    format: csv  # AWS DMS files
    load: cdc
    csv: {header: false, null_marker: "NULL"}
    # TODO: header-less CSV: name the columns (in file order); DMS writes them in the source table's order
    columns:
      - {name: column_1, type: long}
      - {name: column_2, type: long}
      - {name: column_3, type: "decimal(18,2)"}  # TODO: decimal from the text's fixed scale: check the source's precision
      - {name: column_4, type: string}

  # shop/public/orders/: 2 file(s), sampled 2 (20261121-111500000.parquet, LOAD00000001.parquet)
  - name: orders
    schema: public
    primary_key: []  # TODO: primary_key: the columns that identify a row (the files do not say)
    format: parquet  # AWS DMS files
    load: cdc
    columns:
      - {name: order_id, type: long}
      - {name: customer, type: string}
      - {name: total, type: "decimal(10,2)"}
      - {name: placed_at, type: timestamp}
      - {name: delivery, type: date}
"""


def fill(draft: str, keys: dict[str, list[str]], **replace: str) -> str:
    """The draft as a reviewer leaves it: each table's TODO primary key filled in, texts replaced."""
    for table, key in keys.items():
        at = draft.index(f"  - name: {table}\n")
        todo = draft.index("primary_key: []", at)
        end = draft.index("\n", todo)
        draft = draft[:todo] + f"primary_key: [{', '.join(key)}]" + draft[end:]
    for old, new in replace.items():
        assert old in draft, old
        draft = draft.replace(old, new)
    return draft


def _draft(path: Path | str, **kw) -> str:
    return discover(str(path), **kw)[0]


def _registry(tmp_path: Path, text: str, name: str = "shop"):
    d = tmp_path / f"sources-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    (d / f"{name}.yaml").write_text(text)
    return load_registry([d], strict=True, cache=False)


def _table(text: str, name: str) -> str:
    """The lines of one drafted table, from its comment to the next table."""
    m = re.search(rf"(  # [^\n]*\n(?:  # NOTE[^\n]*\n)*  - name: {name}\n.*?)(?=\n\n|\Z)", text, re.S)
    assert m, text
    return m.group(1).rstrip("\n")


def test_a_dms_source_is_drafted_with_columns_types_and_todos(tmp_path):
    landing = tmp_path / "landing"
    land_dms_source(landing)
    draft = _draft(landing)
    assert draft == DMS_DRAFT.replace("LANDING", str(landing))


def test_the_draft_is_refused_until_keys_are_filled_then_ingests_to_the_sources_state(tmp_path):
    home = tmp_path / "lake"
    land_dms_source(home / "landing")
    draft = _draft(home / "landing")
    with pytest.raises(RegistryError, match=r"table 'payments': field primary_key: primary_key needs at least one column"):
        _registry(tmp_path, draft)

    reviewed = fill(draft, {"orders": ["order_id"], "payments": ["payment_id"]},
                    **{f"name: column_{i},": f"name: {n}," for i, (n, _) in enumerate(PAYMENTS, start=1)})
    registry = _registry(tmp_path, reviewed)
    assert {t.identifier: t.primary_key for t in registry.tables} == {"shop.orders": ("order_id",), "shop.payments": ("payment_id",)}

    lake = make_lake(home, {"shop": reviewed})
    report, runs = lake.ingest()
    assert report.unroutable == [] and sum(report.recorded.values()) == 4
    assert all(not r.failed_files for r in runs.values()), runs
    orders = lake.rows("shop.orders")
    assert sorted((r["order_id"], r["customer"], r["total"], r["placed_at"], r["delivery"]) for r in orders) == [
        (1, "ann", Decimal("10.00"), T0 + dt.timedelta(minutes=1), dt.date(2026, 12, 1)),
        (2, "bob", Decimal("22.00"), T0 + dt.timedelta(minutes=2), dt.date(2026, 12, 2)),
        (4, "dee", Decimal("4.40"), T0 + dt.timedelta(minutes=4), dt.date(2026, 12, 4)),
    ]
    payments = lake.rows("shop.payments")
    assert sorted((r["payment_id"], r["order_id"], r["amount"], r["method"]) for r in payments) == [
        (1, 1, Decimal("10.00"), "card"), (2, 2, Decimal("22.00"), "cash"), (3, 4, Decimal("4.40"), "card")]


def test_the_command_writes_the_draft_from_a_table_folder(tmp_path):
    landing = tmp_path / "landing"
    land_dms_source(landing)
    out = tmp_path / "draft.yaml"
    done = subprocess.run([sys.executable, "-m", "lake_assets.discover", str(landing / "shop" / "public" / "orders"),
                           "--out", str(out), "--sample", "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 table(s) drafted" in done.stderr and "1 need a primary_key" in done.stderr
    text = out.read_text()
    # The folder's own names give source, schema and table; one file read, the full load.
    assert "source: shop\n" in text and "  - name: orders\n    schema: public\n" in text
    assert "# shop/public/orders/: 2 file(s), sampled 1 (LOAD00000001.parquet)" in text
    assert "Read 1 file(s) per table folder" in text


def test_parquet_key_metadata_gives_the_primary_key(tmp_path):
    folder = tmp_path / "landing" / "erp" / "dbo" / "items"
    folder.mkdir(parents=True)
    t = pa.table({"tenant": pa.array([1], pa.int32()), "item_no": ["a"], "qty": pa.array([2], pa.int16())})
    pq.write_table(t.replace_schema_metadata({"primary_key": json.dumps(["TENANT", "ITEM_NO"])}), folder / "LOAD00000001.parquet")
    draft = _draft(tmp_path / "landing")
    assert "    primary_key: [tenant, item_no]  # from the Parquet files' key metadata\n" in draft
    assert "      - {name: qty, type: int}\n" in draft
    assert _registry(tmp_path, draft, "erp").get("erp", "items").primary_key == ("tenant", "item_no")


def _event(op: str, before: dict | None, after: dict | None, lsn: int, with_schema: bool = False) -> dict:
    event = {"before": before, "after": after, "op": op, "ts_ms": 1_700_000_000_000 + lsn,
             "source": {"connector": "postgresql", "lsn": lsn, "ts_ms": 1_700_000_000_000 + lsn}}
    if not with_schema:
        return event
    row = {"type": "struct", "optional": True, "name": "pg.inventory.products.Value", "fields": [
        {"field": "id", "type": "int32", "optional": False},
        {"field": "name", "type": "string", "optional": True},
        {"field": "price", "type": "float64", "optional": True},
        {"field": "updated_at", "type": "string", "optional": True, "name": "io.debezium.time.ZonedTimestamp"},
        {"field": "added_on", "type": "int32", "optional": True, "name": "io.debezium.time.Date"},
    ]}
    schema = {"type": "struct", "name": "pg.inventory.products.Envelope",
              "fields": [{"field": "before", **row}, {"field": "after", **row}, {"field": "op", "type": "string"}]}
    return {"schema": schema, "payload": event}


def _product(i: int, name: str, price: float) -> dict:
    return {"id": i, "name": name, "price": price, "updated_at": f"2026-11-21T10:0{i}:00Z", "added_on": 20_000 + i}


def _lines(values: list) -> bytes:
    return ("\n".join(json.dumps(v) for v in values) + "\n").encode()


def test_debezium_with_schema_takes_types_from_it_and_the_key_from_the_key_files(tmp_path):
    folder = tmp_path / "landing" / "pg" / "inventory" / "products" / "partition=0"
    folder.mkdir(parents=True)
    events = [_event("r", None, _product(1, "pen", 1.5), 10, True), _event("c", None, _product(2, "ink", 2.0), 11, True),
              _event("d", {"id": 1, "name": None, "price": None, "updated_at": None, "added_on": None}, None, 12, True), None]
    (folder / "pg.inventory.products+0+0000000000.json.gz").write_bytes(gzip.compress(_lines(events)))
    key_schema = {"type": "struct", "name": "pg.inventory.products.Key", "fields": [{"field": "id", "type": "int32"}]}
    (folder / "pg.inventory.products+0+0000000000.keys.json").write_bytes(
        _lines([{"schema": key_schema, "payload": {"id": n}} for n in (1, 2, 1)]))
    draft = _draft(tmp_path / "landing")
    table = _table(draft, "products")
    assert "    primary_key: [id]  # from the sink's key files (pg.inventory.products+0+0000000000.keys.json: the key schema)" in table
    assert "    format: debezium  # Debezium change events (Kafka Connect S3 sink)\n    load: cdc\n" in table
    assert "NOTE: 1 key files (*.keys.json) are in the table folder" in table
    # partition=0 is Kafka Connect's partition folder, not a column: no partition_by
    assert "partition_by" not in table and "partition=" in table
    assert table.endswith(
        "    columns:\n"
        "      - {name: id, type: int}\n"
        "      - {name: name, type: string}\n"
        "      - {name: price, type: double}\n"
        "      - {name: updated_at, type: timestamptz}\n"
        "      - {name: added_on, type: int}  # TODO: io.debezium.time.Date: days since 1970-01-01; the lake reads the number")
    assert _registry(tmp_path, draft, "pg").get("pg", "products").format == "debezium"


def test_debezium_without_schema_leaves_the_key_to_review_and_ingests_once_filled(tmp_path):
    home = tmp_path / "lake"
    folder = home / "landing" / "pg" / "inventory" / "products"
    folder.mkdir(parents=True)
    events = [_event("r", None, _product(1, "pen", 1.5), 10), _event("c", None, _product(2, "ink", 2.0), 11),
              _event("u", _product(2, "ink", 2.0), _product(2, "ink", 2.5), 12),
              _event("d", {"id": 1, "name": None, "price": None, "updated_at": None, "added_on": None}, None, 13), None]
    (folder / "pg.inventory.products+0+0000000000.json").write_bytes(_lines(events))
    draft = _draft(home / "landing")
    table = _table(draft, "products")
    assert "    primary_key: []  # TODO" in table
    assert "NOTE: the sampled deletes' before images carry only ['id'] (REPLICA IDENTITY DEFAULT gives the key)" in table
    assert ("      - {name: id, type: long}\n      - {name: name, type: string}\n      - {name: price, type: double}\n"
            "      - {name: updated_at, type: timestamptz}\n      - {name: added_on, type: long}") in table
    lake = make_lake(home, {"pg": fill(draft, {"products": ["id"]})})
    lake.ingest()
    assert lake.rows("pg.products", ["id", "name", "price"]) == [
        {"id": 2, "name": "ink", "price": 2.5}]


def test_hive_partition_folders_are_one_table_with_those_partition_keys(tmp_path):
    landing = tmp_path / "landing"
    for day in ("2026-11-20", "2026-11-21"):
        for region in ("eu", "us"):
            folder = landing / "web" / "events" / "clicks" / f"dt={day}" / f"region={region}"
            folder.mkdir(parents=True)
            rows = [{"click_id": n, "dt": day, "url": f"/p/{n}", "at": f"{day}T10:00:0{n}+00:00"} for n in range(3)]
            (folder / "part-00000.jsonl").write_bytes(_lines(rows))
    draft = _draft(landing)
    assert draft.count("  - name: ") == 1
    table = _table(draft, "clicks")
    assert "# web/events/clicks/: 4 file(s), sampled 3" in table
    assert "    partition_by:  # from the key=value folders" in table and "      - {column: dt, transform: identity}\n" in table
    assert "# partition folders region=...: region is not a column of the files" in table
    assert table.endswith("      - {name: click_id, type: long}\n      - {name: dt, type: date}\n"
                          "      - {name: url, type: string}\n      - {name: at, type: timestamptz}")
    registry = _registry(tmp_path, fill(draft, {"clicks": ["click_id", "dt"]}), "web")
    clicks = registry.get("web", "clicks")
    assert (clicks.format, clicks.load, [p.column for p in clicks.partition_by]) == ("jsonl", "snapshot", ["dt"])


def test_a_json_lines_drop_is_a_file_drop_with_a_load_to_choose(tmp_path):
    home = tmp_path / "lake"
    folder = home / "landing" / "crm" / "exports" / "contacts"
    folder.mkdir(parents=True)
    rows = [{"Contact_Id": 1, "email": "a@x.io", "vip": True, "tags": ["x"], "since": "2026-01-02", "score": None},
            {"Contact_Id": 2, "email": "b@x.io", "vip": False, "tags": [], "since": "2026-02-03", "score": None}]
    (folder / "contacts_2026-11-21.jsonl").write_bytes(_lines(rows))
    draft = _draft(home / "landing")
    table = _table(draft, "contacts")
    assert "    format: jsonl  # file drop\n    load: snapshot  # TODO: snapshot (each file is the whole table) | append" in table
    assert table.endswith(
        "      - {name: contact_id, type: long}\n      - {name: email, type: string}\n      - {name: vip, type: boolean}\n"
        "      - {name: tags, type: string}  # TODO: nested JSON: the lake keeps it as JSON text\n"
        "      - {name: since, type: date}\n      - {name: score, type: string}  # TODO: no values in the sample: type unknown")
    lake = make_lake(home, {"crm": fill(draft, {"contacts": ["contact_id"]})})
    lake.ingest()
    assert sorted((r["contact_id"], r["email"], r["vip"], r["since"]) for r in lake.rows("crm.contacts")) == [
        (1, "a@x.io", True, dt.date(2026, 1, 2)), (2, "b@x.io", False, dt.date(2026, 2, 3))]


def test_mixed_and_unknown_files_are_said_not_guessed(tmp_path):
    landing = tmp_path / "landing"
    docs = landing / "ops" / "misc" / "docs"
    docs.mkdir(parents=True)
    (docs / "readme.txt").write_text("hello")
    (docs / "schema.xml").write_text("<a/>")
    mixed = landing / "ops" / "misc" / "rates"
    mixed.mkdir(parents=True)
    (mixed / "rates_1.csv").write_text("currency,rate\nEUR,1.10\nUSD,1.00\n")
    (mixed / "rates_2.csv").write_text("currency,rate\nEUR,1.12\n")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("rates_0.csv", "currency,rate\nGBP,0.85\n")
    (mixed / "rates_0.zip").write_bytes(buf.getvalue())
    (mixed / "notes.md").write_text("x")
    (mixed / "rates_3.jsonl").write_text('{"currency": "JPY", "rate": 160.5}\n')
    with zipfile.ZipFile(buf := io.BytesIO(), "w") as z:
        z.writestr("a.csv", "currency,rate\n")
        z.writestr("b.csv", "currency,rate\n")
    (mixed / "rates_4.zip").write_bytes(buf.getvalue())
    (landing / "ops" / "stray.csv").write_text("a\n1\n")
    draft = _draft(landing, sample=5)
    assert "  # ops/misc/docs/: 2 file(s), none the lake reads; no table drafted\n" in draft
    assert "  #   2 files in no format the lake reads (readme.txt, schema.xml): left out\n" in draft
    rates = _table(draft, "rates")
    assert "NOTE: 1 files in no format the lake reads (notes.md): left out" in rates
    assert "NOTE: files of other formats (1 jsonl): a table reads one format, the draft takes csv" in rates
    assert "NOTE: rates_4.zip could not be read: the zip holds 2 files; a file drop's zip must hold exactly one" in rates
    assert "    format: csv  # file drop\n" in rates and "    csv: {header: true}\n" in rates
    assert rates.endswith("      - {name: currency, type: string}\n"
                          "      - {name: rate, type: \"decimal(18,2)\"}  # TODO: decimal from the text's fixed scale: check the source's precision")
    assert "#   ops/stray.csv: not under a <source>/<schema>/<table>/ folder" in draft
    assert _registry(tmp_path, fill(draft, {"rates": ["currency"]}), "ops").get("ops", "rates").csv.header is True


def test_an_empty_folder_and_several_sources_are_errors_that_say_what_to_do(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiscoveryError, match="no landed files to discover"):
        discover(str(tmp_path / "empty"))
    assert main([str(tmp_path / "empty")]) == 1
    assert "no landed files to discover" in capsys.readouterr().err
    landing = tmp_path / "landing"
    land_dms_source(landing)
    write_dms_file(landing / "crm" / "dbo" / "notes" / load_file_name(1), [{"note_id": 1}], [("note_id", "long")], cdc=False)
    with pytest.raises(DiscoveryError, match=r"files of 2 sources \(crm, shop\) are here: pass --source NAME"):
        discover(str(landing))
    text, folders = discover(str(landing), source="crm")
    assert [f.prefix for f in folders] == ["crm/dbo/notes/"] and "source: crm\n" in text


# ---------------------------------------------------------------------------------------------
# S3, through the lake's S3 landing zone, against moto (the session's server, tests/aws_fixtures.py)


def test_an_s3_landing_prefix_is_drafted_like_a_directory(tmp_path, monkeypatch, moto_endpoint):
    import boto3

    for k, v in {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    landing = tmp_path / "landing"
    land_dms_source(landing)
    s3 = boto3.client("s3")
    bucket = f"landing-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for f in sorted(p for p in landing.rglob("*") if p.is_file()):
        s3.put_object(Bucket=bucket, Key=f"dms/{f.relative_to(landing).as_posix()}", Body=f.read_bytes())
    uri = f"s3://{bucket}/dms"
    assert _draft(uri) == DMS_DRAFT.replace("LANDING", uri)


# ---------------------------------------------------------------------------------------------
# The landing sensor names folders no registry table claims


SHOP = """
source: shop
tables:
  - name: orders
    schema: public
    primary_key: [order_id]
"""


def test_the_landing_sensor_reports_unclaimed_folders_with_the_command_that_drafts_them(tmp_path, monkeypatch, capsys):
    from dagster import AssetCheckEvaluation, AssetObservation, DagsterInstance, build_sensor_context

    from lake_assets.landing_assets import UNCLAIMED_CHECK, UNCLAIMED_KEY
    from lake_assets.sensors import build_landing_sensor
    from resources.lake import LakeResource

    monkeypatch.setenv("LAKE_HOME", str(tmp_path))
    lake = make_lake(tmp_path, {"shop": SHOP})
    land_dms_source(lake.landing)  # orders is claimed; billing/PAYMENTS is not
    (lake.landing / "shop" / "public" / "orders" / "notes.txt").write_text("a misnamed file of a claimed folder")
    sensor = build_landing_sensor(lake.registry)
    with DagsterInstance.ephemeral() as instance:
        first = sensor(build_sensor_context(instance=instance, resources={"lake": LakeResource()}))
        [check] = [e for e in first.asset_events if isinstance(e, AssetCheckEvaluation)]
        assert (check.asset_key, check.check_name, check.passed) == (UNCLAIMED_KEY, UNCLAIMED_CHECK, False)
        command = f"python -m lake_assets.discover {lake.landing}/shop/billing/PAYMENTS/"
        assert check.metadata["unclaimed_folders"].value == 1 and check.metadata["unclaimed_files"].value == 2
        assert f"| `shop/billing/PAYMENTS/` | 2 | `{command}` |" in check.metadata["folders"].value
        assert "1 landing folder(s) hold 2 file(s) no registry table claims" in check.description
        [observed] = [e for e in first.asset_events if isinstance(e, AssetObservation) and e.asset_key == UNCLAIMED_KEY]
        assert observed.metadata["unclaimed_folders"].value == 1
        logged = capsys.readouterr().err
        assert ("landing folder shop/billing/PAYMENTS/ holds 2 file(s) no registry table claims (not ingested); "
                f"draft its registry entry with: {command}") in logged
        assert "folders no registry table claims: 1" in logged

        again = sensor(build_sensor_context(instance=instance, cursor=first.cursor, resources={"lake": LakeResource()}))
        assert not [e for e in again.asset_events if e.asset_key == UNCLAIMED_KEY]  # reported once, not every tick
        assert "folders no registry table claims: 1" in capsys.readouterr().err  # the tick's summary still says it

        # The hinted command drafts the entry; once in the registry, the folder's files route to it.
        draft = _draft(command.split()[-1])
        payments = _table(draft, "payments")
        shop = SHOP + payments.split("\n", 1)[1].replace("primary_key: []", "primary_key: [column_1]") + "\n"
        lake = make_lake(tmp_path, {"shop": shop})
        sensor = build_landing_sensor(lake.registry)
        third = sensor(build_sensor_context(instance=instance, cursor=again.cursor, resources={"lake": LakeResource()}))
        [check] = [e for e in third.asset_events if isinstance(e, AssetCheckEvaluation) and e.asset_key == UNCLAIMED_KEY]
        assert check.passed and check.metadata["unclaimed_folders"].value == 0
        assert lake.env.ledger.tables_with_pending().get("shop.payments") == 2


def test_the_readme_shows_the_draft_this_module_expects():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "## Discovering a new source" in readme
    assert "```yaml\n" + DMS_DRAFT.replace("LANDING", ".lake/landing") + "```" in readme


def test_observing_landing_unclaimed_folders_asks_the_ledger_again(tmp_path, monkeypatch):
    from dagster import DagsterInstance
    from dagster._core.definitions.observe import observe  # what "Observe" in the UI runs; not exported

    from lake_assets.core.arrivals import record_arrivals
    from lake_assets.landing_assets import UNCLAIMED_CHECK, build_unclaimed_asset
    from resources.lake import LakeResource

    monkeypatch.setenv("LAKE_HOME", str(tmp_path))
    lake = make_lake(tmp_path, {"shop": SHOP})
    land_dms_source(lake.landing)
    record_arrivals(lake.env.landing, lake.env.ledger, lake.registry)
    with DagsterInstance.ephemeral() as instance:
        result = observe([build_unclaimed_asset(lake.registry)], resources={"lake": LakeResource()}, instance=instance)
        [check] = result.get_asset_check_evaluations()
        assert (check.check_name, check.passed, check.metadata["unclaimed_files"].value) == (UNCLAIMED_CHECK, False, 2)
        assert "`shop/billing/PAYMENTS/`" in check.metadata["folders"].value


def test_files_outside_a_landing_zone_are_drafted_under_the_source_given(tmp_path):
    drop = tmp_path / "Exports 2026" / "crm" / "contacts"
    drop.mkdir(parents=True)
    (drop / "contacts.csv").write_text("id,email\n1,a@x.io\n")
    with pytest.raises(DiscoveryError, match="source 'Exports 2026' is not a lake identifier"):
        discover(str(drop))
    text = _draft(drop, source="crm_files")
    assert "source: crm_files\n" in text
    assert "# The files are under Exports 2026/...: they route to this source once they land under crm_files/..." in text
    assert "  - name: contacts\n    schema: crm\n" in text


def test_unclaimed_folders_leave_out_claimed_folders_and_sources_whose_registry_file_is_broken(tmp_path):
    from lake_assets.core.arrivals import discover_command, unclaimed_folders
    from lake_assets.core.landing import LocalLandingZone

    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "shop.yaml").write_text(SHOP)
    (sources / "crm.yaml").write_text("source: crm\ntables: [\n")  # invalid: its error says why crm routes nowhere
    registry = load_registry([sources], cache=False)
    keys = ["shop/public/orders/LOAD00000001.parquet", "shop/public/orders/notes.txt", "shop/billing/PAYMENTS/LOAD00000001.csv",
            "shop/billing/PAYMENTS/2026/11/21/20261121-101500000.csv", "crm/dbo/notes/LOAD00000001.csv", "shop/stray.csv", "top.csv"]
    assert unclaimed_folders(keys, registry) == {"": 1, "shop/": 1, "shop/billing/PAYMENTS/": 2}
    landing = LocalLandingZone(tmp_path / "landing")
    assert discover_command(landing, "shop/billing/PAYMENTS/") == f"python -m lake_assets.discover {tmp_path}/landing/shop/billing/PAYMENTS/"
    assert discover_command(landing, "") == f"python -m lake_assets.discover {tmp_path}/landing"
