# What the Dagster code location's environment needs (README "Configuration"); the secrets'
# values reach it from Secrets Manager (ECS task `secrets`, or the code reading them by id).
output "code_location_environment" {
  description = "Environment variables of the Dagster code location."
  value = merge({
    LAKE_ENV                    = "aws"
    AWS_REGION                  = var.region
    LAKE_WAREHOUSE_URI          = local.warehouse_uri
    LAKE_LANDING_BUCKET         = aws_s3_bucket.lake["landing"].id
    LAKE_LANDING_PREFIX         = local.landing_prefix
    LAKE_ARRIVALS_QUEUE_URL     = aws_sqs_queue.arrivals.url
    LAKE_MASK_KEY_SECRET_ID     = aws_secretsmanager_secret.lake["mask_key"].name
    LAKE_SLACK_TOKEN_SECRET_ID  = aws_secretsmanager_secret.lake["slack_token"].name
    LAKE_EMR_EXECUTION_ROLE_ARN = aws_iam_role.emr_runtime.arn
    LAKE_EMR_SCRIPT_URI         = "s3://${aws_s3_bucket.lake["warehouse"].id}/${local.emr_artifacts_prefix}/merge_job.py"
    LAKE_EMR_ENVIRONMENT_URI    = "s3://${aws_s3_bucket.lake["warehouse"].id}/${local.emr_artifacts_prefix}/environment.tar.gz"
    LAKE_EMR_JOBS_URI           = "s3://${aws_s3_bucket.lake["warehouse"].id}/${local.emr_artifacts_prefix}/jobs"
    LAKE_EMR_LOG_GROUP          = aws_cloudwatch_log_group.emr.name
    LAKE_AWS_ACCOUNT_ID         = local.account_id
    LAKE_ATHENA_S3_DATA_DIR     = local.warehouse_uri
    }, var.enable_emr_serverless ? { LAKE_EMR_APPLICATION_ID = aws_emrserverless_application.spark[0].id } : {},
    var.enable_athena ? {
      LAKE_ATHENA_WORKGROUP      = aws_athena_workgroup.lake[var.name_prefix].name
      LAKE_ATHENA_S3_STAGING_DIR = "s3://${aws_s3_bucket.lake["athena_results"].id}/lake/"
  } : {})
}

output "code_location_secrets" {
  description = "Environment variables of the code location to fill from Secrets Manager (ECS task definition `secrets`: name -> valueFrom)."
  value = {
    LAKE_LEDGER_DSN = aws_secretsmanager_secret.lake["ledger_dsn"].arn
  }
}

output "code_location_role_arn" {
  value = aws_iam_role.code_location.arn
}

output "arrivals_dead_letter_queue_url" {
  value = aws_sqs_queue.arrivals_dlq.url
}

output "secret_ids" {
  description = "Secrets whose values the operator puts (infra/README.md)."
  value       = { for k, s in aws_secretsmanager_secret.lake : k => s.name }
}

output "consumer_role_arns" {
  value = { for name, r in aws_iam_role.consumer : name => r.arn }
}

output "glue_databases" {
  value = sort([for d in aws_glue_catalog_database.lake : d.name])
}
