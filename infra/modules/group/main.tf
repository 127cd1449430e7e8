# The group's GMK (global master key, DESIGN.md §4): one per deployment group, an HMAC key
# that never leaves KMS. Deployments derive wrapping keys with
# GenerateMac(GMK, diversifier); every deployment must compute the same MAC, so on AWS
# the key is multi-Region and each deployment's region holds a replica of this primary.
# HMAC keys cannot be rotated by KMS (rotation would change every derived key anyway).

resource "aws_kms_key" "gmk" {
  description              = "Tern ${var.group_name}: GMK (HMAC-SHA256 key derivation for wrapping keys)"
  key_usage                = "GENERATE_VERIFY_MAC"
  customer_master_key_spec = "HMAC_256"
  multi_region             = var.multi_region
  deletion_window_in_days  = var.kms_deletion_window_days
  tags                     = merge(var.tags, { "tern:group" = var.group_name, "tern:key" = "gmk" })
}

resource "aws_kms_alias" "gmk" {
  name          = "alias/tern/${var.group_name}/gmk"
  target_key_id = aws_kms_key.gmk.key_id
}

# Only the group's deployments derive wrapping keys (GenerateMac); administrators manage
# the key but cannot derive. A separate resource, since the members' identities are made
# by the deployment modules, which need the GMK's ARN first.
data "aws_iam_policy_document" "gmk" {
  statement {
    sid    = "KeyAdministration"
    effect = "Allow"
    actions = [
      "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
      "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource",
      "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion",
      "kms:ReplicateKey",
    ]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = var.key_admin_principals
    }
  }
  dynamic "statement" {
    for_each = length(var.member_principals) > 0 ? [1] : []
    content {
      sid       = "OnlyGroupMembersDerive"
      effect    = "Allow"
      actions   = ["kms:GenerateMac", "kms:DescribeKey"]
      resources = ["*"]
      principals {
        type        = "AWS"
        identifiers = var.member_principals
      }
    }
  }
}

resource "aws_kms_key_policy" "gmk" {
  key_id = aws_kms_key.gmk.id
  policy = data.aws_iam_policy_document.gmk.json
}
