# shellcheck shell=bash
# Shared settings and helpers for the localstack/ scripts. Sourced, never executed.
#
# Everything the scripts install or write lives under the cache root
# ${TERN_EMULATOR_HOME:-$HOME/.cache/tern-emulators}, outside the repository clone, so a
# CI machine reuses the venvs across clones and the repository stays clean.

TERN_SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TERN_REPO_ROOT="$(cd "$TERN_SCRIPT_DIR/.." && pwd)"
TERN_EMULATOR_HOME="${TERN_EMULATOR_HOME:-$HOME/.cache/tern-emulators}"

LOCALSTACK_VERSION="2026.3.0"
MOTO_VERSION="5.2.1"
LOCALSTACK_HOST="127.0.0.1"
LOCALSTACK_PORT="${TERN_LOCALSTACK_PORT:-4566}"
MOTO_HOST="127.0.0.1"
MOTO_PORT="${TERN_MOTO_PORT:-4600}"

LOCALSTACK_VENV="$TERN_EMULATOR_HOME/venv-localstack-$LOCALSTACK_VERSION-py3.13"
MOTO_VENV="$TERN_EMULATOR_HOME/venv-moto-$MOTO_VERSION"
TERN_CONSTRAINTS="$TERN_SCRIPT_DIR/constraints.txt"

log() { printf '[tern-emulators] %s\n' "$*" >&2; }
die() { printf '[tern-emulators] ERROR: %s\n' "$*" >&2; exit 1; }

ensure_home() { mkdir -p "$TERN_EMULATOR_HOME"; }

# Python 3.13 for LocalStack (3.11/3.12 fail with misleading errors). Empty if missing.
python313() {
    local candidate
    if [[ -n "${TERN_PYTHON313:-}" ]]; then
        candidate="$TERN_PYTHON313"
    elif command -v pyenv >/dev/null 2>&1; then
        candidate="$(pyenv root)/versions/3.13.0/bin/python3"
    else
        candidate="${PYENV_ROOT:-$HOME/.pyenv}/versions/3.13.0/bin/python3"
    fi
    if [[ -x "$candidate" ]] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
        printf '%s\n' "$candidate"
    fi
}

# The system Python 3.11 (absolute path, not a pyenv shim, so that `$!` is the server PID).
python311() {
    local candidate
    for candidate in \
        "${TERN_PYTHON311:-}" \
        "$( (command -v pyenv >/dev/null 2>&1 && printf '%s/versions/3.11.7/bin/python3' "$(pyenv root)") || true)" \
        /usr/bin/python3.11; do
        if [[ -n "$candidate" && -x "$candidate" ]]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
}

localstack_installed() {
    [[ -f "$LOCALSTACK_VENV/.tern-installed" ]] \
        && cmp -s "$LOCALSTACK_VENV/.tern-installed" <(localstack_install_stamp)
}
localstack_install_stamp() {
    printf 'localstack-core[runtime]==%s\n' "$LOCALSTACK_VERSION"
    cat "$TERN_CONSTRAINTS"
}

# Prints the absolute interpreter that can run `-m moto.server` at the pinned version, if any.
moto_python() {
    local py
    for py in "$(python311)" "$MOTO_VENV/bin/python"; do
        if [[ -n "$py" && -x "$py" ]] && "$py" - "$MOTO_VERSION" >/dev/null 2>&1 <<'PY'
import sys, importlib.metadata as md
import moto.server  # noqa: F401  (flask, werkzeug and friends present)
sys.exit(md.version("moto") != sys.argv[1])
PY
        then
            printf '%s\n' "$py"
            return 0
        fi
    done
}

# PID file, log file, and instance file of a running emulator (target: localstack | moto).
pid_file() { printf '%s/%s.pid\n' "$TERN_EMULATOR_HOME" "$1"; }
log_file() { printf '%s/%s.log\n' "$TERN_EMULATOR_HOME" "$1"; }
kind_file() { printf '%s/%s.kind\n' "$TERN_EMULATOR_HOME" "$1"; }

target_url() {
    case "$1" in
        localstack) printf 'http://%s:%s\n' "$LOCALSTACK_HOST" "$LOCALSTACK_PORT" ;;
        moto) printf 'http://%s:%s\n' "$MOTO_HOST" "$MOTO_PORT" ;;
        *) die "unknown target '$1' (expected localstack or moto)" ;;
    esac
}

# "<pid> <start-time-in-clock-ticks>" of a live process, or nothing. The start time tells a
# restarted emulator (new in-memory state) from the one that was there before, even if the
# kernel reused the PID.
process_identity() {
    local pid="$1" stat
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 0
    # Field 22 (starttime) counted after the ")" that ends the command name.
    stat="${stat##*) }"
    # shellcheck disable=SC2086  # word splitting of the stat fields is the point
    set -- $stat
    printf '%s %s\n' "$pid" "${20}"
}

