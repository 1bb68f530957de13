{#- An IAM principal from the governance policy, with {aws_account_id} filled from
    LAKE_AWS_ACCOUNT_ID (used in the generated consumer models' lf_grants). -#}
{% macro lake_principal(arn) -%}
    {{ return(arn | replace('{aws_account_id}', env_var('LAKE_AWS_ACCOUNT_ID', '000000000000'))) }}
{%- endmacro %}
