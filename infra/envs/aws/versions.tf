terraform {
  required_version = ">= 1.11"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "5.100.0"
    }
  }
  # Configure a remote backend (S3 + locking) before applying for real, e.g.:
  # backend "s3" { bucket = "…-tfstate" key = "tern/<group>.tfstate" region = "eu-west-1" use_lockfile = true }
}
