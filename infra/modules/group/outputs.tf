output "gmk_key_id" {
  value = aws_kms_key.gmk.key_id
}

output "gmk_key_arn" {
  value = aws_kms_key.gmk.arn
}

output "gmk_alias" {
  value = aws_kms_alias.gmk.name
}

output "gmk_policy" {
  description = "The GMK's key policy (JSON): give the same to its replicas."
  value       = data.aws_iam_policy_document.gmk.json
}
