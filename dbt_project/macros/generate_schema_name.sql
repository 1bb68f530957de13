{#- Models land in the namespace they declare (`aggregated`, `consumer_<name>`), verbatim: the same
    Iceberg namespace / Glue database on every target, never dbt's `<target schema>_<custom>`. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