# The live PID recorded for a target, if the process still runs the expected server.
running_pid() {
    local target="$1" file pid cmdline
    file="$(pid_file "$target")"
    [[ -f "$file" ]] || return 0
    read -r pid _ <"$file" || true
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 0
    case "$cmdline" in
        *localstack.runtime.main* | *moto.server*) printf '%s\n' "$pid" ;;
    esac
}

# The identity of the emulator instance recorded in the PID file ("<pid> <starttime>"), if it
# is still the same live process.
running_instance() {
    local target="$1" pid recorded
    pid="$(running_pid "$target")"
    [[ -n "$pid" ]] || return 0
    recorded="$(cat "$(pid_file "$target")")"
    if [[ "$recorded" == "$(process_identity "$pid")" ]]; then
        printf '%s\n' "$recorded"
    fi
}

health_ok() {
    local target="$1" kind="$2" url
    url="$(target_url "$target")"
    case "$kind" in
        localstack)
            curl -fsS --max-time 2 "$url/_localstack/health" 2>/dev/null \
                | grep -Eq '"s3": *"(available|running)"'
            ;;
        moto) moto_answers "$url" 2 ;;
    esac
}

# Usage: moto_answers URL [SECONDS]: moto's dashboard page answers at URL. Not
# /moto-api/data.json: moto 5.2.1 answers it with a 500 once a bucket has been deleted (its
# S3 model still lists the bucket and raises NoSuchBucket while dumping), which every test run does.
moto_answers() {
    local page
    page="$(curl -fsS --max-time "${2:-10}" "$1/moto-api/" 2>/dev/null)" \
        && [[ "$page" == *'<title>Moto</title>'* ]]
}

# Usage: with_lock NAME COMMAND...: serialises concurrent scripts (parallel test processes
# all call start.sh / infra-up.sh). The lock descriptor is closed in spawned servers.
with_lock() {
    local name="$1"
    shift
    ensure_home
    exec 9>"$TERN_EMULATOR_HOME/$name.lock"
    if ! flock -w "${TERN_LOCK_TIMEOUT:-600}" 9; then
        die "timed out waiting for the lock $TERN_EMULATOR_HOME/$name.lock"
    fi
    "$@"
}

export TF_CLI_CONFIG_FILE="$TERN_SCRIPT_DIR/terraformrc"

# --- Terraform (infra/envs/local) --------------------------------------------------------

TERN_INFRA_ENV="$TERN_REPO_ROOT/infra/envs/local"

infra_work_dir() { printf '%s/terraform/%s\n' "$TERN_EMULATOR_HOME" "$1"; }
infra_outputs_file() { printf '%s/infra-%s.json\n' "$TERN_EMULATOR_HOME" "$1"; }
infra_stamp_file() { printf '%s/infra-%s.stamp\n' "$TERN_EMULATOR_HOME" "$1"; }

# Digest of everything that decides what an apply produces: the Terraform sources and lock
# file, and the CLI config. A change re-applies even on the same emulator instance.
infra_sources_digest() {
    (
        cd "$TERN_REPO_ROOT" || exit 1
        find infra -type f \( -name '*.tf' -o -name '.terraform.lock.hcl' \) \
            -not -path '*/.terraform/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        sha256sum localstack/terraformrc
    ) | sha256sum | cut -d' ' -f1
}

# Turn moto's IAM enforcement on (0: from the next request) or off (inf). The explicit
# content type matters: with curl's default (form data) Flask hands moto an empty body and
# the endpoint fails with a 500.
moto_auth() {
    local url="$1" value="$2"
    curl -fsS --max-time 5 -X POST -H 'Content-Type: text/plain' --data "$value" \
        "$url/moto-api/reset-auth" >/dev/null \
        || die "could not set moto auth to '$value' at $url/moto-api/reset-auth"
}

# Runs terraform in infra/envs/local for a target, with its data dir and state under the
# cache root (the repository stays clean).
tf() {
    local target="$1"
    shift
    TF_DATA_DIR="$(infra_work_dir "$target")/data" TF_IN_AUTOMATION=1 \
        terraform -chdir="$TERN_INFRA_ENV" "$@"
}

tf_init() {
    local target="$1" work
    work="$(infra_work_dir "$target")"
    mkdir -p "$work"
    tf "$target" init -input=false -no-color -reconfigure \
        -backend-config="path=$work/terraform.tfstate" >"$work/init.log" 2>&1 \
        || { tail -n 30 "$work/init.log" >&2; die "terraform init failed for '$target' (log: $work/init.log)"; }
}
