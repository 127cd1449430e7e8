output "deployment_id" {
  value = var.deployment_id
}

output "volume_bucket" {
  description = "Name of the volume bucket (MPs, EPs, transaction logs)."
  value       = aws_s3_bucket.this["volume"].id
}

output "replication_bucket" {
  description = "Name of the replication bucket (peers write under from/<peer>/)."
  value       = aws_s3_bucket.this["replication"].id
}

output "kms_key_id" {
  value = aws_kms_key.deployment.key_id
}

output "kms_key_arn" {
  value = aws_kms_key.deployment.arn
}

output "kms_alias" {
  value = aws_kms_alias.deployment.name
}

output "peer_identities" {
  description = "Per peer id: the IAM identity that peer uses to write into this deployment's replication bucket."
  sensitive   = true
  value = {
    for p, user in aws_iam_user.peer : p => {
      user_name         = user.name
      user_arn          = user.arn
      access_key_id     = aws_iam_access_key.peer[p].id
      secret_access_key = aws_iam_access_key.peer[p].secret
      prefix            = "from/${p}/"
    }
  }
}
