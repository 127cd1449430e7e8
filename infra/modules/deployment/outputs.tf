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
  description = "Per peer id: the IAM identity that peer uses to write into this deployment's replication bucket. peer_access = \"role\": role_arn and external_id (assume it; no keys); \"user\": user_name, user_arn and its access key."
  sensitive   = true
  value = merge(
    {
      for p, user in aws_iam_user.peer : p => {
        user_name         = user.name
        user_arn          = user.arn
        access_key_id     = aws_iam_access_key.peer[p].id
        secret_access_key = aws_iam_access_key.peer[p].secret
        prefix            = "from/${p}/"
      }
    },
    {
      for p, role in aws_iam_role.peer : p => {
        role_arn    = role.arn
        external_id = var.peer_external_ids[p]
        prefix      = "from/${p}/"
      }
    },
  )
}

output "peer_guard" {
  description = "Per peer id: the principal ARN the replication bucket's policy caps at \"put under from/<peer>/\" (empty when peer_guard_bucket_policy is off)."
  value       = var.peer_guard_bucket_policy ? local.peer_arn : {}
}

output "peer_guard_policy_statements" {
  description = "Sids of the replication bucket policy's statements (what the per-peer guard adds, for tests)."
  value       = [for s in coalesce(data.aws_iam_policy_document.replication.statement, []) : s.sid]
}

output "identity_arn" {
  description = "ARN of the deployment's own identity (role or user): what its ternd runs as."
  value       = local.identity_arn
}

output "identity" {
  description = "The deployment's own identity. deployment_access = \"user\": its access key too (emulators)."
  sensitive   = true
  value = {
    arn               = local.identity_arn
    name              = local.identity_name
    access_key_id     = one(aws_iam_access_key.deployment[*].id)
    secret_access_key = one(aws_iam_access_key.deployment[*].secret)
  }
}

output "bucket_policies" {
  description = "Sids of the volume and replication bucket policies (for tests)."
  value = {
    volume      = [for s in coalesce(data.aws_iam_policy_document.volume.statement, []) : s.sid]
    replication = [for s in coalesce(data.aws_iam_policy_document.replication.statement, []) : s.sid]
  }
}

output "key_policy" {
  description = "The deployment key's policy document (JSON)."
  value       = data.aws_iam_policy_document.key.json
}
