{#- Fails with one row per column that is missing from, or not allowed in, the table. Without
    `columns`, the allowed columns are the ones documented for the model, so a table and its
    documentation (which the governance policy is validated against) cannot drift apart.
    Reads information_schema in SQL rather than introspecting from Jinja, so the test compiles
    offline for Athena. -#}
{% test lake_exact_columns(model, columns=none) %}
{%- set expected = [] -%}
{%- if columns is not none -%}
    {%- for c in columns %}{% do expected.append(c | lower) %}{% endfor -%}
{%- elif execute -%}
    {%- for node in graph.nodes.values() if node.resource_type == 'model'
            and node.alias | lower == model.identifier | lower and node.schema | lower == model.schema | lower -%}
        {%- for c in node.columns.keys() %}{% do expected.append(c | lower) %}{% endfor -%}
    {%- endfor -%}
{%- endif -%}
with actual as (
    select lower(column_name) as column_name
    from information_schema.columns
    where table_catalog = '{{ model.database }}'
      and table_schema = '{{ model.schema }}'
      and table_name = '{{ model.identifier }}'
),
expected as (
    {%- for c in expected %}
    select '{{ c }}' as column_name {% if not loop.last %}union all{% endif %}
    {%- else %}
    select cast(null as varchar) as column_name where 1 = 0
    {%- endfor %}
)
select
    coalesce(a.column_name, e.column_name) as column_name,
    case when e.column_name is null then 'not allowed' else 'missing' end as problem
from actual as a
full outer join expected as e on e.column_name = a.column_name
where a.column_name is null or e.column_name is null
{% endtest %}
