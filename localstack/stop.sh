#!/usr/bin/env bash
# Stop an emulator started by localstack/start.sh, by its recorded PID only.
#
# Usage: localstack/stop.sh [localstack|moto|all]     (default: all)
#
# SIGTERM, wait up to ${TERN_EMULATOR_STOP_TIMEOUT:-20} s, then SIGKILL; removes the PID file.
# A PID file whose process is gone, or now runs something else, is just removed.
# Never looks processes up by name.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

stop_target() {
    local target="$1" file instance pid deadline
    file="$(pid_file "$target")"
    if [[ ! -f "$file" ]]; then
        log "'$target': not running (no $file)"
        return 0
    fi
    instance="$(running_instance "$target")"
    if [[ -z "$instance" ]]; then
        log "'$target': recorded process is gone; removing stale $file"
        rm -f "$file" "$(kind_file "$target")"
        return 0
    fi
    read -r pid _ <<<"$instance"
    log "'$target': stopping pid $pid (SIGTERM)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + ${TERN_EMULATOR_STOP_TIMEOUT:-20}))
    while [[ "$(process_identity "$pid")" == "$instance" ]]; do
        if ((SECONDS >= deadline)); then
            log "'$target': pid $pid still alive after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "$file" "$(kind_file "$target")"
    log "'$target': stopped"
}

main() {
    local what="${1:-all}" lock=1
    [[ "${2:-}" == --no-lock ]] && lock=0
    local targets
    case "$what" in
        localstack | moto) targets=("$what") ;;
        all) targets=(localstack moto) ;;
        *) die "usage: $0 [localstack|moto|all]" ;;
    esac
    ensure_home
    local t
    for t in "${targets[@]}"; do
        if ((lock)); then
            # A subshell per target: each takes (and releases) its own lock.
            (with_lock "emulator-$t" stop_target "$t")
        else
            stop_target "$t"
        fi
    done
}

main "$@"
