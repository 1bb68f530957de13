{#-
  `iceberg_table` on DuckDB: build the model in DuckDB, then hand the rows to the lake_iceberg
  plugin, which overwrites the Iceberg table <schema>.<alias> in the local pyiceberg catalog and
  re-points the DuckDB view of that name at the new snapshot. On Athena the same models use the
  adapter's `table` materialization with table_type='iceberg' (see dbt_project.yml).
-#}
{% materialization iceberg_table, adapter='duckdb' %}
  {%- set target_relation = this.incorporate(type='view') -%}
  {%- set build_relation = make_intermediate_relation(this.incorporate(type='table'), suffix='__lake_build') -%}
  {{ drop_relation_if_exists(load_cached_relation(build_relation)) }}

  {{ run_hooks(pre_hooks, inside_transaction=False) }}
  {{ run_hooks(pre_hooks, inside_transaction=True) }}

  {% call statement('main') -%}
    {{ create_table_as(False, build_relation, compiled_code) }}
  {%- endcall %}
  {{ run_hooks(post_hooks, inside_transaction=True) }}
  {#- the plugin reads the build table through its own cursor: it must be committed first -#}
  {{ adapter.commit() }}

  {%- set store_options = {
      'partitioned_by': config.get('partitioned_by'),
      'snapshot_properties': {
          'dbt.model': model.unique_id,
          'dbt.invocation_id': invocation_id,
          'dbt.target': target.name,
      },
  } -%}
  {% do adapter.store_relation(
      config.get('lake_plugin', 'lake'),
      target_relation,
      adapter.get_columns_in_relation(build_relation),
      build_relation.render(),
      'iceberg',
      store_options,
  ) %}

  {% call statement('drop_build_relation') -%}
    drop table if exists {{ build_relation }}
  {%- endcall %}
  {{ adapter.commit() }}

  {{ run_hooks(post_hooks, inside_transaction=False) }}
  {{ return({'relations': [target_relation]}) }}
{% endmaterialization %}
