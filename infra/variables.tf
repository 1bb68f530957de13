variable "region" {
  description = "AWS region of the lake (AWS_REGION of the code location)."
  type        = string
  default     = "us-east-1"
}

variable "name_prefix" {
  description = "Prefix of every name this stack creates (buckets, queue, roles, secrets, workgroups)."
  type        = string
  default     = "lake"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name_prefix))
    error_message = "name_prefix: lowercase letters, digits and '-', 2-21 characters (it is part of bucket names)."
  }
}

variable "account_id" {
  description = "The AWS account id; empty: the caller's (sts:GetCallerIdentity)."
  type        = string
  default     = ""
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}

variable "landing_prefix" {
  description = "Key prefix of the DMS target in the landing bucket (LAKE_LANDING_PREFIX); notifications are filtered to it."
  type        = string
  default     = "dms/"
}

variable "landing_retention_days" {
  description = "Days a landed file (and a superseded version of it) is kept before S3 expires it. A --rebuild re-merges only what is still landed."
  type        = number
  default     = 30
}

variable "athena_results_retention_days" {
  description = "Days Athena query results are kept."
  type        = number
  default     = 7
}

variable "arrivals_visibility_timeout_seconds" {
  description = "SQS visibility timeout of the arrivals queue: longer than a sensor tick (60 s)."
  type        = number
  default     = 120
}

variable "arrivals_max_receive_count" {
  description = "Receives of a message before the redrive policy moves it to the dead-letter queue."
  type        = number
  default     = 5
}

variable "code_location_trusted_services" {
  description = "Services that may assume the Dagster code location's role (where Dagster runs)."
  type        = list(string)
  default     = ["ecs-tasks.amazonaws.com"]
}

variable "consumer_trusted_principals" {
  description = "Per consumer, IAM principals that may assume its role; a consumer not listed: the account root (delegate with IAM policies)."
  type        = map(list(string))
  default     = {}
}

variable "lake_formation_admins" {
  description = "IAM ARNs of the Lake Formation administrators (the operator). Empty: the data lake settings are left as they are."
  type        = list(string)
  default     = []
}

variable "enable_lake_formation" {
  description = "Manage Lake Formation: the warehouse location, LF tags and database grants."
  type        = bool
  default     = true
}

variable "enable_lf_tag_grants" {
  description = "Grant the code location ASSOCIATE on the LF tags (dbt-athena tags the consumer tables and columns with them)."
  type        = bool
  default     = true
}

variable "manage_data_cells_filters" {
  description = "Create the consumer tables' data cells filters and their grants here. They are table-bound: turn on after the first dbt build created the consumer tables (see infra/README.md)."
  type        = bool
  default     = false
}

variable "enable_emr_serverless" {
  description = "Create the EMR Serverless application for tables with engine: spark."
  type        = bool
  default     = true
}

variable "enable_athena" {
  description = "Create the Athena workgroups (dbt's and one per consumer)."
  type        = bool
  default     = true
}

variable "emr_release_label" {
  description = "EMR Serverless release: Spark 3.5 with Iceberg, matching pyspark 3.5.9 of the job."
  type        = string
  default     = "emr-7.5.0"
}

variable "emr_max_vcpu" {
  description = "Upper bound of the EMR Serverless application's capacity, in vCPU."
  type        = number
  default     = 64
}
