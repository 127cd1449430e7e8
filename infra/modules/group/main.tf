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
