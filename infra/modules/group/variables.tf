variable "group_name" {
  description = "Name of the deployment group."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,31}$", var.group_name))
    error_message = "group_name must be 1-32 characters of lowercase letters, digits and '-'."
  }
}

variable "multi_region" {
  description = "Create the GMK as a multi-Region primary key, so every deployment's region can hold a replica (aws_kms_replica_key) with the same key material. Always true on AWS."
  type        = bool
  default     = true
}

variable "kms_deletion_window_days" {
  description = "Waiting period before the GMK is deleted after a destroy."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "key_admin_principals" {
  description = "ARNs that administer the GMK (describe, tag, change its policy, schedule deletion) but may not derive with it."
  type        = list(string)
  validation {
    condition     = length(var.key_admin_principals) > 0
    error_message = "key_admin_principals must name at least one principal, or nobody could ever manage the GMK again."
  }
}

variable "member_principals" {
  description = "ARNs of the group's deployment identities: the only principals that may call GenerateMac with the GMK (and its replicas, which take gmk_policy)."
  type        = list(string)
  default     = []
}
