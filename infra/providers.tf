# Credentials come from the AWS default chain (environment, profile, instance role), never from
# files in this repository. Tests add an override file pointing every endpoint at an emulator.
provider "aws" {
  region = var.region
  default_tags {
    tags = merge({ "lake:stack" = var.name_prefix }, var.tags)
  }
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = coalesce(var.account_id, data.aws_caller_identity.current.account_id)
  partition  = data.aws_partition.current.partition
  # What the registry and the governance policy declare (infra/generated/, written by
  # `python -m lake_assets.core.infra_codegen generate`): one Glue database per source, the
  # aggregated and consumer_<name> databases, and the Lake Formation tags, grants and filters.
  lake = module.lake_policy
}

module "lake_policy" {
  source = "./generated"
}
