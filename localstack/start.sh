#!/usr/bin/env bash
# Start an S3/KMS emulator on the host, bound to 127.0.0.1 only, and wait until it is healthy.
#
# Usage: localstack/start.sh [localstack|moto]     (default: localstack)
#
#   localstack  LocalStack (s3, kms, iam, sts) on 127.0.0.1:${TERN_LOCALSTACK_PORT:-4566}.
#               No access control. Without Python 3.13 it cannot be installed: moto is served
#               on that port instead (.ci/run refuses that: localstack/require-kind.sh).
#   moto        moto on 127.0.0.1:${TERN_MOTO_PORT:-4600}; enforces IAM once
#               infra-up.sh has switched auth on.
#
# Installs first if needed. Starting twice does not start two: the PID file, the process's
# command line and start time, and the health endpoint are checked. The server runs in its
# own session (survives the caller) until localstack/stop.sh stops it by PID.
# Prints the endpoint URL on stdout; messages go to stderr.
# Files: $TERN_EMULATOR_HOME/<target>.{pid,log,kind}.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

port_in_use() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

log_tail() {
    local file
    file="$(log_file "$1")"
    if [[ -f "$file" ]]; then
        printf -- '--- last lines of %s ---\n' "$file" >&2
        tail -n "${TERN_LOG_TAIL_LINES:-30}" "$file" >&2
        printf -- '---\n' >&2
    fi
}

# Which server a target runs: "localstack", or "moto" (moto target, or the fallback).
choose_kind() {
    local target="$1"
    if [[ "$target" == moto ]]; then
        [[ -n "$(moto_python)" ]] || "$TERN_SCRIPT_DIR/install.sh" moto >&2
        echo moto
        return 0
    fi
    if ! localstack_installed; then
        "$TERN_SCRIPT_DIR/install.sh" localstack >&2
    fi
    if localstack_installed; then
        echo localstack
    else
        log "LocalStack is not installed (no Python 3.13): serving moto on port $LOCALSTACK_PORT instead."
        echo moto
    fi
}

spawn() {
    local target="$1" kind="$2" host port py logf
    logf="$(log_file "$target")"
    [[ -f "$logf" ]] && mv -f "$logf" "$logf.1"
    case "$target" in
        localstack) host="$LOCALSTACK_HOST" port="$LOCALSTACK_PORT" ;;
        moto) host="$MOTO_HOST" port="$MOTO_PORT" ;;
    esac
    # The subshell closes the lock descriptor (fd 9) and execs through setsid and env into
    # the interpreter (absolute path, no shim), so `$!` is the server's own PID.
    case "$kind" in
        localstack)
            mkdir -p "$TERN_EMULATOR_HOME/localstack-volume"
            (
                exec 9>&-
                cd "$TERN_EMULATOR_HOME"
                exec setsid env \
                    SERVICES=s3,kms,iam,sts \
                    GATEWAY_LISTEN="$host:$port" \
                    GATEWAY_SERVER=hypercorn \
                    LOCALSTACK_VOLUME_DIR="$TERN_EMULATOR_HOME/localstack-volume" \
                    DISABLE_EVENTS=1 \
                    SKIP_SSL_CERT_DOWNLOAD=1 \
                    DNS_ADDRESS=0 \
                    "$LOCALSTACK_VENV/bin/python" -m localstack.runtime.main
            ) </dev/null >"$logf" 2>&1 &
            ;;
        moto)
            py="$(moto_python)"
            [[ -n "$py" ]] || die "moto $MOTO_VERSION is not installed (run localstack/install.sh moto)"
            (
                exec 9>&-
                cd "$TERN_EMULATOR_HOME"
                exec setsid "$py" -m moto.server -H "$host" -p "$port"
            ) </dev/null >"$logf" 2>&1 &
            ;;
    esac
    local pid=$!
    # Record "<pid> <start time>" so that a restarted emulator is told from the old one.
    local identity=""
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        identity="$(process_identity "$pid")"
        [[ -n "$identity" ]] && break
        sleep 0.1
    done
    [[ -n "$identity" ]] || { log_tail "$target"; die "$kind exited immediately (pid $pid)"; }
    printf '%s\n' "$identity" >"$(pid_file "$target")"
    printf '%s\n' "$kind" >"$(kind_file "$target")"
    log "started $kind for '$target' on $host:$port (pid $pid, log $logf)"
}

wait_healthy() {
    local target="$1" kind="$2" timeout="$3" pid deadline
    pid="$(running_pid "$target")"
    deadline=$((SECONDS + timeout))
    until health_ok "$target" "$kind"; do
        if [[ -z "$(running_pid "$target")" ]]; then
            log_tail "$target"
            rm -f "$(pid_file "$target")"
            die "$kind for '$target' exited before becoming healthy (pid $pid); log: $(log_file "$target")"
        fi
        if ((SECONDS >= deadline)); then
            log_tail "$target"
            log "stopping pid $pid, which did not become healthy"
            "$TERN_SCRIPT_DIR/stop.sh" "$target" --no-lock || true
            die "$kind for '$target' not healthy at $(target_url "$target") after ${timeout}s; log: $(log_file "$target")"
        fi
        sleep 0.25
    done
}

start_target() {
    local target="$1" kind pid started=$SECONDS timeout
    timeout="${TERN_EMULATOR_START_TIMEOUT:-90}"
    pid="$(running_pid "$target")"
    if [[ -n "$pid" ]]; then
        kind="$(cat "$(kind_file "$target")" 2>/dev/null || echo "$target")"
        wait_healthy "$target" "$kind" "$timeout"
        log "$kind for '$target' already running (pid $pid) at $(target_url "$target")"
        target_url "$target"
        return 0
    fi
    rm -f "$(pid_file "$target")"
    local url host port
    url="$(target_url "$target")"
    host="${url#http://}" port="${host##*:}" host="${host%%:*}"
    if port_in_use "$host" "$port"; then
        die "$host:$port is in use by a process these scripts did not start (no live PID in" \
            "$(pid_file "$target")). Stop it, or point tests at it with" \
            "TERN_$(tr '[:lower:]' '[:upper:]' <<<"$target")_URL=$url."
    fi
    kind="$(choose_kind "$target")"
    spawn "$target" "$kind"
    wait_healthy "$target" "$kind" "$timeout"
    log "$kind for '$target' healthy at $url after $((SECONDS - started))s"
    printf '%s\n' "$url"
}

main() {
    local target="${1:-localstack}"
    case "$target" in
        localstack | moto) ;;
        *) die "usage: $0 [localstack|moto]" ;;
    esac
    ensure_home
    with_lock "emulator-$target" start_target "$target"
}

main "$@"
