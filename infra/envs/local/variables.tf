variable "endpoint" {
  description = "URL of the emulator serving S3, KMS, IAM and STS (LocalStack or moto)."
  type        = string
  default     = "http://127.0.0.1:4566"
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "access_key" {
  description = "Credentials Terraform uses against the emulator (moto with IAM enforced needs the admin keys)."
  type        = string
  default     = "test"
}

variable "secret_key" {
  type      = string
  default   = "test"
  sensitive = true
}

variable "group_name" {
  type    = string
  default = "tern-local"
}

variable "bucket_prefix" {
  type    = string
  default = "tern-local"
}

variable "deployments" {
  description = "Deployment ids of the group; each is every other one's peer."
  type        = list(string)
  default     = ["d1", "d2", "d3"]
}
