# `terraform output -json` of this environment is the contract with ternd configs and tests
# (localstack/infra-up.sh flattens it to {name: value} in $TERN_EMULATOR_HOME/infra-<target>.json).

output "endpoint" {
  value = var.endpoint
}

output "region" {
  value = var.region
}

output "group" {
  value = var.group_name
}

output "gmk" {
  description = "The group's HMAC GMK."
  value = {
    key_id = module.group.gmk_key_id
    arn    = module.group.gmk_key_arn
    alias  = module.group.gmk_alias
  }
}

output "deployments" {
  description = "Per deployment id: buckets and its KMS key."
  value = {
    for d, m in module.deployment : d => {
      volume_bucket      = m.volume_bucket
      replication_bucket = m.replication_bucket
      kms_key_id         = m.kms_key_id
      kms_key_arn        = m.kms_key_arn
      kms_alias          = m.kms_alias
    }
  }
}

output "peer_credentials" {
  description = "Keyed \"<owner>.<peer>\": the identity <peer> uses to write under from/<peer>/ of <owner>'s replication bucket."
  sensitive   = true
  value = merge([
    for owner, m in module.deployment : {
      for peer, id in m.peer_identities : "${owner}.${peer}" => merge(id, {
        owner  = owner
        peer   = peer
        bucket = m.replication_bucket
      })
    }
  ]...)
}

output "admin" {
  description = "Full-access credentials (the only ones moto accepts once IAM is enforced)."
  sensitive   = true
  value = {
    user_name         = aws_iam_user.admin.name
    access_key_id     = aws_iam_access_key.admin.id
    secret_access_key = aws_iam_access_key.admin.secret
  }
}

output "deployment_identities" {
  description = "Per deployment id: its own identity (IAM user and key), reaching only its buckets, its KMS key and GenerateMac on the GMK."
  sensitive   = true
  value       = { for d, m in module.deployment : d => m.identity }
}
