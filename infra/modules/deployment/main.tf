# One deployment of a Tern group (DESIGN.md §3, §4, §13):
#
#   volume bucket       <prefix>-<id>-volume   MPs, EPs, transaction logs; SSE-KMS with the
#                                              deployment key; only the deployment itself
#                                              (its identity policy; on AWS also a bucket
#                                              policy denying every other principal).
#   replication bucket  <prefix>-<id>-repl     from/<peer>/... written by peers, read and
#                                              deleted by the deployment; SSE-S3.
#   KMS key             alias/tern/<group>/<id>  symmetric, the root of AMK/TMK envelopes;
#                                              its key policy lets only the deployment use
#                                              it (key_admin_principals administer it).
#   deployment identity <group>-<id>           what ternd runs as: an IAM role (AWS) or
#                                              user (emulators), reaching only the above.
#   one identity per peer, allowed nothing but writing objects under from/<peer>/:
#   an IAM role the peer assumes with its external id (peer_access = "role", AWS: no
#   long-lived keys), or an IAM user with an access key (peer_access = "user", emulators).
#
# Why SSE-S3 (AES256) on the replication bucket and SSE-KMS on the volume bucket: with a
# KMS default, every PutObject also needs kms:GenerateDataKey (and kms:Decrypt to complete
# a multipart upload) on the key, for the *writer*. Peers would then hold KMS permissions
# on this deployment's key, which is exactly what a write-only sub-bucket must not grant.
# Everything a peer writes is already sealed client-side (AES-256-GCM, GMK-derived keys),
# so SSE is defence in depth there; the volume bucket is only touched by the deployment's
# own identity, which uses the key anyway.
#
# Versioning stays off: processed replication files are deleted and must really go away,
# and the commit protocol relies on If-None-Match creates, not on object versions.

locals {
  volume_bucket      = "${var.bucket_prefix}-${var.deployment_id}-volume"
  replication_bucket = "${var.bucket_prefix}-${var.deployment_id}-repl"
  iam_path           = "/tern/${var.group_name}/"
  tags = merge(var.tags, {
    "tern:group"      = var.group_name
    "tern:deployment" = var.deployment_id
  })
  # Names of the peers' identities, e.g. <group>-d1-from-d2 (checked ≤ 64 on aws_iam_user).
  peer_user = { for p in var.peers : p => "${var.group_name}-${var.deployment_id}-from-${p}" }
  buckets = {
    volume      = local.volume_bucket
    replication = local.replication_bucket
  }
}

# --- KMS -------------------------------------------------------------------------------

resource "aws_kms_key" "deployment" {
  description              = "Tern ${var.group_name}/${var.deployment_id}: deployment key (AMK/TMK envelopes, volume SSE)"
  key_usage                = "ENCRYPT_DECRYPT"
  customer_master_key_spec = "SYMMETRIC_DEFAULT"
  enable_key_rotation      = true
  deletion_window_in_days  = var.kms_deletion_window_days
  policy                   = data.aws_iam_policy_document.key.json
  tags                     = local.tags
}

# Administrators manage the key but cannot use it; only the deployment's identity can
# (no "kms:*" for the account root: that would let any IAM policy of the account grant use).
data "aws_iam_policy_document" "key" {
  statement {
    sid    = "KeyAdministration"
    effect = "Allow"
    actions = [
      "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
      "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource",
      "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion",
      "kms:RotateKeyOnDemand",
    ]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = var.key_admin_principals
    }
  }
  statement {
    sid    = "OnlyTheDeploymentUsesIt"
    effect = "Allow"
    actions = [
      "kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext",
      "kms:DescribeKey",
    ]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = [local.identity_arn]
    }
  }
}

resource "aws_kms_alias" "deployment" {
  name          = "alias/tern/${var.group_name}/${var.deployment_id}"
  target_key_id = aws_kms_key.deployment.key_id
}

# --- Buckets ---------------------------------------------------------------------------

resource "aws_s3_bucket" "this" {
  for_each      = local.buckets
  bucket        = each.value
  force_destroy = var.force_destroy
  tags          = merge(local.tags, { "tern:bucket" = each.key })
}

