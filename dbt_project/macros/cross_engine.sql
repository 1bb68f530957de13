{#-
  SQL that differs between Athena (Trino) and DuckDB, decided once here. `default__` is the
  Athena/Trino form, `duckdb__` the local one; models call the dispatching macro only.
  The list, with examples, is in dbt_project/README.md ("Dialect differences").
-#}

{#- Iceberg on Athena stores microsecond timestamps without zone: timestamp(6). DuckDB's
    TIMESTAMP already is that, and DuckDB does not accept a precision on TIMESTAMP. -#}
{% macro lake_timestamp(expr) -%}
    {{ return(adapter.dispatch('lake_timestamp')(expr)) }}
{%- endmacro %}
{% macro default__lake_timestamp(expr) -%}
    cast({{ expr }} as timestamp(6))
{%- endmacro %}
{% macro duckdb__lake_timestamp(expr) -%}
    cast({{ expr }} as timestamp)
{%- endmacro %}

{#- The UTC calendar day of a timestamptz. Trino's cast keeps the value's zone (Iceberg's timestamptz
    reads as UTC there); DuckDB's cast uses the session's TimeZone, so the day is taken in UTC first. -#}
{% macro utc_date(expr) -%}
    {{ return(adapter.dispatch('utc_date')(expr)) }}
{%- endmacro %}
{% macro default__utc_date(expr) -%}
    cast({{ expr }} at time zone 'UTC' as date)
{%- endmacro %}
{% macro duckdb__utc_date(expr) -%}
    cast(timezone('UTC', {{ expr }}) as date)
{%- endmacro %}

{#- Integer division truncating toward zero. Trino's `/` on integers already is; DuckDB's `/`
    returns a double and `//` floors (identical for the non-negative values this is used on). -#}
{% macro int_divide(numerator, denominator) -%}
    {{ return(adapter.dispatch('int_divide')(numerator, denominator)) }}
{%- endmacro %}
{% macro default__int_divide(numerator, denominator) -%}
    (cast({{ numerator }} as bigint) / nullif(cast({{ denominator }} as bigint), 0))
{%- endmacro %}
{% macro duckdb__int_divide(numerator, denominator) -%}
    (cast({{ numerator }} as bigint) // nullif(cast({{ denominator }} as bigint), 0))
{%- endmacro %}

{#- Floating ratio, null when the denominator is 0 or null (no division-by-zero error on either). -#}
{% macro safe_ratio(numerator, denominator) -%}
    (cast({{ numerator }} as double) / nullif(cast({{ denominator }} as double), 0))
{%- endmacro %}

{#- Elapsed seconds between two timestamps, fractional. Trino's date_diff counts whole units
    elapsed while DuckDB's counts unit boundaries crossed, so both use epoch arithmetic. -#}
{% macro seconds_between(start_ts, end_ts) -%}
    {{ return(adapter.dispatch('seconds_between')(start_ts, end_ts)) }}
{%- endmacro %}
{% macro default__seconds_between(start_ts, end_ts) -%}
    (to_unixtime({{ end_ts }}) - to_unixtime({{ start_ts }}))
{%- endmacro %}
{% macro duckdb__seconds_between(start_ts, end_ts) -%}
    (epoch({{ end_ts }}) - epoch({{ start_ts }}))
{%- endmacro %}

{#- date + n days: Trino's date_add takes (unit, n, date); DuckDB's takes (date, interval).
    `ts < add_days(last_day, 1)` compares a timestamp with an inclusive last day without casting
    every row (which would defeat partition pruning on a timestamp-partitioned table). -#}
{% macro add_days(date_expr, days) -%}
    {{ return(adapter.dispatch('add_days')(date_expr, days)) }}
{%- endmacro %}
{% macro default__add_days(date_expr, days) -%}
    date_add('day', {{ days }}, {{ date_expr }})
{%- endmacro %}
{% macro duckdb__add_days(date_expr, days) -%}
    cast({{ date_expr }} + to_days(cast({{ days }} as integer)) as date)
{%- endmacro %}

{#- Lower-case hex HMAC-SHA256 of a value's text form under the lake's mask key, which never
    appears in SQL (lake_assets/core/mask_key.py). DuckDB has no HMAC function: the dbt plugin
    defines the macro lake_masking.main.hmac_sha256_hex from its key file. Trino has
    hmac_sha256(varbinary, varbinary) and upper-cases hex; the key is read from the one-row table
    var('lake_mask_key_table'), which only the role dbt runs as may read. -#}
{% macro hmac_sha256_hex(expr) -%}
    {{ return(adapter.dispatch('hmac_sha256_hex')(expr)) }}
{%- endmacro %}
{% macro default__hmac_sha256_hex(expr) -%}
    lower(to_hex(hmac_sha256(to_utf8(cast({{ expr }} as varchar)), (select key from {{ var('lake_mask_key_table') }}))))
{%- endmacro %}
{% macro duckdb__hmac_sha256_hex(expr) -%}
    lake_masking.main.hmac_sha256_hex(cast({{ expr }} as varchar))
{%- endmacro %}

{#- Amount converted to the reporting currency at the plan rates in dbt_project.yml vars. -#}
{% macro to_reporting_currency(amount, currency) -%}
    cast(round({{ amount }} * case {{ currency }}
    {%- for code, rate in var('fx_plan_rates').items() %}
        when '{{ code }}' then {{ rate }}
    {%- endfor %}
    end, 2) as decimal(18, 2))
{%- endmacro %}

{#- Regular-expression search (true when `pattern` matches anywhere; anchor it with ^...$). -#}
{% macro regex_matches(expr, pattern) -%}
    {{ return(adapter.dispatch('regex_matches')(expr, pattern)) }}
{%- endmacro %}
{% macro default__regex_matches(expr, pattern) -%}
    regexp_like({{ expr }}, '{{ pattern }}')
{%- endmacro %}
{% macro duckdb__regex_matches(expr, pattern) -%}
    regexp_matches({{ expr }}, '{{ pattern }}')
{%- endmacro %}

{#- A string of `n` copies of one character. Trino's repeat() builds an array, so it pads an
    empty string; DuckDB's lpad takes an INTEGER length and has a string repeat(). -#}
{% macro repeat_char(char, n) -%}
    {{ return(adapter.dispatch('repeat_char')(char, n)) }}
{%- endmacro %}
{% macro default__repeat_char(char, n) -%}
    lpad('', {{ n }}, '{{ char }}')
{%- endmacro %}
{% macro duckdb__repeat_char(char, n) -%}
    repeat('{{ char }}', cast({{ n }} as integer))
{%- endmacro %}
