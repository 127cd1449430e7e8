# A three-deployment Tern group on one S3/KMS emulator (LocalStack or moto): the same
# modules as infra/envs/aws, with every region collapsed onto the emulator's endpoint.
# Applied by localstack/infra-up.sh; outputs are what ternd configs and tests read.

provider "aws" {
  region     = var.region
  access_key = var.access_key
  secret_key = var.secret_key

  s3_use_path_style           = true
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_requesting_account_id  = true
  skip_region_validation      = true

  endpoints {
    s3  = var.endpoint
    kms = var.endpoint
    iam = var.endpoint
    sts = var.endpoint
  }
}

locals {
  tags = { "tern:env" = "local" }
}

module "group" {
  source                   = "../../modules/group"
  group_name               = var.group_name
  kms_deletion_window_days = 7
  tags                     = local.tags
  key_admin_principals     = [aws_iam_user.admin.arn]
  member_principals        = [for d in module.deployment : d.identity_arn]
}

module "deployment" {
  source   = "../../modules/deployment"
  for_each = toset(var.deployments)

  deployment_id = each.key
  group_name    = var.group_name
  peers         = [for d in var.deployments : d if d != each.key]
  bucket_prefix = var.bucket_prefix
  tags          = local.tags

  # Emulators speak plain HTTP, run no lifecycle rules, and hold throw-away buckets.
  # moto applies a bucket policy's Deny statements to every caller (it ignores
  # Principal), so the per-peer guard would lock out the owner: the identity policies
  # alone are what the access tests check.
  # The deployment's own identity: an IAM user with a key (moto checks users' keys), whose
  # policy reaches only this deployment's buckets and keys (proved on moto with IAM
  # enforced: libs/storage/tests/it/access.rs). Bucket policies stay off: moto applies a
  # bucket policy's Deny to every caller, ignoring Principal and aws:PrincipalArn.
  deployment_access      = "user"
  gmk_arns               = [module.group.gmk_key_arn]
  key_admin_principals   = [aws_iam_user.admin.arn]
  restrict_bucket_access = false

  # Peers are IAM users with access keys here: moto checks IAM users' keys (its STS hands
  # out keys without tying them to the role's policy reliably) and there is no second
  # account to trust. envs/aws uses roles assumed with an external id instead.
  peer_access = "user"

  deny_insecure_transport         = false
  peer_guard_bucket_policy        = false
  abort_incomplete_multipart_days = 0
  force_destroy                   = true
  kms_deletion_window_days        = 7
}

# The emulator's operator: Terraform itself and test set-up (creating scratch buckets and
# keys) once moto enforces IAM (after `reset-auth`, moto accepts only keys of IAM users it
# knows; "test" stops working). Not a deployment identity: ternd runs as its deployment's
# own identity (output deployment_identities), which reaches only its own buckets and keys.
# On AWS there is no such user: Terraform runs with the operator's own credentials.
resource "aws_iam_user" "admin" {
  name = "${var.group_name}-admin"
  path = "/tern/${var.group_name}/"
  tags = local.tags
}

resource "aws_iam_user_policy" "admin" {
  name = "tern-local-admin"
  user = aws_iam_user.admin.name
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Sid = "All", Effect = "Allow", Action = "*", Resource = "*" }]
  })
}

resource "aws_iam_access_key" "admin" {
  user = aws_iam_user.admin.name
}
