#!/usr/bin/env bash
# Offline checks of infra/: `terraform fmt`, `validate` of every environment, and
# `terraform test` of envs/aws (a full plan against mocked AWS providers, with assertions:
# infra/envs/aws/tests/). Uses the provider mirror (localstack/terraformrc); Terraform's
# data dirs go to a temporary folder, so the clone stays clean. .ci/run calls it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TF_CLI_CONFIG_FILE="$repo/localstack/terraformrc" TF_IN_AUTOMATION=1
work="$(mktemp -d -t tern-infra-check-XXXXXX)"
trap 'rm -rf "$work"' EXIT

terraform fmt -recursive -check "$repo/infra"
for env in local aws; do
    dir="$repo/infra/envs/$env"
    export TF_DATA_DIR="$work/$env"
    terraform -chdir="$dir" init -input=false -no-color -backend=false >"$work/$env-init.log" 2>&1 \
        || { cat "$work/$env-init.log" >&2; echo "terraform init of envs/$env failed" >&2; exit 1; }
    terraform -chdir="$dir" validate -no-color
done
export TF_DATA_DIR="$work/aws"
terraform -chdir="$repo/infra/envs/aws" test -no-color
echo "infra: fmt, validate (envs/local, envs/aws) and the mocked plan of envs/aws passed"
