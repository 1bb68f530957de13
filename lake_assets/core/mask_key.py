"""The key of the governance policy's `hash` mask (a keyed HMAC-SHA256), and where each engine gets it.

Without a key, a hash of a small value space is reversed by enumeration: every integer id, every
e-mail a dictionary can guess. With a 32-byte secret key the consumer who sees only the HMAC has
nothing to enumerate against. The key is a secret like a password: it lives in Secrets Manager on
AWS and, locally, in a file generated once into LAKE_HOME (mode 0600, never in the repository),
and it never reaches dbt's compiled SQL, run results or logs:

- DuckDB (dbt target `local`) has no HMAC function. The dbt-duckdb plugin reads the key file and
  defines a SQL macro `lake_masking.main.hmac_sha256_hex(text)` in a private in-memory database,
  computing RFC 2104's H((K ^ opad) || H((K ^ ipad) || m)) with DuckDB's own sha256; the model SQL
  dbt compiles only names the macro.
- Athena (dbt target `athena`) has Trino's `hmac_sha256(varbinary, varbinary)` but no way to read
  a secret from SQL, and SQL text is kept in dbt's target/ and in Athena's query history. The models
  read the key from a one-row Iceberg table (`MASK_KEY_TABLE`) that `publish_mask_key_table` fills
  from the secret at deploy time, readable through Lake Formation only by the role dbt runs as.

    python -m lake_assets.core.mask_key publish   # deploy step on AWS: secret -> key table
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import sys
from pathlib import Path

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError

from lake_assets.core.settings import LakeSettings, current_settings

KEY_BYTES = 32  # HMAC-SHA256's output size; RFC 2104 asks for at least that
BLOCK_BYTES = 64  # SHA-256's block size: HMAC pads the key to it
MASK_KEY_TABLE = "lake_governance.mask_key"  # Athena's copy of the key (dbt var lake_mask_key_table)
MASKING_DATABASE = "lake_masking"  # DuckDB: the in-memory database holding the HMAC macro
HMAC_MACRO = f"{MASKING_DATABASE}.main.hmac_sha256_hex"


class MaskKeyError(RuntimeError):
    """The mask key is missing, unreadable, readable by others or of the wrong size; names where it is."""


def hash_mask(key: bytes, value: str) -> str:
    """What the `hash` mask makes of a value's text on every engine: lower-case hex HMAC-SHA256."""
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def local_mask_key(path: Path) -> bytes:
    """The local lake's key, generated at `path` (32 random bytes, mode 0600) the first time.

    Two processes starting at once on a new lake (dbt threads, an ingest and the UI) must end with
    one key, or the same value would hash differently in two consumer tables: the file is created
    with O_EXCL and whoever loses the race reads the winner's key.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_local_key(path)
    try:
        os.write(fd, os.urandom(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    return _read_local_key(path)


def _read_local_key(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MaskKeyError(f"mask key {path}: readable by other users (mode {stat.filemode(mode)}); chmod 600 it")
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        # A half-written file (a crash between create and write) must not become a short key.
        raise MaskKeyError(f"mask key {path}: {len(key)} bytes, expected {KEY_BYTES}; delete it to generate a new one "
                           "(every hashed value in the consumer datasets changes)")
    return key


def secrets_manager_mask_key(secret_id: str, *, region: str, endpoint_url: str | None = None) -> bytes:
    """The key from Secrets Manager: SecretBinary of 32 bytes, or SecretString of 64 hex digits."""
    import boto3

    client = boto3.client("secretsmanager", region_name=region, endpoint_url=endpoint_url)
    try:
        secret = client.get_secret_value(SecretId=secret_id)
    except Exception as e:  # noqa: BLE001 - botocore's ClientError and connection errors alike
        raise MaskKeyError(f"mask key secret {secret_id!r} (Secrets Manager, {region}): {type(e).__name__}") from None
    if secret.get("SecretBinary") is not None:
        key = bytes(secret["SecretBinary"])
    else:
        try:
            key = bytes.fromhex(secret.get("SecretString") or "")
        except ValueError:
            raise MaskKeyError(f"mask key secret {secret_id!r}: SecretString is not hex") from None
    if len(key) != KEY_BYTES:
        raise MaskKeyError(f"mask key secret {secret_id!r}: {len(key)} bytes, expected {KEY_BYTES}")
    return key


def mask_key(settings: LakeSettings) -> bytes:
    """The deployment's key: Secrets Manager on AWS, the LAKE_HOME file locally."""
    if settings.aws is not None:
        return secrets_manager_mask_key(settings.aws.mask_key_secret_id, region=settings.aws.region,
                                        endpoint_url=settings.aws.endpoint_url)
    return local_mask_key(settings.mask_key_file)


def duckdb_hmac_macro_sql(key: bytes) -> str:
    """The DuckDB macro computing HMAC-SHA256 with `key` from sha256 alone (RFC 2104).

    The pads are derived from the key, so this text is as secret as the key: it is executed on the
    connection by the dbt plugin, never written to a file or logged.
    """
    if len(key) != KEY_BYTES:
        raise MaskKeyError(f"mask key: {len(key)} bytes, expected {KEY_BYTES}")
    padded = key.ljust(BLOCK_BYTES, b"\0")
    ipad = bytes(b ^ 0x36 for b in padded).hex()
    opad = bytes(b ^ 0x5C for b in padded).hex()
    return (f"CREATE OR REPLACE MACRO {HMAC_MACRO}(v) AS "
            f"sha256(unhex('{opad}') || unhex(sha256(unhex('{ipad}') || encode(v))))")


def publish_mask_key_table(catalog: Catalog, key: bytes, identifier: str = MASK_KEY_TABLE) -> bool:
    """Write `key` as the one row of Iceberg table `identifier` (Athena's models read it there).

    Returns whether it changed: the deploy step runs this on every deploy and a key that is already
    there is not rewritten (a new snapshot would be one more copy of the key in the warehouse).
    """
    data = pa.table({"key": pa.array([key], pa.binary())})
    namespace = identifier.split(".")[0]
    catalog.create_namespace_if_not_exists(namespace)
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        table = catalog.create_table(identifier, schema=data.schema)
    if table.scan().to_arrow().column("key").to_pylist() == [key]:
        return False
    table.overwrite(data)
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["publish"]:
        print("usage: python -m lake_assets.core.mask_key publish", file=sys.stderr)
        return 2
    from lake_assets.core.deployment import open_catalog

    settings = current_settings()
    changed = publish_mask_key_table(open_catalog(settings), mask_key(settings))
    # Only where the key went, never the key.
    print(f"mask key table {MASK_KEY_TABLE}: {'written' if changed else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
