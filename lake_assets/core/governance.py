"""The governance policy (dbt_project/governance/policy.yml): read, validate, and turn into dbt models.

The policy is the single declaration of what each consumer may read. From it this module generates
the consumer-aligned dbt models (models/consumer/<consumer>/): one SQL select per dataset applying
the column allow-list, the masks and the row filter, with the Lake Formation settings dbt-athena
applies on AWS, and a properties file with the dbt tests that prove each rule. A column that
carries a registry PII column (lake_assets/sources/*.yaml `pii:`) must be masked, or exposed with
`mask: none` and a reason. Errors name the file, the consumer, the dataset and the field. No Dagster
imports: dbt, CI and Dagster all use it.

    python -m lake_assets.core.dbt_codegen generate   # rewrite every generated dbt file
    python -m lake_assets.core.dbt_codegen check      # exit 1 when one is stale

(`python -m lake_assets.core.governance generate|check` is the same command under its older name.)
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lake_assets.core import dbt_codegen
from lake_assets.core.dbt_codegen import GeneratedFile, GeneratedFolder
from lake_assets.core.naming import NamingError, check_identifier, consumer_model_name, consumer_namespace
from lake_assets.core.registry import Registry, load_registry

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"
POLICY_PATH = DBT_PROJECT_DIR / "governance" / "policy.yml"
CONSUMER_MODELS_DIR = Path("models") / "consumer"
AGGREGATED_MODELS_DIR = Path("models") / "aggregated"

MASKS = ("hash", "redact", "partial", "null", "year_only", "none")
OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "in", "not_in", "is_null", "is_not_null")
ACCOUNT_PLACEHOLDER = "{aws_account_id}"


class PolicyError(ValueError):
    """Invalid governance policy; the message names the file, consumer, dataset and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ColumnRule(_Strict):
    """How one allowed column is exposed: as it is (mask None), or masked."""

    mask: Literal["hash", "redact", "partial", "null", "year_only", "none"] | None = None
    as_: str | None = Field(default=None, alias="as")
    keep_first: int = Field(default=0, ge=0)
    keep_last: int | None = Field(default=None, ge=0)
    reason: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if v is None or v == "allow" or v == {}:
            return {}
        if isinstance(v, dict) and "mask" in v and v["mask"] is None:
            # YAML reads `mask: null` as no value; the null mask is what the author meant.
            return {**v, "mask": "null"}
        if isinstance(v, str):
            raise ValueError(f"expected 'allow' or a mapping with mask/as, got {v!r}")
        return v

    @field_validator("as_")
    @classmethod
    def _as(cls, v: str | None) -> str | None:
        return None if v is None else check_identifier(v, "column alias")

    @model_validator(mode="after")
    def _options(self) -> ColumnRule:
        if self.mask != "partial" and (self.keep_first or self.keep_last is not None):
            raise ValueError("keep_first/keep_last apply to the partial mask only")
        if self.mask == "none" and not (self.reason or "").strip():
            raise ValueError("mask: none (exposing a PII column unmasked) needs a reason")
        return self

    @property
    def masked(self) -> bool:
        return self.mask not in (None, "none")

    @property
    def last(self) -> int:
        return 4 if self.keep_last is None else self.keep_last


class Condition(_Strict):
    column: str
    op: Literal["=", "!=", "<", "<=", ">", ">=", "in", "not_in", "is_null", "is_not_null"]
    value: Any = None

    @model_validator(mode="after")
    def _value(self) -> Condition:
        if self.op in ("is_null", "is_not_null"):
            if self.value is not None:
                raise ValueError(f"op {self.op} takes no value")
        elif self.op in ("in", "not_in"):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"op {self.op} needs a non-empty list value")
            for v in self.value:
                _literal(v)
        else:
            _literal(self.value)
        return self


class Dataset(_Strict):
    from_: str = Field(alias="from")
    description: str | None = None
    columns: dict[str, ColumnRule]
    row_filter: tuple[Condition, ...] = ()

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, ColumnRule]) -> dict[str, ColumnRule]:
        if not v:
            raise ValueError("a dataset needs at least one column")
        return v


class Consumer(_Strict):
    description: str | None = None
    owner: str | None = None
    principals: tuple[str, ...] = ()
    datasets: dict[str, Dataset]


class Policy(_Strict):
    version: Literal[1] = 1
    consumers: dict[str, Consumer]


