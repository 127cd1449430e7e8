# `terraform test` of envs/aws, offline: every provider is mocked, so this is `validate`
# plus a full plan of the AWS environment (run by infra/check.sh and .ci/run), and the
# assertions check what the environment promises: peers are roles assumed with an external
# id (no IAM users, no access keys in the state), and every replication bucket's policy
# carries the per-peer Deny guard for each of its peers.

mock_provider "aws" {
  alias = "d1"
  # Mocked data sources return random strings; policies must at least be JSON objects.
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  # ARNs are checked where they are used (a replica key's primary): mock real-looking ones.
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:eu-west-1:111111111111:key/mrk-00000000000000000000000000000000" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::111111111111:role/tern/mock" }
  }
}

mock_provider "aws" {
  alias = "d2"
  # Mocked data sources return random strings; policies must at least be JSON objects.
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  # ARNs are checked where they are used (a replica key's primary): mock real-looking ones.
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:eu-west-1:111111111111:key/mrk-00000000000000000000000000000000" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::111111111111:role/tern/mock" }
  }
}

mock_provider "aws" {
  alias = "d3"
  # Mocked data sources return random strings; policies must at least be JSON objects.
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  # ARNs are checked where they are used (a replica key's primary): mock real-looking ones.
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:eu-west-1:111111111111:key/mrk-00000000000000000000000000000000" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::111111111111:role/tern/mock" }
  }
}

variables {
  bucket_prefix = "acme-tern-test"
  ternd_principals = {
    d1 = "arn:aws:iam::111111111111:role/ternd-host-d1"
    d2 = "arn:aws:iam::222222222222:role/ternd-host-d2"
    d3 = "arn:aws:iam::333333333333:role/ternd-host-d3"
  }
  key_admin_principals = ["arn:aws:iam::111111111111:role/terraform"]
  peer_external_ids = {
    "d1.d2" = "external-id-d1-d2-0001"
    "d1.d3" = "external-id-d1-d3-0001"
    "d2.d1" = "external-id-d2-d1-0001"
    "d2.d3" = "external-id-d2-d3-0001"
    "d3.d1" = "external-id-d3-d1-0001"
    "d3.d2" = "external-id-d3-d2-0001"
  }
}

# `apply` against the mocks (nothing leaves the machine): values known only after an
# apply (ARNs, the module outputs built from them) can be asserted on.
run "plan_and_mocked_apply_have_roles_and_the_peer_guard" {
  command = apply

  assert {
    condition = alltrue([
      for m in [module.d1, module.d2, module.d3] :
      alltrue([for id in values(m.peer_identities) : can(id.role_arn) && !can(id.secret_access_key)])
    ])
    error_message = "every peer identity in envs/aws must be a role (role_arn, external_id), never an access key"
  }

  assert {
    condition     = nonsensitive(output.peer_credentials["d1.d2"].external_id) == "external-id-d1-d2-0001"
    error_message = "d2's role in d1's account must require the external id agreed for d1.d2"
  }

  assert {
    condition = alltrue([
      for m in [module.d1, module.d2, module.d3] : length(m.peer_guard) == 2
    ])
    error_message = "every replication bucket's policy must cap both of its peers (per-peer Deny guard)"
  }

  assert {
    condition = alltrue([
      for m in [module.d1, module.d2, module.d3] :
      contains(m.bucket_policies.volume, "OnlyTheDeployment") &&
      contains(m.bucket_policies.volume, "DenyInsecureTransport") &&
      contains(m.bucket_policies.replication, "OnlyTheDeploymentAndItsPeers")
    ])
    error_message = "every volume bucket must deny all but its deployment, every replication bucket all but the deployment and its peers"
  }

  assert {
    condition = alltrue([
      for m in [module.d1, module.d2, module.d3] :
      nonsensitive(m.identity.access_key_id) == null && m.identity_arn != null
    ])
    error_message = "every deployment runs as a role, with no access key"
  }

  assert {
    condition = alltrue([
      for m in [module.d1, module.d2, module.d3] : alltrue([
        for p in keys(m.peer_guard) :
        contains(m.peer_guard_policy_statements, "PeerWriteOnly${p}") &&
        contains(m.peer_guard_policy_statements, "PeerOwnPrefixOnly${p}")
      ])
    ])
    error_message = "the replication bucket policy must hold PeerWriteOnly<peer> and PeerOwnPrefixOnly<peer> for every peer"
  }
}

run "a_missing_external_id_is_refused" {
  command = plan

  variables {
    peer_external_ids = {
      "d1.d2" = "external-id-d1-d2-0001"
    }
  }

  expect_failures = [var.peer_external_ids]
}
