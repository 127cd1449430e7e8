#!/usr/bin/env bash
# Destroy what infra-up.sh created on an emulator and remove its outputs and state.
#
# Usage: localstack/infra-down.sh [localstack|moto|all]     (default: all)
#
# If the emulator that holds the resources is no longer running (or was restarted), there is
# nothing left to destroy: only the local state and outputs are removed. On moto, IAM
# enforcement is switched off first (the destroy uses the "test" keys) and stays off, since
# the admin identity is gone afterwards. Does not stop the emulator (stop.sh does).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

infra_down() {
    local target="$1" work instance recorded url kind
    work="$(infra_work_dir "$target")"
    instance="$(running_instance "$target")"
    recorded="$(cat "$work/instance" 2>/dev/null || true)"

    if [[ -f "$work/terraform.tfstate" && -n "$instance" && "$instance" == "$recorded" ]]; then
        url="$(target_url "$target")"
        kind="$(cat "$(kind_file "$target")")"
        log "destroying infra/envs/local on $kind at $url"
        [[ "$kind" == moto ]] && moto_auth "$url" inf
        tf_init "$target"
        export TF_VAR_endpoint="$url" TF_VAR_region="${TERN_INFRA_REGION:-us-east-1}"
        if ! tf "$target" destroy -input=false -auto-approve -no-color >"$work/destroy.log" 2>&1; then
            tail -n 40 "$work/destroy.log" >&2
            die "terraform destroy failed for '$target' (log: $work/destroy.log)"
        fi
    else
        log "'$target': the emulator instance that held the infra is gone; removing local state only"
    fi
    rm -rf "$work"
    rm -f "$(infra_outputs_file "$target")" "$(infra_stamp_file "$target")"
    log "'$target': infra removed"
}

main() {
    local what="${1:-all}" targets t
    case "$what" in
        localstack | moto) targets=("$what") ;;
        all) targets=(localstack moto) ;;
        *) die "usage: $0 [localstack|moto|all]" ;;
    esac
    for t in "${targets[@]}"; do
        (with_lock "infra-$t" infra_down "$t")
    done
}

main "$@"