@dataclass(frozen=True)
class ModelColumns:
    """Documented columns of an aggregated model, the ones its properties mark as PII, and what
    its SQL reads (`source()` and `ref()` calls)."""

    name: str
    columns: tuple[str, ...]
    pii: frozenset[str]
    sources: tuple[tuple[str, str], ...] = ()
    refs: tuple[str, ...] = ()
    properties_file: str = ""


@dataclass(frozen=True)
class PiiOrigin:
    """Why a column of an aggregated model is personal data, for the error message."""

    column: str  # e.g. travel.customers.email, or customer_lifetime_value.email
    declared_in: str  # the registry file, or the aggregated properties file

    def __str__(self) -> str:
        return f"{self.column}, PII in {self.declared_in}"


def _literal(value: Any) -> str:
    """A SQL literal that both Trino and DuckDB (and Lake Formation filter expressions) accept."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise ValueError(f"unsupported filter value {value!r}: use a string, number or boolean")


def condition_sql(condition: Condition, column: str | None = None) -> str:
    col = column or condition.column
    if condition.op == "is_null":
        return f"{col} is null"
    if condition.op == "is_not_null":
        return f"{col} is not null"
    if condition.op in ("in", "not_in"):
        values = ", ".join(_literal(v) for v in condition.value)
        return f"{col} {'in' if condition.op == 'in' else 'not in'} ({values})"
    op = "<>" if condition.op == "!=" else condition.op
    return f"{col} {op} {_literal(condition.value)}"


def row_filter_sql(dataset: Dataset, output_names: bool = False) -> str | None:
    """The dataset's row filter as SQL, over the parent's columns or (output_names) the dataset's own."""
    if not dataset.row_filter:
        return None
    parts = []
    for c in dataset.row_filter:
        name = (dataset.columns[c.column].as_ or c.column) if output_names else c.column
        parts.append(condition_sql(c, name))
    return " and ".join(parts)


def output_column(name: str, rule: ColumnRule) -> str:
    return rule.as_ or name




# ---------------------------------------------------------------------------------------------
# Loading and validation


