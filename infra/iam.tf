# Least-privilege roles: the Dagster code location (sensors, in-process merges, dbt on Athena, EMR
# job submission), the EMR Serverless job runtime (Spark merges of source-aligned tables), each
# consumer (Athena queries of its own consumer_<name> tables, through Lake Formation only), and the
# role Lake Formation reads the warehouse with. No consumer has S3 access to the warehouse: its
# data reaches a consumer only through Lake Formation's filters.

locals {
  bucket_arn        = { for k, b in aws_s3_bucket.lake : k => b.arn }
  catalog_arn       = "arn:${local.partition}:glue:${var.region}:${local.account_id}:catalog"
  database_arns     = { for d in local.databases : d => "arn:${local.partition}:glue:${var.region}:${local.account_id}:database/${d}" }
  table_arns        = { for d in local.databases : d => "arn:${local.partition}:glue:${var.region}:${local.account_id}:table/${d}/*" }
  source_databases  = toset(local.lake.source_databases)
  emr_application   = var.enable_emr_serverless ? aws_emrserverless_application.spark[0].arn : "arn:${local.partition}:emr-serverless:${var.region}:${local.account_id}:/applications/none"
  consumer_roles    = merge([for name, c in local.lake.consumers : { for r in c.role_names : r => name }]...)
  glue_read_actions = ["glue:GetDatabase", "glue:GetDatabases", "glue:GetTable", "glue:GetTables", "glue:GetPartition", "glue:GetPartitions", "glue:BatchGetPartition"]
  glue_write_actions = ["glue:CreateTable", "glue:UpdateTable", "glue:DeleteTable", "glue:BatchDeleteTable", "glue:GetTableVersions",
  "glue:CreatePartition", "glue:BatchCreatePartition", "glue:UpdatePartition", "glue:DeletePartition", "glue:BatchDeletePartition"]
}

data "aws_iam_policy_document" "trust_code_location" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = var.code_location_trusted_services
    }
  }
}

resource "aws_iam_role" "code_location" {
  name               = "${var.name_prefix}-code-location"
  description        = "Dagster code location of the lake: sensors, merges, dbt, EMR submission"
  assume_role_policy = data.aws_iam_policy_document.trust_code_location.json
}

data "aws_iam_policy_document" "code_location" {
  statement {
    sid       = "ReadLanding"
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = ["${local.bucket_arn.landing}/*"]
  }
  statement {
    sid       = "ListBuckets"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = values(local.bucket_arn)
  }
  statement {
    sid       = "ReadWriteWarehouseAndResults"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["${local.bucket_arn.warehouse}/*", "${local.bucket_arn.athena_results}/lake/*"]
  }
  statement {
    sid       = "UseLakeKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = [aws_kms_key.lake.arn]
  }
  statement {
    sid       = "ConsumeArrivals"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
    resources = [aws_sqs_queue.arrivals.arn]
  }
  statement {
    sid       = "Catalog"
    actions   = concat(local.glue_read_actions, local.glue_write_actions)
    resources = concat([local.catalog_arn], values(local.database_arns), values(local.table_arns))
  }
  statement {
    sid       = "ReadSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [for s in aws_secretsmanager_secret.lake : s.arn]
  }
  statement {
    sid       = "RunDbtOnAthena"
    actions   = ["athena:StartQueryExecution", "athena:GetQueryExecution", "athena:GetQueryResults", "athena:StopQueryExecution", "athena:GetWorkGroup"]
    resources = ["arn:${local.partition}:athena:${var.region}:${local.account_id}:workgroup/${var.name_prefix}"]
  }
  statement {
    sid       = "SubmitSparkMerges"
    actions   = ["emr-serverless:StartJobRun", "emr-serverless:GetJobRun", "emr-serverless:CancelJobRun", "emr-serverless:GetDashboardForJobRun", "emr-serverless:GetApplication"]
    resources = [local.emr_application, "${local.emr_application}/jobruns/*"]
  }
  statement {
    sid       = "PassEmrRuntimeRole"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.emr_runtime.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["emr-serverless.amazonaws.com"]
    }
  }
  statement {
    sid       = "ReadPipesMessages" # Dagster Pipes reads the EMR job's messages from its logs
    actions   = ["logs:GetLogEvents", "logs:FilterLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.emr.arn}:*"]
  }
  statement {
    sid = "LakeFormation" # credentials for registered locations; dbt-athena applies the generated LF tags and filters
    actions = ["lakeformation:GetDataAccess", "lakeformation:AddLFTagsToResource", "lakeformation:RemoveLFTagsFromResource",
      "lakeformation:GetResourceLFTags", "lakeformation:ListLFTags", "lakeformation:GetLFTag", "lakeformation:ListDataCellsFilter",
      "lakeformation:CreateDataCellsFilter", "lakeformation:UpdateDataCellsFilter", "lakeformation:DeleteDataCellsFilter",
    "lakeformation:ListPermissions", "lakeformation:BatchGrantPermissions", "lakeformation:BatchRevokePermissions"]
    resources = ["*"] # Lake Formation's API takes no resource ARNs; its own grants below scope it
  }
}

