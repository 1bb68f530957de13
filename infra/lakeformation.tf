# Lake Formation: every grant here and every data cells filter comes from infra/generated/, which
# lake_assets.core.infra_codegen writes from the registry and dbt_project/governance/policy.yml with
# the same functions that generate the consumer dbt models (lake_assets/core/governance.py). So
# what Athena enforces and what dbt builds come from one declaration.
#
# Table-bound permissions (the consumer tables' data cells filters and their SELECT grants) need
# the tables, which dbt creates; dbt-athena re-applies the same filters after each build (a table
# it replaces loses its filters), and manage_data_cells_filters lets Terraform own them too.

locals {
  lf = var.enable_lake_formation ? 1 : 0
  consumer_principals = merge([
    for name, c in local.lake.consumers : {
      for p in c.principals : "${name}|${p}" => { consumer = name, database = c.database, principal = replace(p, "{aws_account_id}", local.account_id) }
    }
  ]...)
  cell_filters = var.enable_lake_formation && var.manage_data_cells_filters ? merge([
    for name, c in local.lake.consumers : {
      for fname, f in c.filters : fname => merge(f, { consumer = name, database = c.database })
    }
  ]...) : {}
  filter_grants = merge([
    for fname, f in local.cell_filters : {
      for p in local.lake.consumers[f.consumer].principals : "${fname}|${p}" => { filter = fname, principal = replace(p, "{aws_account_id}", local.account_id) }
    }
  ]...)
}

resource "aws_lakeformation_data_lake_settings" "lake" {
  count  = var.enable_lake_formation && length(var.lake_formation_admins) > 0 ? 1 : 0
  admins = var.lake_formation_admins
}

resource "aws_lakeformation_resource" "warehouse" {
  count    = local.lf
  arn      = "${aws_s3_bucket.lake["warehouse"].arn}/warehouse"
  role_arn = aws_iam_role.lakeformation_data_access.arn
}

resource "aws_lakeformation_lf_tag" "lake" {
  for_each = var.enable_lake_formation ? local.lake.lf_tags : {}
  key      = each.key
  values   = each.value
}

resource "aws_lakeformation_resource_lf_tags" "database" {
  for_each = var.enable_lake_formation ? local.lake.database_tags : {}
  database {
    name = aws_glue_catalog_database.lake[each.key].name
  }
  dynamic "lf_tag" {
    for_each = each.value
    content {
      key   = aws_lakeformation_lf_tag.lake[lf_tag.key].key
      value = lf_tag.value
    }
  }
}

# The code location builds every layer (merges, dbt) and applies the consumer tables' LF tags
# and filters: all on the lake's databases and their tables, grantable to the consumers.
resource "aws_lakeformation_permissions" "code_location_location" {
  count       = local.lf
  principal   = aws_iam_role.code_location.arn
  permissions = ["DATA_LOCATION_ACCESS"]
  data_location {
    arn = aws_lakeformation_resource.warehouse[0].arn
  }
}

resource "aws_lakeformation_permissions" "code_location_database" {
  for_each                      = var.enable_lake_formation ? local.databases : toset([])
  principal                     = aws_iam_role.code_location.arn
  permissions                   = ["ALL"]
  permissions_with_grant_option = ["ALL"]
  database {
    name = aws_glue_catalog_database.lake[each.value].name
  }
}

resource "aws_lakeformation_permissions" "code_location_tables" {
  for_each                      = var.enable_lake_formation ? local.databases : toset([])
  principal                     = aws_iam_role.code_location.arn
  permissions                   = ["ALL"]
  permissions_with_grant_option = ["ALL"]
  table {
    database_name = aws_glue_catalog_database.lake[each.value].name
    wildcard      = true
  }
}

resource "aws_lakeformation_permissions" "code_location_lf_tags" {
  for_each    = var.enable_lake_formation && var.enable_lf_tag_grants ? local.lake.lf_tags : {}
  principal   = aws_iam_role.code_location.arn
  permissions = ["ASSOCIATE", "DESCRIBE"]
  lf_tag {
    key    = aws_lakeformation_lf_tag.lake[each.key].key
    values = each.value
  }
}

# The EMR job merges source-aligned tables only.
resource "aws_lakeformation_permissions" "emr_location" {
  count       = local.lf
  principal   = aws_iam_role.emr_runtime.arn
  permissions = ["DATA_LOCATION_ACCESS"]
  data_location {
    arn = aws_lakeformation_resource.warehouse[0].arn
  }
}

resource "aws_lakeformation_permissions" "emr_database" {
  for_each    = var.enable_lake_formation ? local.source_databases : toset([])
  principal   = aws_iam_role.emr_runtime.arn
  permissions = ["CREATE_TABLE", "DESCRIBE", "ALTER"]
  database {
    name = aws_glue_catalog_database.lake[each.value].name
  }
}

resource "aws_lakeformation_permissions" "emr_tables" {
  for_each    = var.enable_lake_formation ? local.source_databases : toset([])
  principal   = aws_iam_role.emr_runtime.arn
  permissions = ["SELECT", "INSERT", "DELETE", "ALTER", "DESCRIBE", "DROP"]
  table {
    database_name = aws_glue_catalog_database.lake[each.value].name
    wildcard      = true
  }
}

# A consumer sees its own database; its rows and columns only through its tables' filters.
resource "aws_lakeformation_permissions" "consumer_database" {
  for_each    = var.enable_lake_formation ? local.consumer_principals : {}
  principal   = each.value.principal
  permissions = ["DESCRIBE"]
  database {
    name = aws_glue_catalog_database.lake[each.value.database].name
  }
  depends_on = [aws_iam_role.consumer]
}

resource "aws_lakeformation_data_cells_filter" "consumer" {
  for_each = local.cell_filters
  table_data {
    database_name    = aws_glue_catalog_database.lake[each.value.database].name
    table_name       = each.value.table
    table_catalog_id = local.account_id
    name             = each.key
    column_names     = each.value.column_names
    row_filter {
      filter_expression = each.value.row_filter
    }
  }
}

resource "aws_lakeformation_permissions" "consumer_filter" {
  for_each    = local.filter_grants
  principal   = each.value.principal
  permissions = ["SELECT"]
  data_cells_filter {
    database_name    = aws_lakeformation_data_cells_filter.consumer[each.value.filter].table_data[0].database_name
    table_name       = aws_lakeformation_data_cells_filter.consumer[each.value.filter].table_data[0].table_name
    table_catalog_id = local.account_id
    name             = each.value.filter
  }
  depends_on = [aws_iam_role.consumer]
}
