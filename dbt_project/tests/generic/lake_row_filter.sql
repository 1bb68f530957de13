{#- Fails with the rows that the consumer's row filter forbids. -#}
{% test lake_row_filter(model, expression) %}
select * from {{ model }} where not coalesce(({{ expression }}), false)
{% endtest %}