resource "aws_iam_role_policy" "code_location" {
  name   = "lake"
  role   = aws_iam_role.code_location.id
  policy = data.aws_iam_policy_document.code_location.json
}

data "aws_iam_policy_document" "trust_emr" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["emr-serverless.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "emr_runtime" {
  name               = "${var.name_prefix}-emr-runtime"
  description        = "EMR Serverless job runtime: Spark merges of the lake's source-aligned tables"
  assume_role_policy = data.aws_iam_policy_document.trust_emr.json
}

data "aws_iam_policy_document" "emr_runtime" {
  statement {
    sid       = "ReadLanding"
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = ["${local.bucket_arn.landing}/*"]
  }
  statement {
    sid       = "ListBuckets"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn.landing, local.bucket_arn.warehouse]
  }
  statement {
    sid       = "WriteSourceAlignedTablesAndPipesMessages"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = concat([for d in local.source_databases : "${local.bucket_arn.warehouse}/warehouse/${d}.db/*"], ["${local.bucket_arn.warehouse}/${local.emr_artifacts_prefix}/*"])
  }
  statement {
    sid       = "UseLakeKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = [aws_kms_key.lake.arn]
  }
  statement {
    sid       = "SourceAlignedCatalog"
    actions   = concat(local.glue_read_actions, local.glue_write_actions)
    resources = concat([local.catalog_arn], [for d in local.source_databases : local.database_arns[d]], [for d in local.source_databases : local.table_arns[d]])
  }
  statement {
    sid       = "WriteJobLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.emr.arn}:*"]
  }
  statement {
    sid       = "LakeFormationCredentials"
    actions   = ["lakeformation:GetDataAccess"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "emr_runtime" {
  name   = "lake"
  role   = aws_iam_role.emr_runtime.id
  policy = data.aws_iam_policy_document.emr_runtime.json
}

# --- consumers: one role per principal of the policy that is a role of this account ------------

data "aws_iam_policy_document" "trust_consumer" {
  for_each = local.consumer_roles
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "AWS"
      identifiers = lookup(var.consumer_trusted_principals, each.value, ["arn:${local.partition}:iam::${local.account_id}:root"])
    }
  }
}

resource "aws_iam_role" "consumer" {
  for_each           = local.consumer_roles
  name               = each.key
  description        = "Consumer ${each.value} of the lake: Athena queries of ${local.lake.consumers[each.value].database}"
  assume_role_policy = data.aws_iam_policy_document.trust_consumer[each.key].json
}

data "aws_iam_policy_document" "consumer" {
  for_each = local.consumer_roles
  statement {
    sid       = "QueryInOwnWorkgroup"
    actions   = ["athena:StartQueryExecution", "athena:GetQueryExecution", "athena:GetQueryResults", "athena:StopQueryExecution", "athena:GetWorkGroup"]
    resources = ["arn:${local.partition}:athena:${var.region}:${local.account_id}:workgroup/${var.name_prefix}-${each.value}"]
  }
  statement {
    sid       = "OwnQueryResults"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"]
    resources = ["${local.bucket_arn.athena_results}/${each.value}/*"]
  }
  statement {
    sid       = "ListOwnQueryResults"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [local.bucket_arn.athena_results]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${each.value}/*"]
    }
  }
  statement {
    sid       = "OwnConsumerCatalog"
    actions   = local.glue_read_actions
    resources = [local.catalog_arn, local.database_arns[local.lake.consumers[each.value].database], local.table_arns[local.lake.consumers[each.value].database]]
  }
  statement {
    sid       = "EncryptedResults"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.lake.arn]
  }
  statement {
    sid       = "LakeFormationCredentials"
    actions   = ["lakeformation:GetDataAccess"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "consumer" {
  for_each = local.consumer_roles
  name     = "lake"
  role     = aws_iam_role.consumer[each.key].id
  policy   = data.aws_iam_policy_document.consumer[each.key].json
}

# --- the role Lake Formation reads and writes the registered warehouse with ---------------------

data "aws_iam_policy_document" "trust_lakeformation" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lakeformation.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "lakeformation_data_access" {
  name               = "${var.name_prefix}-lakeformation-data-access"
  description        = "Lake Formation's access to the lake's warehouse bucket"
  assume_role_policy = data.aws_iam_policy_document.trust_lakeformation.json
}

data "aws_iam_policy_document" "lakeformation_data_access" {
  statement {
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${local.bucket_arn.warehouse}/warehouse/*"]
  }
  statement {
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn.warehouse]
  }
  statement {
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.lake.arn]
  }
}

resource "aws_iam_role_policy" "lakeformation_data_access" {
  name   = "warehouse"
  role   = aws_iam_role.lakeformation_data_access.id
  policy = data.aws_iam_policy_document.lakeformation_data_access.json
}
