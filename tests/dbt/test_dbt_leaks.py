"""Leak tests: for every rule of the governance policy, the consumer dataset built on the local
target has exactly the allowed columns, every masked value equals an independent Python
re-implementation of the mask, and no row the filter forbids is present. Tables are read from the
catalog with pyiceberg and with DuckDB's iceberg_scan. The `hash` mask resists the attacks that
reversed the unkeyed SHA-256 it replaced (enumerating ids, a dictionary of e-mails) unless the
attacker holds the lake's key, and that key appears nowhere dbt writes."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import unicodedata
from collections.abc import Callable, Iterable
from decimal import Decimal

import pytest

from lake_assets.core import governance

POLICY = governance.load_validated_policy()
DATASETS = [
    pytest.param(cname, dname, id=f"{cname}.{dname}")
    for cname, consumer in POLICY.consumers.items()
    for dname in consumer.datasets
]
# Raw PII that must never appear in a consumer dataset unless the policy exposes the column unmasked.
PII_SOURCE_COLUMNS = {"customers": ["first_name", "last_name", "email", "phone", "date_of_birth"], "payments": ["card_number"]}


def mask(value, rule: governance.ColumnRule, key: bytes):
    """The policy's masks, written independently of the SQL macros."""
    if rule.mask in (None, "none"):
        return value
    if value is None:
        return None
    if rule.mask == "hash":
        return hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()
    if rule.mask == "redact":
        return "[REDACTED]"
    if rule.mask == "null":
        return None
    if rule.mask == "year_only":
        return value.year
    if rule.mask == "partial":
        text, first, last = str(value), rule.keep_first, rule.last
        if len(text) <= first + last:
            return "*" * len(text)
        return text[:first] + "*" * (len(text) - first - last) + (text[len(text) - last:] if last else "")
    raise AssertionError(f"unknown mask {rule.mask}")


def keeps(row: dict, condition: governance.Condition) -> bool:
    v = row[condition.column]
    if condition.op == "is_null":
        return v is None
    if condition.op == "is_not_null":
        return v is not None
    if v is None:
        return False  # SQL: a comparison with null is not true
    ops = {
        "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
        "in": lambda a, b: a in b, "not_in": lambda a, b: a not in b,
    }
    return ops[condition.op](v, condition.value)


def project(row: dict, dataset: governance.Dataset, key: bytes) -> dict:
    return {rule.as_ or name: mask(row[name], rule, key) for name, rule in dataset.columns.items()}


def canonical(rows: list[dict]) -> list[tuple]:
    return sorted((tuple(sorted(r.items())) for r in rows), key=repr)


@pytest.mark.parametrize("consumer,dataset_name", DATASETS)
def test_only_allowed_columns(built_lake, consumer, dataset_name):
    dataset = POLICY.consumers[consumer].datasets[dataset_name]
    identifier = f"consumer_{consumer}.{dataset_name}"
    allowed = [rule.as_ or name for name, rule in dataset.columns.items()]
    assert built_lake.column_names(identifier) == allowed
    parent_columns = built_lake.column_names(f"aggregated.{dataset.from_}")
    forbidden = [c for c in parent_columns if c not in dataset.columns]
    renamed = [name for name, rule in dataset.columns.items() if rule.as_ and rule.as_ != name]
    actual = set(built_lake.column_names(identifier))
    assert not actual & (set(forbidden) | set(renamed)), "a forbidden or pre-mask column leaked"


@pytest.mark.parametrize("consumer,dataset_name", DATASETS)
def test_every_row_masked_and_filtered_exactly(built_lake, consumer, dataset_name):
    dataset = POLICY.consumers[consumer].datasets[dataset_name]
    parent = built_lake.rows(f"aggregated.{dataset.from_}")
    kept = [r for r in parent if all(keeps(r, c) for c in dataset.row_filter)]
    expected = [project(r, dataset, built_lake.mask_key) for r in kept]
    actual = built_lake.rows(f"consumer_{consumer}.{dataset_name}")
    assert canonical(actual) == canonical(expected)

    if dataset.row_filter:
        rejected = [project(r, dataset, built_lake.mask_key) for r in parent if r not in kept]
        assert rejected, "the fixture must contain rows this filter removes, or the test proves nothing"
        actual_set = set(canonical(actual))
        assert not [r for r in canonical(rejected) if r in actual_set], "a filtered row is present"


