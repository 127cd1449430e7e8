# Example: a three-deployment Tern group on AWS, one region per deployment (not applied in
# CI: `terraform validate` and a plan against a mocked provider, `terraform test` with
# tests/plan.tftest.hcl). Same modules as infra/envs/local, with real endpoints,
# TLS-only bucket policies, the per-peer bucket-policy guard, peers that assume roles with
# an external id (no IAM users, no secret keys in the state), and the GMK as a
# multi-Region key whose replicas sit in every other deployment's region.

provider "aws" {
  alias  = "d1"
  region = var.regions.d1
}

provider "aws" {
  alias  = "d2"
  region = var.regions.d2
}

provider "aws" {
  alias  = "d3"
  region = var.regions.d3
}

data "aws_caller_identity" "d1" {
  provider = aws.d1
}

locals {
  tags  = merge(var.tags, { "tern:env" = "aws" })
  peers = { d1 = ["d2", "d3"], d2 = ["d1", "d3"], d3 = ["d1", "d2"] }
  # Who administers the keys (never uses them): given, or the account root (IAM delegation
  # for the administrative actions only).
  key_admins = length(var.key_admin_principals) > 0 ? var.key_admin_principals : [
    "arn:aws:iam::${data.aws_caller_identity.d1.account_id}:root"
  ]
  gmk_in = {
    d1 = module.group.gmk_key_arn
    d2 = aws_kms_replica_key.gmk_d2.arn
    d3 = aws_kms_replica_key.gmk_d3.arn
  }
  identities = {
    d1 = module.d1.identity_arn
    d2 = module.d2.identity_arn
    d3 = module.d3.identity_arn
  }
}

module "group" {
  source               = "../../modules/group"
  providers            = { aws = aws.d1 }
  group_name           = var.group_name
  tags                 = local.tags
  key_admin_principals = local.key_admins
  member_principals    = values(local.identities)
}

# The GMK must be usable in every deployment's region with the same key material.
resource "aws_kms_replica_key" "gmk_d2" {
  provider        = aws.d2
  primary_key_arn = module.group.gmk_key_arn
  description     = "Tern ${var.group_name}: GMK replica for d2"
  policy          = module.group.gmk_policy
  tags            = local.tags
}

resource "aws_kms_replica_key" "gmk_d3" {
  provider        = aws.d3
  primary_key_arn = module.group.gmk_key_arn
  description     = "Tern ${var.group_name}: GMK replica for d3"
  policy          = module.group.gmk_policy
  tags            = local.tags
}

module "d1" {
  source        = "../../modules/deployment"
  providers     = { aws = aws.d1 }
  deployment_id = "d1"
  group_name    = var.group_name
  peers         = local.peers.d1
  bucket_prefix = var.bucket_prefix
  tags          = local.tags

  # The deployment runs as its own role; only its buckets, its key, the GMK in its region.
  deployment_access             = "role"
  deployment_trusted_principals = [var.ternd_principals.d1]
  gmk_arns                      = [local.gmk_in.d1]
  key_admin_principals          = local.key_admins

  # Peers assume a write-only role with their external id: no long-lived keys.
  peer_access       = "role"
  peer_principals   = { for p in local.peers.d1 : p => local.identities[p] }
  peer_external_ids = { for p in local.peers.d1 : p => var.peer_external_ids["d1.${p}"] }
}

module "d2" {
  source        = "../../modules/deployment"
  providers     = { aws = aws.d2 }
  deployment_id = "d2"
  group_name    = var.group_name
  peers         = local.peers.d2
  bucket_prefix = var.bucket_prefix
  tags          = local.tags

  # The deployment runs as its own role; only its buckets, its key, the GMK in its region.
  deployment_access             = "role"
  deployment_trusted_principals = [var.ternd_principals.d2]
  gmk_arns                      = [local.gmk_in.d2]
  key_admin_principals          = local.key_admins

  # Peers assume a write-only role with their external id: no long-lived keys.
  peer_access       = "role"
  peer_principals   = { for p in local.peers.d2 : p => local.identities[p] }
  peer_external_ids = { for p in local.peers.d2 : p => var.peer_external_ids["d2.${p}"] }
}

module "d3" {
  source        = "../../modules/deployment"
  providers     = { aws = aws.d3 }
  deployment_id = "d3"
  group_name    = var.group_name
  peers         = local.peers.d3
  bucket_prefix = var.bucket_prefix
  tags          = local.tags

  # The deployment runs as its own role; only its buckets, its key, the GMK in its region.
  deployment_access             = "role"
  deployment_trusted_principals = [var.ternd_principals.d3]
  gmk_arns                      = [local.gmk_in.d3]
  key_admin_principals          = local.key_admins

  # Peers assume a write-only role with their external id: no long-lived keys.
  peer_access       = "role"
  peer_principals   = { for p in local.peers.d3 : p => local.identities[p] }
  peer_external_ids = { for p in local.peers.d3 : p => var.peer_external_ids["d3.${p}"] }
}
