terraform {
  required_version = ">= 1.11"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "5.100.0"
    }
  }
  # State lives outside the repository: localstack/infra-up.sh runs
  # `terraform init -backend-config=path=$TERN_EMULATOR_HOME/terraform/<target>/terraform.tfstate`.
  backend "local" {}
}
