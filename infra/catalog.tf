# Glue databases: one per registry source (source-aligned tables), `aggregated`, each
# `consumer_<name>` of the governance policy, and `lake_governance` (the mask key table). Their
# names come from infra/generated/; the warehouse location of each is where pyiceberg and Spark
# write its tables.

locals {
  databases = toset(concat(
    local.lake.source_databases,
    [local.lake.aggregated_database, local.lake.governance_database],
    [for c in values(local.lake.consumers) : c.database],
  ))
  warehouse_uri = "s3://${aws_s3_bucket.lake["warehouse"].id}/warehouse"
}

resource "aws_glue_catalog_database" "lake" {
  for_each     = local.databases
  name         = each.value
  location_uri = "${local.warehouse_uri}/${each.value}.db"
  description  = lookup(local.lake.database_descriptions, each.value, "")
}

resource "aws_cloudwatch_log_group" "emr" {
  name              = "/aws/emr-serverless/${var.name_prefix}"
  retention_in_days = 30
}

resource "aws_emrserverless_application" "spark" {
  count         = var.enable_emr_serverless ? 1 : 0
  name          = "${var.name_prefix}-spark"
  release_label = var.emr_release_label
  type          = "spark"
  architecture  = "X86_64"

  maximum_capacity {
    cpu    = "${var.emr_max_vcpu} vCPU"
    memory = "${var.emr_max_vcpu * 4} GB"
  }
  auto_start_configuration {
    enabled = true
  }
  auto_stop_configuration {
    enabled              = true
    idle_timeout_minutes = 15
  }
}

# dbt's workgroup, and one per consumer so no consumer can read another's query results.
resource "aws_athena_workgroup" "lake" {
  for_each = var.enable_athena ? merge({ (var.name_prefix) = "lake" }, { for name, c in local.lake.consumers : "${var.name_prefix}-${name}" => name }) : {}
  name     = each.key
  # A workgroup holding query history must go with its queries on destroy.
  force_destroy = true
  configuration {
    enforce_workgroup_configuration    = true
    publish_cloudwatch_metrics_enabled = true
    engine_version {
      selected_engine_version = "Athena engine version 3"
    }
    result_configuration {
      output_location = "s3://${aws_s3_bucket.lake["athena_results"].id}/${each.value}/"
      encryption_configuration {
        encryption_option = "SSE_KMS"
        kms_key_arn       = aws_kms_key.lake.arn
      }
    }
  }
}

# The values are never in Terraform (its state would hold them): the operator puts them
# (infra/README.md). The code location gets the ledger DSN and the Slack token in its environment
# from these secrets, and reads the mask key itself (LAKE_MASK_KEY_SECRET_ID).
resource "aws_secretsmanager_secret" "lake" {
  for_each = {
    ledger_dsn  = "PostgreSQL DSN of the file ledger and the Dagster instance (LAKE_LEDGER_DSN)"
    slack_token = "Slack bot token of the alert sensors (LAKE_SLACK_TOKEN)"
    mask_key    = "32-byte HMAC key of the governance policy's hash mask (LAKE_MASK_KEY_SECRET_ID)"
  }
  name        = "${var.name_prefix}/${replace(each.key, "_", "-")}"
  description = each.value
  kms_key_id  = aws_kms_key.lake.arn
  # A deleted mask key changes every hashed value: keep a window to restore it.
  recovery_window_in_days = 30
}