@pytest.mark.parametrize("consumer,dataset_name", DATASETS)
def test_duckdb_iceberg_scan_reads_the_same_dataset(built_lake, iceberg_duckdb, consumer, dataset_name):
    table = built_lake.catalog.load_table(f"consumer_{consumer}.{dataset_name}")
    cursor = iceberg_duckdb.execute(f"SELECT * FROM iceberg_scan('{table.metadata_location}')")
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, r)) for r in cursor.fetchall()]
    assert canonical(rows) == canonical(table.scan().to_arrow().to_pylist())


def test_no_raw_pii_value_in_any_consumer_dataset(built_lake):
    """Whatever the column, a raw PII value of the sources only appears where the policy exposes
    that very column unmasked (mask: none)."""
    raw: dict[str, set] = {}
    for table, columns in PII_SOURCE_COLUMNS.items():
        for row in built_lake.source_rows[table]:
            for c in columns:
                if row[c] is not None:
                    raw.setdefault(c, set()).add(str(row[c]))
    checked = 0
    for cname, consumer in POLICY.consumers.items():
        for dname, dataset in consumer.datasets.items():
            exposed = {name for name, rule in dataset.columns.items() if rule.mask == "none"}
            forbidden_values = set().union(*(v for c, v in raw.items() if c not in exposed))
            for row in built_lake.rows(f"consumer_{cname}.{dname}"):
                for column, value in row.items():
                    checked += 1
                    if value is not None and not isinstance(value, (bool, int, float, Decimal, dt.date)):
                        assert str(value) not in forbidden_values, f"raw PII in consumer_{cname}.{dname}.{column}"
                    if isinstance(value, dt.date):
                        assert str(value) not in raw.get("date_of_birth", set()), f"birth date in {cname}.{dname}.{column}"
    assert checked > 100


def test_demo_rules_hold(built_lake):
    """The issue's examples, spelled out on the fixture: marketing sees only opted-in customers,
    hashed email and no phone; finance sees EMEA payments with only the last 4 card digits."""
    opted_out = {c["customer_id"] for c in built_lake.source_rows["customers"] if not c["marketing_opt_in"]}
    marketing = built_lake.rows("consumer_marketing.customers")
    assert opted_out and not opted_out & {r["customer_id"] for r in marketing}
    assert all("phone" not in r and "email" not in r for r in marketing)
    emails = {c["customer_id"]: c["email"] for c in built_lake.source_rows["customers"]}
    for r in marketing:
        email = emails[r["customer_id"]]
        expected = None if email is None else hmac.new(built_lake.mask_key, email.encode(), hashlib.sha256).hexdigest()
        assert r["email_sha256"] == expected

    finance = built_lake.rows("consumer_finance.payments")
    source_payments = {p["payment_id"]: p for p in built_lake.source_rows["payments"]}
    assert {r["payment_id"] for r in finance} == {i for i, p in source_payments.items() if p["region"] == "EMEA"}
    for r in finance:
        card = source_payments[r["payment_id"]]["card_number"]
        assert r["card_number"] == (None if card is None else "*" * (len(card) - 4) + card[-4:])
    assert {r["region"] for r in built_lake.rows("consumer_finance.hotel_revenue")} == {"EMEA"}
    assert "US" not in {r["country"] for r in built_lake.rows("consumer_data_science.customers")}


# --- attacks on the hash mask ----------------------------------------------------------------------

Guess = Callable[[str], str]


def recovered(hashes: set[str], candidates: Iterable, guess: Guess) -> dict[str, str]:
    """The hashes a guesser reverses by hashing every candidate value the way it thinks the mask does."""
    found = {}
    for c in candidates:
        h = guess(str(c))
        if h in hashes:
            found[h] = str(c)
    return found


def keyed(key: bytes) -> Guess:
    return lambda text: hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


# What an attacker without the lake's key can try: the unkeyed hash the mask used to be, and an
# HMAC under keys it might guess or hold from another lake.
KEYLESS_GUESSES: dict[str, Guess] = {
    "unkeyed sha256": lambda text: hashlib.sha256(text.encode()).hexdigest(),
    "hmac, empty key": keyed(b""),
    "hmac, zero key": keyed(bytes(32)),
    "hmac, another lake's key": keyed(os.urandom(32)),
}


