{#-
  Column masks of the governance policy (governance/policy.yml). Each returns an expression over
  the unmasked column; nulls stay null. Engine differences go through cross_engine.sql.
  The leak tests re-implement each mask in Python and compare every row.
-#}

{#- hash: lower-case hex HMAC-SHA256 of the value's text under the lake's secret mask key. The same
    value gives the same hash in every dataset (joinable), but without the key no one can confirm a
    guess: enumerating ids or a dictionary of e-mails reverses an unkeyed hash, not this one. -#}
{% macro mask_hash(column) -%}
    {{ hmac_sha256_hex(column) }}
{%- endmacro %}

{#- redact: a constant marker where a value exists. -#}
{% macro mask_redact(column) -%}
    case when {{ column }} is null then null else '[REDACTED]' end
{%- endmacro %}

{#- partial: keep the first `keep_first` and last `keep_last` characters, '*' for the rest; a value
    no longer than what would be kept is masked entirely, so short values never leak. -#}
{% macro mask_partial(column, keep_first=0, keep_last=4) -%}
    {%- set value = 'cast(' ~ column ~ ' as varchar)' -%}
    case
        when {{ column }} is null then null
        when length({{ value }}) <= {{ keep_first + keep_last }} then {{ repeat_char('*', 'length(' ~ value ~ ')') }}
        else
            {%- if keep_first > 0 %} substr({{ value }}, 1, {{ keep_first }}) || {% endif %}
            {{ repeat_char('*', 'length(' ~ value ~ ') - ' ~ (keep_first + keep_last)) }}
            {%- if keep_last > 0 %} || substr({{ value }}, length({{ value }}) - {{ keep_last - 1 }}, {{ keep_last }}){% endif %}
    end
{%- endmacro %}

{#- null: the column stays (with its type) but carries no value. -#}
{% macro mask_null(column) -%}
    case when false then {{ column }} end
{%- endmacro %}

{#- year_only: a date or timestamp reduced to its year, as an integer. -#}
{% macro mask_year_only(column) -%}
    cast(extract(year from {{ column }}) as integer)
{%- endmacro %}

{#- Dispatch on the policy's mask name (used by generated consumer models and by the tests). -#}
{% macro apply_mask(column, mask, keep_first=0, keep_last=4) -%}
    {%- if mask == 'hash' -%}{{ mask_hash(column) }}
    {%- elif mask == 'redact' -%}{{ mask_redact(column) }}
    {%- elif mask == 'partial' -%}{{ mask_partial(column, keep_first, keep_last) }}
    {%- elif mask == 'null' -%}{{ mask_null(column) }}
    {%- elif mask == 'year_only' -%}{{ mask_year_only(column) }}
    {%- else -%}{{ exceptions.raise_compiler_error("unknown mask " ~ mask ~ " for column " ~ column) }}
    {%- endif -%}
{%- endmacro %}