def load_policy(path: Path = POLICY_PATH) -> Policy:
    """Parse and validate the policy file on its own (no knowledge of the dbt models)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise PolicyError(f"{path}: not valid YAML: {e}") from e
    except FileNotFoundError:
        raise PolicyError(f"{path}: governance policy not found") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("consumers"), dict):
        raise PolicyError(f"{path}: expected a mapping with 'consumers'")
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as e:
        raise PolicyError(_format_validation_error(path, e)) from None
    problems = []
    for cname, consumer in policy.consumers.items():
        problems += _naming_problems(cname, "consumer name", f"consumer {cname!r}")
        for dname, dataset in consumer.datasets.items():
            where = f"consumer {cname!r}: dataset {dname!r}"
            problems += _naming_problems(dname, "dataset name", where)
            problems += _dataset_problems(dataset, where)
        for p in consumer.principals:
            if not p.startswith("arn:"):
                problems.append(f"consumer {cname!r}: field principals: {p!r} is not an IAM ARN")
    if problems:
        raise PolicyError("\n".join(f"{path}: {p}" for p in problems))
    return policy


def _naming_problems(name: str, what: str, where: str) -> list[str]:
    try:
        check_identifier(name, what)
    except NamingError as e:
        return [f"{where}: {e}"]
    return []


def _dataset_problems(dataset: Dataset, where: str) -> list[str]:
    problems = []
    outputs: dict[str, str] = {}
    for name, rule in dataset.columns.items():
        problems += _naming_problems(name, "column name", f"{where}: column {name!r}")
        out = output_column(name, rule)
        if out in outputs:
            problems.append(f"{where}: column {name!r}: output name {out!r} is also used by column {outputs[out]!r}")
        outputs[out] = name
    for c in dataset.row_filter:
        allowed = dataset.columns.get(c.column)
        if allowed is None or allowed.masked:
            problems.append(
                f"{where}: field row_filter: column {c.column!r} must be an allowed, unmasked column of the dataset "
                "(Lake Formation re-applies the filter on the consumer table)"
            )
    return problems


def _format_validation_error(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        where = []
        if len(loc) >= 2 and loc[0] == "consumers":
            where.append(f"consumer {loc[1]!r}")
            loc = loc[2:]
            if len(loc) >= 2 and loc[0] == "datasets":
                where.append(f"dataset {loc[1]!r}")
                loc = loc[2:]
                if len(loc) >= 2 and loc[0] == "columns":
                    where.append(f"column {loc[1]!r}")
                    loc = loc[2:]
        field = ".".join(p for p in loc if not p.startswith("function-after")) or "(entry)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(": ".join([str(path), *where, f"field {field}: {msg}"]))
    return "\n".join(lines)


_SOURCE_CALL = re.compile(r"""\bsource\(\s*['"](\w+)['"]\s*,\s*['"](\w+)['"]\s*\)""")
_REF_CALL = re.compile(r"""\bref\(\s*['"](\w+)['"]\s*\)""")


def aggregated_models(project_dir: Path = DBT_PROJECT_DIR) -> dict[str, ModelColumns]:
    """The aggregated models: documented columns from the dbt properties files, and the sources and
    models each one reads from its SQL."""
    root = project_dir / AGGREGATED_MODELS_DIR
    sql = {p.stem: p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.sql"))}
    out: dict[str, ModelColumns] = {}
    for path in sorted(root.rglob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for model in doc.get("models") or []:
            columns, pii = [], set()
            for col in model.get("columns") or []:
                columns.append(col["name"])
                meta = {**(col.get("meta") or {}), **((col.get("config") or {}).get("meta") or {})}
                if meta.get("pii"):
                    pii.add(col["name"])
            text = sql.get(model["name"], "")
            out[model["name"]] = ModelColumns(
                model["name"],
                tuple(columns),
                frozenset(pii),
                sources=tuple(dict.fromkeys(_SOURCE_CALL.findall(text))),
                refs=tuple(dict.fromkeys(_REF_CALL.findall(text))),
                properties_file=str(path),
            )
    return out


def pii_columns(
    model: str, models: dict[str, ModelColumns], registry: Registry, _seen: frozenset[str] = frozenset()
) -> dict[str, PiiOrigin]:
    """The columns of an aggregated model that carry personal data, each with where that is declared.

    A column is PII when a table the model reads (`source()`, or an aggregated model it `ref()`s,
    transitively) has a PII column of that name, as dbt-osmosis propagates column metadata; or
    when the model's properties mark it `meta: {pii: true}` (for PII a rename or an expression
    derives, which names cannot follow). The registry is named first: it is where PII is declared.
    """
    m = models[model]
    tables = {(t.source, t.name): t for t in registry.tables}
    found: dict[str, PiiOrigin] = {}
    for source, name in m.sources:
        table = tables.get((source, name))
        if table is None:
            continue
        for column in table.pii:
            if column in m.columns:
                found.setdefault(column, PiiOrigin(f"{source}.{name}.{column}", table.config_file))
    for parent in m.refs:
        if parent in models and parent not in _seen | {model}:
            for column, origin in pii_columns(parent, models, registry, _seen | {model}).items():
                if column in m.columns:
                    found.setdefault(column, origin)
    for column in sorted(m.pii):
        found.setdefault(column, PiiOrigin(f"{model}.{column}", m.properties_file))
    return found


def validate_against_models(
    policy: Policy, models: dict[str, ModelColumns], path: Path = POLICY_PATH, registry: Registry | None = None
) -> None:
    """Every dataset reads a documented aggregated model, its columns exist, and PII is masked."""
    registry = registry if registry is not None else load_registry()
    problems = []
    for cname, consumer in policy.consumers.items():
        for dname, dataset in consumer.datasets.items():
            where = f"consumer {cname!r}: dataset {dname!r}"
            parent = models.get(dataset.from_)
            if parent is None:
                problems.append(
                    f"{where}: field from: {dataset.from_!r} is not an aggregated model "
                    f"(known: {', '.join(sorted(models)) or 'none'})"
                )
                continue
            pii = pii_columns(parent.name, models, registry)
            for name, rule in dataset.columns.items():
                if name not in parent.columns:
                    problems.append(f"{where}: column {name!r}: not a column of aggregated model {parent.name!r}")
                elif name in pii and rule.mask is None:
                    problems.append(
                        f"{where}: column {name!r}: {parent.name}.{name} is PII ({pii[name]}): "
                        "give it a mask, or `mask: none` with a reason"
                    )
            for c in dataset.row_filter:
                if c.column not in parent.columns:
                    problems.append(f"{where}: field row_filter: {c.column!r} is not a column of {parent.name!r}")
    if problems:
        raise PolicyError("\n".join(f"{path}: {p}" for p in problems))


def load_validated_policy(
    project_dir: Path = DBT_PROJECT_DIR, path: Path | None = None, registry: Registry | None = None
) -> Policy:
    path = path or project_dir / "governance" / "policy.yml"
    policy = load_policy(path)
    validate_against_models(policy, aggregated_models(project_dir), path, registry)
    return policy


# ---------------------------------------------------------------------------------------------
# Generation of the consumer dbt models


def _mask_expression(column: str, rule: ColumnRule) -> str:
    if not rule.masked:
        return column
    if rule.mask == "partial":
        return f"{{{{ mask_partial('{column}', keep_first={rule.keep_first}, keep_last={rule.last}) }}}}"
    return f"{{{{ mask_{rule.mask}('{column}') }}}}"


def _jinja_literal(value: Any, indent: int) -> str:
    """A Python/Jinja literal for config() values, laid out one key per line."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{pad}    {json.dumps(k)}: {_jinja_literal(v, indent + 4)}," for k, v in value.items()]
        return "{\n" + "\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list):
        return "[" + ", ".join(_jinja_literal(v, indent) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _Raw):
        return value.text
    return json.dumps(value)


class _Raw:
    """Jinja expression emitted as is inside a config() literal."""

    def __init__(self, text: str):
        self.text = text


def _principal(arn: str) -> _Raw:
    return _Raw(f"lake_principal({json.dumps(arn)})")


# ---------------------------------------------------------------------------------------------
# Lake Formation: what Athena enforces on each consumer table. dbt-athena applies it from the
# generated models' config (lake_formation_config) and Terraform from infra/generated/
# (lake_assets.core.infra_codegen); both read these functions, so they cannot disagree.

LF_TAG_LAYER = "lake_layer"
LF_TAG_CONSUMER = "lake_consumer"
LF_TAG_MASKING = "lake_masking"
CLEAR = "clear"  # lake_masking of a column exposed as it is
PII_UNMASKED = "pii_unmasked"  # lake_masking of a PII column exposed with `mask: none` and a reason
MASKING_TAG_VALUES = (CLEAR, PII_UNMASKED, *(m for m in MASKS if m != "none"))


def masking_tag(rule: ColumnRule) -> str:
    """The column's `lake_masking` LF tag value: how the consumer table exposes it."""
    if rule.mask is None:
        return CLEAR
    return PII_UNMASKED if rule.mask == "none" else rule.mask


@dataclass(frozen=True)
class CellFilter:
    """The data cells filter of one consumer table: the only cells its consumer's principals read."""

    name: str
    database: str  # consumer_<name>
    table: str  # the dataset
    column_names: tuple[str, ...]  # the dataset's output columns, in order (masked ones by their output name)
    row_filter: str  # over the output columns; "TRUE" when the dataset keeps every row
    principals: tuple[str, ...]  # IAM ARNs, {aws_account_id} not yet filled


def cell_filter(consumer_name: str, consumer: Consumer, dataset_name: str, dataset: Dataset) -> CellFilter:
    return CellFilter(
        name=f"{consumer_name}_{dataset_name}_rows",
        database=consumer_namespace(consumer_name),
        table=dataset_name,
        column_names=tuple(output_column(n, r) for n, r in dataset.columns.items()),
        row_filter=row_filter_sql(dataset, output_names=True) or "TRUE",
        principals=consumer.principals,
    )


def cell_filters(policy: Policy) -> list[CellFilter]:
    return [cell_filter(cn, c, dn, d) for cn, c in policy.consumers.items() for dn, d in c.datasets.items()]


def lake_formation_config(consumer_name: str, consumer: Consumer, dataset_name: str, dataset: Dataset) -> dict:
    """dbt-athena's lf_tags_config and lf_grants for one consumer table."""
    masked_columns: dict[str, list[str]] = {}
    for name, rule in dataset.columns.items():
        masked_columns.setdefault(masking_tag(rule), []).append(output_column(name, rule))
    f = cell_filter(consumer_name, consumer, dataset_name, dataset)
    return {
        "lf_tags_config": {
            "enabled": True,
            "tags": {LF_TAG_LAYER: "consumer", LF_TAG_CONSUMER: consumer_name},
            "tags_columns": {LF_TAG_MASKING: masked_columns},
        },
        "lf_grants": {
            "data_cell_filters": {
                "enabled": True,
                "filters": {
                    f.name: {
                        "row_filter": f.row_filter,
                        "principals": [_principal(p) for p in f.principals],
                    }
                },
            }
        },
    }


def render_model_sql(consumer_name: str, consumer: Consumer, dataset_name: str, dataset: Dataset) -> GeneratedFile:
    lf = lake_formation_config(consumer_name, consumer, dataset_name, dataset)
    config_lines = [
        f"    schema={json.dumps(consumer_namespace(consumer_name))},",
        f"    alias={json.dumps(dataset_name)},",
        f"    tags=[{json.dumps(consumer_namespace(consumer_name))}],",
        f"    lf_tags_config={_jinja_literal(lf['lf_tags_config'], 4)},",
        f"    lf_grants={_jinja_literal(lf['lf_grants'], 4)},",
    ]
    select_lines = []
    for name, rule in dataset.columns.items():
        expr = _mask_expression(name, rule)
        out = output_column(name, rule)
        select_lines.append(expr if expr == out else f"{expr} as {out}")
    sql = [
        "{{ config(",
        *config_lines,
        ") }}",
        "select",
        ",\n".join(f"    {line}" for line in select_lines),
        f"from {{{{ ref('{dataset.from_}') }}}}",
    ]
    where = row_filter_sql(dataset)
    if where:
        sql.append(f"where {where}")
    origin = f"governance/policy.yml (consumer {consumer_name}, dataset {dataset_name}). Edit the policy, not this file."
    return GeneratedFile(origin, "\n".join(sql) + "\n")


def render_properties(consumer_name: str, consumer: Consumer) -> GeneratedFile:
    entries = []
    for dataset_name, dataset in consumer.datasets.items():
        outputs = [output_column(n, r) for n, r in dataset.columns.items()]
        tests: list[Any] = [{"lake_exact_columns": {"arguments": {"columns": outputs}}}]
        where = row_filter_sql(dataset, output_names=True)
        if where:
            tests.append({"lake_row_filter": {"arguments": {"expression": where}}})
        columns = []
        for name, rule in dataset.columns.items():
            col: dict[str, Any] = {"name": output_column(name, rule)}
            if rule.masked:
                args: dict[str, Any] = {"mask": rule.mask}
                if rule.mask == "partial":
                    args.update(keep_first=rule.keep_first, keep_last=rule.last)
                col["description"] = f"{dataset.from_}.{name}, masked: {rule.mask}"
                col["data_tests"] = [{"lake_masked": {"arguments": args}}]
                col["config"] = {"meta": {"lake_mask": rule.mask, "lake_source_column": name}}
            elif rule.mask == "none":
                col["description"] = f"{dataset.from_}.{name}, PII exposed unmasked: {rule.reason}"
                col["config"] = {"meta": {"lake_mask": "none", "lake_source_column": name}}
            else:
                col["description"] = f"{dataset.from_}.{name}"
            columns.append(col)
        entries.append(
            {
                "name": consumer_model_name(consumer_name, dataset_name),
                "description": dataset.description or f"{dataset_name} for consumer {consumer_name}",
                "config": {
                    "meta": {
                        "lake_consumer": consumer_name,
                        "lake_dataset": dataset_name,
                        "lake_policy": "governance/policy.yml",
                        **({"owner": consumer.owner} if consumer.owner else {}),
                    }
                },
                "data_tests": tests,
                "columns": columns,
            }
        )
    return GeneratedFile(
        f"governance/policy.yml (consumer {consumer_name}). Edit the policy, not this file.",
        yaml.safe_dump({"version": 2, "models": entries}, sort_keys=False, width=110, allow_unicode=True),
    )


def render_consumer_models(policy: Policy) -> dict[Path, GeneratedFile]:
    """Relative path (under the dbt project) -> every generated consumer file."""
    files: dict[Path, GeneratedFile] = {}
    for cname, consumer in policy.consumers.items():
        folder = CONSUMER_MODELS_DIR / cname
        files[folder / f"_{cname}__models.yml"] = render_properties(cname, consumer)
        for dname, dataset in consumer.datasets.items():
            files[folder / f"{consumer_model_name(cname, dname)}.sql"] = render_model_sql(cname, consumer, dname, dataset)
    return files


def generated_consumer_models(project_dir: Path = DBT_PROJECT_DIR, registry: Registry | None = None) -> GeneratedFolder:
    """models/consumer/: the validated policy's models (raises PolicyError naming what is wrong)."""
    policy = load_validated_policy(project_dir, registry=registry)
    return GeneratedFolder(CONSUMER_MODELS_DIR, "governance/policy.yml", render_consumer_models(policy))


def main(argv: list[str] | None = None) -> int:
    """The older name of `python -m lake_assets.core.dbt_codegen`, kept so scripts that call it
    regenerate (or check) every generated dbt file, sources included."""
    return dbt_codegen.main(argv, prog="python -m lake_assets.core.governance")


if __name__ == "__main__":
    sys.exit(main())
