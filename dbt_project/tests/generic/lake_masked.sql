{#- Fails with the rows whose value in `column_name` does not have the shape of `mask`
    (see macros/masks.sql). The leak tests in tests/dbt compare every value exactly. -#}
{% test lake_masked(model, column_name, mask, keep_first=0, keep_last=4) %}
select {{ column_name }} as value
from {{ model }}
where {{ column_name }} is not null
{%- if mask == 'hash' %}
    and not {{ regex_matches(column_name, '^[0-9a-f]{64}$') }}
{%- elif mask == 'redact' %}
    and {{ column_name }} <> '[REDACTED]'
{%- elif mask == 'partial' %}
    and not {{ regex_matches(column_name, '^(.{' ~ keep_first ~ '}[*]+.{' ~ keep_last ~ '}|[*]+)$') }}
{%- elif mask == 'null' %}
{%- elif mask == 'year_only' %}
    and ({{ column_name }} < 1900 or {{ column_name }} > 2100)
{%- else %}
    {{ exceptions.raise_compiler_error("lake_masked: unknown mask " ~ mask) }}
{%- endif %}
{% endtest %}
