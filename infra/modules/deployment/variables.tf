variable "deployment_id" {
  description = "Id of this deployment inside its group (e.g. \"d1\"). Peers write under from/<deployment_id>/ of other deployments' replication buckets."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,19}$", var.deployment_id))
    error_message = "deployment_id must be 1-20 characters of lowercase letters, digits and '-'."
  }
}

variable "group_name" {
  description = "Name of the deployment group; used in IAM user paths and names, the KMS alias and tags."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,31}$", var.group_name))
    error_message = "group_name must be 1-32 characters of lowercase letters, digits and '-'."
  }
}

variable "peers" {
  description = "Ids of the other deployments of the group. Each gets a write-only identity for from/<peer>/ in this deployment's replication bucket."
  type        = list(string)
  validation {
    condition     = alltrue([for p in var.peers : can(regex("^[a-z0-9][a-z0-9-]{0,19}$", p))])
    error_message = "every peer id must be 1-20 characters of lowercase letters, digits and '-'."
  }
}

variable "bucket_prefix" {
  description = "Prefix of the bucket names: <bucket_prefix>-<deployment_id>-volume and -repl. S3 names are global on AWS: include something unique (account, org)."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,40}$", var.bucket_prefix))
    error_message = "bucket_prefix must be 1-41 characters of lowercase letters, digits and '-' (bucket names are at most 63)."
  }
}

variable "deny_insecure_transport" {
  description = "Add a bucket-policy statement denying requests without TLS (aws:SecureTransport = false). Keep on for AWS; emulators speak plain HTTP."
  type        = bool
  default     = true
}

variable "peer_guard_bucket_policy" {
  description = "Also cap every peer identity in the replication bucket's policy (explicit Deny of anything but writing under its own prefix), so that a broader identity policy attached later cannot widen it. Off for moto: its bucket-policy check ignores Principal and would deny everyone."
  type        = bool
  default     = true
}

variable "kms_deletion_window_days" {
  description = "Waiting period before the deployment's KMS key is deleted after a destroy."
  type        = number
  default     = 30
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete non-empty buckets. Only for throw-away environments."
  type        = bool
  default     = false
}

variable "abort_incomplete_multipart_days" {
  description = "Lifecycle rule on the replication bucket: abort multipart uploads left incomplete for this many days (parts of crashed copies cost storage, and peers cannot list them). 0 = no rule (emulators: they run no lifecycle, and the provider's consistency wait takes about a minute against LocalStack)."
  type        = number
  default     = 7
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "peer_access" {
  description = "How peers get their write-only identity: \"role\" (an IAM role each peer assumes with sts:AssumeRole and its external id; no long-lived keys, nothing secret in the state: use it on AWS) or \"user\" (an IAM user with an access key, whose secret sits in the Terraform state: only for emulators, where moto checks IAM users' keys and has no cross-account trust)."
  type        = string
  default     = "role"
  validation {
    condition     = contains(["role", "user"], var.peer_access)
    error_message = "peer_access must be \"role\" or \"user\"."
  }
}

variable "peer_principals" {
  description = "peer_access = \"role\": per peer id, the ARN of the principal (the peer deployment's own role, or its account root) allowed to assume the role that writes under from/<peer>/. Every peer must have one."
  type        = map(string)
  default     = {}
}

variable "peer_external_ids" {
  description = "peer_access = \"role\": per peer id, the external id the peer must present when assuming its role (sts:ExternalId; guards against the confused deputy when the peer's principal serves several parties). Every peer must have one, at least 16 characters."
  type        = map(string)
  default     = {}
  validation {
    condition     = alltrue([for id in values(var.peer_external_ids) : length(id) >= 16])
    error_message = "every external id must be at least 16 characters."
  }
}

variable "deployment_access" {
  description = "The deployment's own identity (what its ternd runs as): \"role\" (an IAM role assumed by deployment_trusted_principals: AWS) or \"user\" (an IAM user with an access key: emulators, where moto checks users' keys). Either way its policy reaches only this deployment's buckets, its own KMS key, GenerateMac on the GMK, and (role) assuming its write-only roles in peers' accounts."
  type        = string
  default     = "role"
  validation {
    condition     = contains(["role", "user"], var.deployment_access)
    error_message = "deployment_access must be \"role\" or \"user\"."
  }
}

variable "deployment_trusted_principals" {
  description = "deployment_access = \"role\": ARNs of the principals that may assume the deployment's role (e.g. the instance or task role ternd runs under)."
  type        = list(string)
  default     = []
}

variable "gmk_arns" {
  description = "ARNs of the group's GMK the deployment may call GenerateMac with (the primary, or the replica in its region)."
  type        = list(string)
}

variable "key_admin_principals" {
  description = "ARNs that administer this deployment's KMS key (describe, tag, rotate, schedule deletion, change its policy) but may not use it: e.g. the account root (which delegates to IAM) or the Terraform role. Only the deployment identity may encrypt and decrypt with the key."
  type        = list(string)
  validation {
    condition     = length(var.key_admin_principals) > 0
    error_message = "key_admin_principals must name at least one principal, or nobody could ever manage the key again."
  }
}

variable "restrict_bucket_access" {
  description = "Bucket policies that deny every principal but the deployment identity, key_admin_principals and (replication bucket) the peers' identities. Keep on for AWS. Off on emulators: moto applies a bucket policy's Deny to every caller (it ignores Principal and aws:PrincipalArn), which would lock the deployment out; there its identity policies are what is enforced."
  type        = bool
  default     = true
}
