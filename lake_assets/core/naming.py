"""Naming rules of the lake, decided once here: identifiers, Iceberg namespaces, asset keys, groups,
pools and dbt model names of every layer (source-aligned, aggregated, consumer-aligned)."""

from __future__ import annotations

import re

IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")

# Sibling tables the lake keeps next to each source-aligned table, in the source's namespace.
TOMBSTONE_SUFFIX = "__tombstones"
QUARANTINE_SUFFIX = "__quarantine"
ERRORS_SUFFIX = "__errors"  # an event stream's bad events (its quarantine, named as Firehose's error output)


class NamingError(ValueError):
    """A name that Athena/Glue (and therefore the lake) cannot use."""


def check_identifier(name: str, what: str) -> str:
    if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):
        raise NamingError(
            f"{what} {name!r} is not a valid lake identifier: use lowercase [a-z][a-z0-9_]* (Athena's rule)"
        )
    return name


def source_aligned_key(source: str, table: str) -> list[str]:
    return ["source_aligned", source, table]


def landing_key(source: str, table: str) -> list[str]:
    """The landing-zone files of a table: an observable asset upstream of its source-aligned table."""
    return ["landing", source, table]


def ingest_job_name(source: str) -> str:
    """The named job that merges a source's tables (sensor, schedules, ingest command, demo)."""
    return f"ingest_{source}"


def table_identifier(source: str, table: str) -> str:
    return f"{source}.{table}"


def tombstone_identifier(source: str, table: str) -> str:
    return f"{source}.{table}{TOMBSTONE_SUFFIX}"


def quarantine_identifier(source: str, table: str) -> str:
    return f"{source}.{table}{QUARANTINE_SUFFIX}"


def errors_identifier(source: str, table: str) -> str:
    return f"{source}.{table}{ERRORS_SUFFIX}"


def source_pool(source: str) -> str:
    """Concurrency pool of a source's merge op: at most one merge of any of its tables at a time."""
    return f"merge_{source}"


# --- aggregated and consumer-aligned layers (dbt models) -----------------------------------------

AGGREGATED_NAMESPACE = "aggregated"  # Iceberg namespace and Dagster group of the aggregated models
CONSUMER_NAMESPACE_PREFIX = "consumer_"  # consumer_<name>: a consumer's namespace and group


def aggregated_key(model: str) -> list[str]:
    return ["aggregated", model]


def consumer_key(consumer: str, dataset: str) -> list[str]:
    return ["consumer", consumer, dataset]


def consumer_namespace(consumer: str) -> str:
    return f"{CONSUMER_NAMESPACE_PREFIX}{consumer}"


def consumer_model_name(consumer: str, dataset: str) -> str:
    """The dbt model of a consumer's dataset (its Iceberg table is the dataset name in consumer_<name>)."""
    return f"{consumer}__{dataset}"


def model_key_path(namespace: str, table: str) -> list[str]:
    """Asset key of the dbt model that writes Iceberg table `<namespace>.<table>`."""
    if namespace == AGGREGATED_NAMESPACE:
        return aggregated_key(table)
    if namespace.startswith(CONSUMER_NAMESPACE_PREFIX):
        return consumer_key(namespace.removeprefix(CONSUMER_NAMESPACE_PREFIX), table)
    raise NamingError(
        f"dbt model writing {namespace}.{table}: models must land in namespace "
        f"'{AGGREGATED_NAMESPACE}' or '{CONSUMER_NAMESPACE_PREFIX}<name>'"
    )


def model_group(namespace: str) -> str:
    """Dagster group of a dbt model: `aggregated`, or the consumer's namespace `consumer_<name>`."""
    return namespace
