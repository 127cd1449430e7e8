#!/usr/bin/env bash
# Create Tern's local deployment group (infra/envs/local: d1, d2, d3 each with its own
# least-privilege identity, GMK, peer identities, the operator's admin identity) on an
# emulator, and write the Terraform outputs as JSON.
#
# Usage: localstack/infra-up.sh [localstack|moto]     (default: localstack)
#
# Starts the emulator if needed (start.sh). Terraform state and data dir live in
# $TERN_EMULATOR_HOME/terraform/<target>/; outputs go to $TERN_EMULATOR_HOME/infra-<target>.json
# as {output name: value} plus "target", "emulator" (localstack|moto) and "iam_enforced".
# Prints the outputs file path on stdout.
#
# Cheap when already applied: the outputs are reused while the same emulator process (PID
# and start time) runs and infra/ is unchanged. Emulators keep state in memory, so after a
# restart the old state file is dropped and everything is created again.
#
# moto: after the apply IAM enforcement is switched on (POST /moto-api/reset-auth 0); from
# then on only IAM users' keys work, e.g. the "admin" output. A re-apply switches it off
# for the duration of the apply.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

infra_up() {
    local target="$1" url instance kind work out stamp fingerprint started=$SECONDS
    command -v terraform >/dev/null || die "terraform not found on PATH (Terraform 1.11.4 is expected)"
    url="$("$TERN_SCRIPT_DIR/start.sh" "$target")"
    instance="$(running_instance "$target")"
    [[ -n "$instance" ]] || die "emulator '$target' is not running after start.sh"
    kind="$(cat "$(kind_file "$target")")"
    work="$(infra_work_dir "$target")"
    out="$(infra_outputs_file "$target")"
    stamp="$(infra_stamp_file "$target")"
    fingerprint="instance=$instance kind=$kind url=$url sources=$(infra_sources_digest)"

    if [[ -s "$out" && -f "$stamp" && "$(cat "$stamp")" == "$fingerprint" ]]; then
        log "infra for '$target' already applied to this emulator instance (pid ${instance%% *}): $out"
        printf '%s\n' "$out"
        return 0
    fi

    # The state belongs to the emulator process it was applied to. A different process has
    # none of those resources (emulators keep them in memory): start from an empty state.
    # The same process keeps its state, also after a failed apply, so a retry converges.
    mkdir -p "$work"
    if [[ "$(cat "$work/instance" 2>/dev/null || true)" != "$instance" ]]; then
        rm -f "$work/terraform.tfstate" "$work/terraform.tfstate.backup"
        printf '%s\n' "$instance" >"$work/instance"
    fi
    rm -f "$out" "$stamp"

    log "applying infra/envs/local to $kind at $url (state: $work/terraform.tfstate)"
    tf_init "$target"
    local auth_on=false
    if [[ "$target" == moto ]]; then
        # Terraform uses the "test" keys, which moto accepts only while auth is off.
        moto_auth "$url" inf
    fi
    export TF_VAR_endpoint="$url" TF_VAR_region="${TERN_INFRA_REGION:-us-east-1}"
    if ! tf "$target" apply -input=false -auto-approve -no-color >"$work/apply.log" 2>&1; then
        tail -n 40 "$work/apply.log" >&2
        die "terraform apply failed for '$target' (log: $work/apply.log)"
    fi
    if [[ "$target" == moto && "$kind" == moto ]]; then
        moto_auth "$url" 0
        auth_on=true
    fi

    local tmp="$out.tmp.$$"
    (
        umask 077
        tf "$target" output -json -no-color \
            | python3 -c '
import json, sys
outputs = {name: o["value"] for name, o in json.load(sys.stdin).items()}
outputs.update(target=sys.argv[1], emulator=sys.argv[2], iam_enforced=sys.argv[3] == "true")
json.dump(outputs, sys.stdout, indent=2, sort_keys=True)
print()
' "$target" "$kind" "$auth_on" >"$tmp"
    ) || { rm -f "$tmp"; die "could not read the terraform outputs for '$target'"; }
    mv -f "$tmp" "$out"
    printf '%s\n' "$fingerprint" >"$stamp"
    log "infra for '$target' applied in $((SECONDS - started))s (IAM enforced: $auth_on): $out"
    printf '%s\n' "$out"
}

main() {
    local target="${1:-localstack}"
    case "$target" in
        localstack | moto) ;;
        *) die "usage: $0 [localstack|moto]" ;;
    esac
    with_lock "infra-$target" infra_up "$target"
}

main "$@"
