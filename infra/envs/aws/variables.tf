variable "group_name" {
  type    = string
  default = "tern-prod"
}

variable "bucket_prefix" {
  description = "Bucket names are global on AWS: include something unique to you (organisation, account id)."
  type        = string
}

variable "regions" {
  description = "Region of each deployment. This example wires three: d1 (also holds the GMK primary), d2, d3."
  type = object({
    d1 = string
    d2 = string
    d3 = string
  })
  default = {
    d1 = "eu-west-1"
    d2 = "us-east-1"
    d3 = "ap-southeast-2"
  }
}

variable "tags" {
  type    = map(string)
  default = {}
}

variable "ternd_principals" {
  description = "Per deployment id: the ARN of the principal its ternd runs under (an instance or task role), allowed to assume the deployment's role. The deployment role is in turn the only principal allowed to assume its write-only roles in the other deployments' accounts."
  type = object({
    d1 = string
    d2 = string
    d3 = string
  })
}

variable "key_admin_principals" {
  description = "ARNs that administer the KMS keys (not use them). Empty: the account root of d1's provider (IAM delegation, administrative actions only). Include the principal Terraform runs as."
  type        = list(string)
  default     = []
}

variable "peer_external_ids" {
  description = "Keyed \"<owner>.<peer>\": the external id <peer> presents when assuming its write-only role in <owner>'s account (at least 16 characters; agree them out of band, e.g. random strings in each side's secret store)."
  type        = map(string)
  sensitive   = true
  validation {
    condition = alltrue([
      for owner, peers in { d1 = ["d2", "d3"], d2 = ["d1", "d3"], d3 = ["d1", "d2"] } :
      alltrue([for p in peers : length(lookup(var.peer_external_ids, "${owner}.${p}", "")) >= 16])
    ])
    error_message = "peer_external_ids needs an id of at least 16 characters for each of d1.d2, d1.d3, d2.d1, d2.d3, d3.d1, d3.d2."
  }
}