resource "aws_s3_bucket_ownership_controls" "this" {
  for_each = aws_s3_bucket.this
  bucket   = each.value.id
  rule {
    # ACLs off: the bucket owner owns what peers write, so the deployment can read and
    # delete it (peers may live in other accounts on AWS).
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each                = aws_s3_bucket.this
  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "this" {
  for_each = aws_s3_bucket.this
  bucket   = each.value.id
  versioning_configuration {
    # "Disabled" = never enabled (a new bucket's state); see the header comment.
    status = "Disabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "volume" {
  bucket = aws_s3_bucket.this["volume"].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.deployment.arn
    }
    # One data key per bucket and period instead of one KMS call per object.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "replication" {
  bucket = aws_s3_bucket.this["replication"].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "replication" {
  count  = var.abort_incomplete_multipart_days > 0 ? 1 : 0
  bucket = aws_s3_bucket.this["replication"].id
  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {
      prefix = "from/"
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_days
    }
  }
}

# --- The deployment's own identity ------------------------------------------------------

locals {
  identity_name = "${var.group_name}-${var.deployment_id}"
  identity_arn = one(concat(
    [for u in aws_iam_user.deployment : u.arn],
    [for r in aws_iam_role.deployment : r.arn],
  ))
  bucket_arns = [for b in aws_s3_bucket.this : b.arn]
}

resource "aws_iam_user" "deployment" {
  count = var.deployment_access == "user" ? 1 : 0
  name  = local.identity_name
  path  = local.iam_path
  tags  = merge(local.tags, { "tern:identity" = "deployment" })
}

resource "aws_iam_access_key" "deployment" {
  count = length(aws_iam_user.deployment)
  user  = aws_iam_user.deployment[0].name
}

data "aws_iam_policy_document" "deployment_trust" {
  count = var.deployment_access == "role" ? 1 : 0
  statement {
    sid     = "TerndAssumesTheDeploymentRole"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "AWS"
      identifiers = var.deployment_trusted_principals
    }
  }
}

resource "aws_iam_role" "deployment" {
  count              = var.deployment_access == "role" ? 1 : 0
  name               = local.identity_name
  path               = local.iam_path
  assume_role_policy = data.aws_iam_policy_document.deployment_trust[0].json
  tags               = merge(local.tags, { "tern:identity" = "deployment" })
  lifecycle {
    precondition {
      condition     = length(var.deployment_trusted_principals) > 0
      error_message = "deployment_trusted_principals must name who may assume the role of deployment ${var.deployment_id}."
    }
  }
}

# Everything the deployment may do: its own two buckets and their objects, its own key,
# GenerateMac on the group's GMK, and (role) assuming the write-only roles that peers'
# accounts made for it. No other bucket, no other key, no IAM.
data "aws_iam_policy_document" "deployment" {
  statement {
    sid = "OwnBuckets"
    actions = [
      "s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads",
    ]
    resources = local.bucket_arns
  }
  statement {
    sid = "OwnObjects"
    actions = [
      "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [for a in local.bucket_arns : "${a}/*"]
  }
  statement {
    sid = "OwnMasterKey"
    actions = [
      "kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext",
      "kms:DescribeKey",
    ]
    resources = [aws_kms_key.deployment.arn]
  }
  statement {
    sid       = "GroupKeyDerivation"
    actions   = ["kms:GenerateMac", "kms:DescribeKey"]
    resources = var.gmk_arns
  }
  dynamic "statement" {
    for_each = var.deployment_access == "role" ? [1] : []
    content {
      sid       = "WriteIntoPeersAsTheirWriteOnlyRole"
      actions   = ["sts:AssumeRole"]
      resources = ["arn:aws:iam::*:role/tern/${var.group_name}/${var.group_name}-*-from-${var.deployment_id}"]
    }
  }
}

resource "aws_iam_user_policy" "deployment" {
  count  = length(aws_iam_user.deployment)
  name   = "tern-deployment-${var.deployment_id}"
  user   = aws_iam_user.deployment[0].name
  policy = data.aws_iam_policy_document.deployment.json
}

resource "aws_iam_role_policy" "deployment" {
  count  = length(aws_iam_role.deployment)
  name   = "tern-deployment-${var.deployment_id}"
  role   = aws_iam_role.deployment[0].id
  policy = data.aws_iam_policy_document.deployment.json
}

# --- Peer identities -------------------------------------------------------------------

locals {
  peer_users = var.peer_access == "user" ? local.peer_user : {}
  peer_roles = var.peer_access == "role" ? local.peer_user : {}
  # The ARN each peer writes as, whichever kind of identity it is.
  peer_arn = merge(
    { for p, u in aws_iam_user.peer : p => u.arn },
    { for p, r in aws_iam_role.peer : p => r.arn },
  )
}

resource "aws_iam_user" "peer" {
  for_each = local.peer_users
  name     = each.value
  path     = local.iam_path
  tags     = merge(local.tags, { "tern:peer" = each.key })
  lifecycle {
    precondition {
      condition     = length(each.value) <= 64
      error_message = "IAM user name ${each.value} is longer than 64 characters: shorten group_name or the deployment ids."
    }
  }
}

resource "aws_iam_access_key" "peer" {
  for_each = aws_iam_user.peer
  user     = each.value.name
}

# peer_access = "role": the peer's principal may assume this role only with its external id.
data "aws_iam_policy_document" "peer_trust" {
  for_each = local.peer_roles
  statement {
    sid     = "PeerAssumesWithExternalId"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "AWS"
      identifiers = [lookup(var.peer_principals, each.key, "")]
    }
    condition {
      test     = "StringEquals"
      variable = "sts:ExternalId"
      values   = [lookup(var.peer_external_ids, each.key, "")]
    }
  }
}

resource "aws_iam_role" "peer" {
  for_each             = local.peer_roles
  name                 = each.value
  path                 = local.iam_path
  assume_role_policy   = data.aws_iam_policy_document.peer_trust[each.key].json
  max_session_duration = 3600
  tags                 = merge(local.tags, { "tern:peer" = each.key })
  lifecycle {
    precondition {
      condition     = length(each.value) <= 64
      error_message = "IAM role name ${each.value} is longer than 64 characters: shorten group_name or the deployment ids."
    }
    precondition {
      condition     = can(regex("^arn:aws[a-z-]*:(iam|sts)::[0-9]{12}:", lookup(var.peer_principals, each.key, "")))
      error_message = "peer_principals has no IAM principal ARN for peer ${each.key} (the principal that may assume its write-only role)."
    }
    precondition {
      condition     = length(lookup(var.peer_external_ids, each.key, "")) >= 16
      error_message = "peer_external_ids has no external id (at least 16 characters) for peer ${each.key}."
    }
  }
}

# The peer's whole S3 permission: create objects under from/<peer>/ of this replication
# bucket. s3:PutObject authorizes PutObject and the multipart calls that build an object
# (CreateMultipartUpload, UploadPart, CompleteMultipartUpload). s3:AbortMultipartUpload
# lets a failed copy clean up its parts (object_store aborts on error). Nothing else:
# no ListMultipartUploadParts (we never resume an upload), no Get/List/Delete (the
# receiver alone reads and deletes), no UploadPartCopy source rights (needs GetObject).
data "aws_iam_policy_document" "peer" {
  for_each = local.peer_user
  statement {
    sid       = "WriteOwnSubBucketOnly"
    effect    = "Allow"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.this["replication"].arn}/from/${each.key}/*"]
  }
}

resource "aws_iam_user_policy" "peer" {
  for_each = aws_iam_user.peer
  name     = "tern-write-only-from-${each.key}"
  user     = each.value.name
  policy   = data.aws_iam_policy_document.peer[each.key].json
}

resource "aws_iam_role_policy" "peer" {
  for_each = aws_iam_role.peer
  name     = "tern-write-only-from-${each.key}"
  role     = each.value.id
  policy   = data.aws_iam_policy_document.peer[each.key].json
}

# --- Bucket policies -------------------------------------------------------------------

# Replication bucket: besides the optional TLS rule, the bucket itself caps every peer
# identity at "put under its own prefix", whatever identity policies get attached to it
# later (an explicit Deny wins over any Allow). Optional: see peer_guard_bucket_policy.
data "aws_iam_policy_document" "replication" {
  # Nobody but the deployment, its administrators and its peers' identities (each capped
  # below) may touch the bucket, whatever IAM policies elsewhere in the account say.
  dynamic "statement" {
    for_each = var.restrict_bucket_access ? [1] : []
    content {
      sid     = "OnlyTheDeploymentAndItsPeers"
      effect  = "Deny"
      actions = ["s3:*"]
      resources = [
        aws_s3_bucket.this["replication"].arn,
        "${aws_s3_bucket.this["replication"].arn}/*",
      ]
      principals {
        type        = "*"
        identifiers = ["*"]
      }
      condition {
        test     = "ArnNotEquals"
        variable = "aws:PrincipalArn"
        values   = concat([local.identity_arn], var.key_admin_principals, values(local.peer_arn))
      }
    }
  }

  dynamic "statement" {
    for_each = var.deny_insecure_transport ? [1] : []
    content {
      sid     = "DenyInsecureTransport"
      effect  = "Deny"
      actions = ["s3:*"]
      resources = [
        aws_s3_bucket.this["replication"].arn,
        "${aws_s3_bucket.this["replication"].arn}/*",
      ]
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

  dynamic "statement" {
    for_each = var.peer_guard_bucket_policy ? local.peer_arn : {}
    content {
      sid         = "PeerWriteOnly${replace(statement.key, "-", "")}"
      effect      = "Deny"
      not_actions = ["s3:PutObject", "s3:AbortMultipartUpload"]
      resources = [
        aws_s3_bucket.this["replication"].arn,
        "${aws_s3_bucket.this["replication"].arn}/*",
      ]
      principals {
        type        = "AWS"
        identifiers = [statement.value]
      }
    }
  }

  dynamic "statement" {
    for_each = var.peer_guard_bucket_policy ? local.peer_arn : {}
    content {
      sid           = "PeerOwnPrefixOnly${replace(statement.key, "-", "")}"
      effect        = "Deny"
      actions       = ["s3:PutObject", "s3:AbortMultipartUpload"]
      not_resources = ["${aws_s3_bucket.this["replication"].arn}/from/${statement.key}/*"]
      principals {
        type        = "AWS"
        identifiers = [statement.value]
      }
    }
  }
}

resource "aws_s3_bucket_policy" "replication" {
  count  = var.deny_insecure_transport || var.restrict_bucket_access || (var.peer_guard_bucket_policy && length(var.peers) > 0) ? 1 : 0
  bucket = aws_s3_bucket.this["replication"].id
  policy = data.aws_iam_policy_document.replication.json
  # A bucket policy is rejected while the public access block is being changed.
  depends_on = [aws_s3_bucket_public_access_block.this]
}

data "aws_iam_policy_document" "volume" {
  dynamic "statement" {
    for_each = var.deny_insecure_transport ? [1] : []
    content {
      sid     = "DenyInsecureTransport"
      effect  = "Deny"
      actions = ["s3:*"]
      resources = [
        aws_s3_bucket.this["volume"].arn,
        "${aws_s3_bucket.this["volume"].arn}/*",
      ]
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
  # Only the deployment itself (and its administrators) may touch its volume.
  dynamic "statement" {
    for_each = var.restrict_bucket_access ? [1] : []
    content {
      sid     = "OnlyTheDeployment"
      effect  = "Deny"
      actions = ["s3:*"]
      resources = [
        aws_s3_bucket.this["volume"].arn,
        "${aws_s3_bucket.this["volume"].arn}/*",
      ]
      principals {
        type        = "*"
        identifiers = ["*"]
      }
      condition {
        test     = "ArnNotEquals"
        variable = "aws:PrincipalArn"
        values   = concat([local.identity_arn], var.key_admin_principals)
      }
    }
  }
}

resource "aws_s3_bucket_policy" "volume" {
  count      = var.deny_insecure_transport || var.restrict_bucket_access ? 1 : 0
  bucket     = aws_s3_bucket.this["volume"].id
  policy     = data.aws_iam_policy_document.volume.json
  depends_on = [aws_s3_bucket_public_access_block.this]
}
