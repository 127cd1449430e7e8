output "gmk" {
  description = "GMK primary and replicas: each deployment uses the ARN in its own region."
  value = {
    d1 = module.group.gmk_key_arn
    d2 = aws_kms_replica_key.gmk_d2.arn
    d3 = aws_kms_replica_key.gmk_d3.arn
  }
}

output "deployments" {
  value = {
    for d, m in { d1     = module.d1, d2 = module.d2, d3 = module.d3 } : d => {
      region             = var.regions[d]
      volume_bucket      = m.volume_bucket
      replication_bucket = m.replication_bucket
      kms_key_arn        = m.kms_key_arn
      kms_alias          = m.kms_alias
      identity_arn       = m.identity_arn
    }
  }
}

output "peer_credentials" {
  description = "Keyed \"<owner>.<peer>\", as in envs/local: the role <peer> assumes (role_arn, external_id, prefix). No keys: each peer's ternd assumes the role with its own identity."
  sensitive   = true
  value = merge([
    for owner, m in { d1 = module.d1, d2 = module.d2, d3 = module.d3 } : {
      for peer, id in m.peer_identities : "${owner}.${peer}" => id
    }
  ]...)
}
