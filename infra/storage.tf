# The lake's buckets and the arrivals queue. Every bucket is SSE-KMS with the lake's customer key,
# versioned, and closed to the public.

locals {
  buckets = {
    landing        = "${var.name_prefix}-${local.account_id}-landing"
    warehouse      = "${var.name_prefix}-${local.account_id}-warehouse"
    athena_results = "${var.name_prefix}-${local.account_id}-athena-results"
  }
  landing_prefix = trimprefix(var.landing_prefix, "/")
  # EMR Serverless job script, its Python environment archive and Pipes messages (LAKE_EMR_*_URI).
  emr_artifacts_prefix = "_emr"
}

resource "aws_kms_key" "lake" {
  description         = "${var.name_prefix}: buckets and secrets of the lake"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.lake_key.json
}

resource "aws_kms_alias" "lake" {
  name          = "alias/${var.name_prefix}"
  target_key_id = aws_kms_key.lake.key_id
}

data "aws_iam_policy_document" "lake_key" {
  # The account administers the key and delegates its use to IAM policies (the roles below).
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }
}

resource "aws_s3_bucket" "lake" {
  for_each = local.buckets
  bucket   = each.value
}

resource "aws_s3_bucket_versioning" "lake" {
  for_each = aws_s3_bucket.lake
  bucket   = each.value.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "lake" {
  for_each = aws_s3_bucket.lake
  bucket   = each.value.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.lake.arn
    }
    bucket_key_enabled = true # one KMS call per object batch, not per object
  }
}

resource "aws_s3_bucket_public_access_block" "lake" {
  for_each                = aws_s3_bucket.lake
  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "lake" {
  for_each = aws_s3_bucket.lake
  bucket   = each.value.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

# Landed files are the lake's raw backup for `--rebuild`: kept landing_retention_days, then expired
# (a DMS rewrite leaves the old version noncurrent: it goes after the same time).
resource "aws_s3_bucket_lifecycle_configuration" "landing" {
  bucket                                 = aws_s3_bucket.lake["landing"].id
  transition_default_minimum_object_size = "all_storage_classes_128K"
  rule {
    id     = "expire-landed-files"
    status = "Enabled"
    filter {}
    expiration {
      days = var.landing_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = var.landing_retention_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
  depends_on = [aws_s3_bucket_versioning.lake]
}

resource "aws_s3_bucket_lifecycle_configuration" "athena_results" {
  bucket = aws_s3_bucket.lake["athena_results"].id
  rule {
    id     = "expire-query-results"
    status = "Enabled"
    filter {}
    expiration {
      days = var.athena_results_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }
  depends_on = [aws_s3_bucket_versioning.lake]
}

# The warehouse keeps Iceberg's files as long as the tables reference them (maintenance expires
# snapshots and orphans); S3 only drops versions Iceberg already deleted.
resource "aws_s3_bucket_lifecycle_configuration" "warehouse" {
  bucket = aws_s3_bucket.lake["warehouse"].id
  rule {
    id     = "expire-deleted-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 7
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
  depends_on = [aws_s3_bucket_versioning.lake]
}

# Only TLS requests reach the lake's data.
data "aws_iam_policy_document" "tls_only" {
  for_each = aws_s3_bucket.lake
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [each.value.arn, "${each.value.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "lake" {
  for_each   = aws_s3_bucket.lake
  bucket     = each.value.id
  policy     = data.aws_iam_policy_document.tls_only[each.key].json
  depends_on = [aws_s3_bucket_public_access_block.lake]
}

# --- arrivals: ObjectCreated notifications of the landing bucket into SQS (README "On AWS") -----

resource "aws_sqs_queue" "arrivals_dlq" {
  name                      = "${var.name_prefix}-arrivals-dlq"
  message_retention_seconds = 1209600 # 14 days: time to look at what landed there
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "arrivals" {
  name                       = "${var.name_prefix}-arrivals"
  visibility_timeout_seconds = var.arrivals_visibility_timeout_seconds
  message_retention_seconds  = 345600 # 4 days; the landing sensor's listing reconciles what expires
  # SSE-SQS: S3 can notify an SSE-SQS queue without a key policy; a notification holds only keys
  # and sizes, the files stay in the KMS-encrypted bucket.
  sqs_managed_sse_enabled = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.arrivals_dlq.arn
    maxReceiveCount     = var.arrivals_max_receive_count
  })
}

data "aws_iam_policy_document" "arrivals_queue" {
  statement {
    sid       = "LandingBucketNotifies"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.arrivals.arn]
    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.lake["landing"].arn]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_sqs_queue_policy" "arrivals" {
  queue_url = aws_sqs_queue.arrivals.id
  policy    = data.aws_iam_policy_document.arrivals_queue.json
}

resource "aws_s3_bucket_notification" "landing" {
  bucket = aws_s3_bucket.lake["landing"].id
  queue {
    id            = "lake-arrivals"
    queue_arn     = aws_sqs_queue.arrivals.arn
    events        = ["s3:ObjectCreated:*"]
    filter_prefix = local.landing_prefix
  }
  # S3 checks that it may send (an s3:TestEvent) when the notification is configured.
  depends_on = [aws_sqs_queue_policy.arrivals]
}
