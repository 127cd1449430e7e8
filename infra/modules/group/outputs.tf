output "gmk_key_id" {
  value = aws_kms_key.gmk.key_id
}

output "gmk_key_arn" {
  value = aws_kms_key.gmk.arn
}

output "gmk_alias" {
  value = aws_kms_alias.gmk.name
}