def _ascii_forms(word: str) -> set[str]:
    """How a name is spelled in an e-mail address: lower case, accents dropped or transliterated
    (Müller: muller, mueller), punctuation gone (O'Brien: obrien)."""
    word = word.lower()
    german = word.translate(str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"}))
    forms = set()
    for w in (word, german):
        folded = unicodedata.normalize("NFKD", w).encode("ascii", "ignore").decode()
        forms.add("".join(ch for ch in folded if ch.isalnum()))
    return {f for f in forms if f}


def email_dictionary(customers: list[dict]) -> set[str]:
    """Candidate e-mails built from the customers table's own columns: name forms joined the common
    ways, at the example domain under every country code the table holds and the usual suffixes."""
    suffixes = {"com", "net", "org", "co.uk", "eu"} | {c["country"].lower() for c in customers if c["country"]}
    locals_ = set()
    for c in customers:
        for first in _ascii_forms(c["first_name"] or ""):
            for last in _ascii_forms(c["last_name"] or ""):
                locals_ |= {f"{first}.{last}", f"{first}{last}", f"{first}_{last}", f"{first[0]}{last}",
                            f"{first}.{last[0]}", f"{first[0]}.{last}", first, last}
    return {f"{local}@example.{suffix}" for local in locals_ for suffix in suffixes}


def test_enumerating_customer_ids_recovers_no_customer_key_without_the_key(built_lake):
    """The issue's attack: every integer 0..199,999 hashed and looked up reversed every
    `customer_key` of consumer_data_science.customers back to its customer_id."""
    rows = built_lake.rows("consumer_data_science.customers")
    keys = {r["customer_key"] for r in rows}
    assert len(keys) == len(rows) >= 5
    for name, guess in KEYLESS_GUESSES.items():
        assert recovered(keys, range(200_000), guess) == {}, f"{name} reversed customer_key"

    # The same enumeration with the lake's key reverses every one: the attack is real, the key is
    # what stops it.
    with_key = recovered(keys, range(200_000), keyed(built_lake.mask_key))
    parent = {keyed(built_lake.mask_key)(str(r["customer_id"])): str(r["customer_id"])
              for r in built_lake.rows("aggregated.customer_lifetime_value")}
    assert with_key == {k: parent[k] for k in keys}


def test_a_dictionary_from_the_tables_columns_recovers_no_email_without_the_key(built_lake):
    """The issue's other attack: e-mails guessed from the customers' names and countries reversed
    most of consumer_marketing.customers.email_sha256."""
    customers = built_lake.source_rows["customers"]
    hashes = {r["email_sha256"] for r in built_lake.rows("consumer_marketing.customers") if r["email_sha256"]}
    dictionary = email_dictionary(customers)
    for name, guess in KEYLESS_GUESSES.items():
        assert recovered(hashes, dictionary, guess) == {}, f"{name} reversed email_sha256"

    opted_in = {c["email"] for c in customers if c["marketing_opt_in"] and c["email"]}
    guessable = opted_in & dictionary
    assert len(guessable) >= 4, "the dictionary must hold real e-mails, or recovering none proves nothing"
    with_key = recovered(hashes, dictionary, keyed(built_lake.mask_key))
    assert sorted(with_key.values()) == sorted(guessable)


def test_the_mask_key_lives_in_the_lake_only(built_lake):
    """The key file is the lake's (mode 0600, 32 bytes), and neither the key nor the HMAC pads
    derived from it appear in what dbt writes (compiled SQL, manifest, run results, logs, console)
    nor anywhere else in the lake or the repository's dbt project."""
    key_file = built_lake.home / "secrets" / "mask_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = built_lake.mask_key
    assert len(key) == 32
    padded = key.ljust(64, b"\0")
    secrets = [key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key)]
    secrets += [bytes(b ^ pad for b in padded).hex().encode() for pad in (0x36, 0x5C)]

    def leaks(root) -> list[str]:
        found = []
        for path in root.rglob("*"):
            if path.is_file() and path != key_file:
                data = path.read_bytes()
                found += [f"{path} holds {s[:8]!r}..." for s in secrets if s in data]
        return found

    written = [p for p in built_lake.target.rglob("*") if p.is_file()]
    assert any(p.name == "run_results.json" for p in written) and any(p.suffix == ".sql" for p in written)
    assert any("hmac_sha256_hex" in p.read_text(errors="replace") for p in written if p.suffix == ".sql")
    assert leaks(built_lake.target) == []
    assert leaks(built_lake.home) == []
    assert leaks(governance.DBT_PROJECT_DIR) == []
    console = (built_lake.build.stdout + built_lake.build.stderr).encode()
    assert [s for s in secrets if s in console] == []
