#!/usr/bin/env bash
# Install the S3/KMS emulators used by Tern's tests into a cache outside the repository.
#
# Usage: localstack/install.sh [localstack|moto|all]     (default: all)
#
#   localstack  localstack-core[runtime]==2026.3.0 in a venv made with Python 3.13
#               (pins in localstack/constraints.txt). Without Python 3.13, says so and
#               installs moto instead: start.sh localstack then serves moto on LocalStack's port.
#   moto        moto[server]==5.2.1: the system Python 3.11 if it already has it, else a venv.
#
# Idempotent: a finished install leaves a stamp and is not repeated.
# Cache root: ${TERN_EMULATOR_HOME:-$HOME/.cache/tern-emulators}.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

install_moto() {
    local py base
    py="$(moto_python)"
    if [[ -n "$py" ]]; then
        log "moto $MOTO_VERSION: available ($py)"
        return 0
    fi
    base="$(python311)"
    [[ -n "$base" ]] || base="$(command -v python3 || true)"
    [[ -n "$base" ]] || die "no Python 3 found to install moto"
    log "moto $MOTO_VERSION: installing into $MOTO_VENV (with $base)"
    rm -rf "$MOTO_VENV"
    "$base" -m venv "$MOTO_VENV"
    "$MOTO_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "moto[server]==$MOTO_VERSION"
    [[ -n "$(moto_python)" ]] || die "moto installed into $MOTO_VENV but 'import moto.server' fails"
    log "moto $MOTO_VERSION: installed"
}

install_localstack() {
    local py313
    if localstack_installed; then
        log "LocalStack $LOCALSTACK_VERSION: available ($LOCALSTACK_VENV)"
        return 0
    fi
    py313="$(python313)"
    if [[ -z "$py313" ]]; then
        log "Python 3.13 not found (looked for \$(pyenv root)/versions/3.13.0/bin/python3;" \
            "set TERN_PYTHON313 to override). LocalStack $LOCALSTACK_VERSION needs it."
        log "Falling back to moto: 'start.sh localstack' will serve moto on port $LOCALSTACK_PORT."
        install_moto
        return 0
    fi
    log "LocalStack $LOCALSTACK_VERSION: installing into $LOCALSTACK_VENV (≈ 75 s, 500 MB)"
    # The stamp is written last: an interrupted install is wiped and redone on the next call.
    rm -rf "$LOCALSTACK_VENV"
    "$py313" -m venv "$LOCALSTACK_VENV"
    if ! "$LOCALSTACK_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$TERN_CONSTRAINTS" "localstack-core[runtime]==$LOCALSTACK_VERSION"; then
        die "pip install of localstack-core[runtime]==$LOCALSTACK_VERSION failed (see above)"
    fi
    "$LOCALSTACK_VENV/bin/python" -c 'import localstack.runtime.main' \
        || die "LocalStack installed but 'import localstack.runtime.main' fails"
    localstack_install_stamp >"$LOCALSTACK_VENV/.tern-installed"
    log "LocalStack $LOCALSTACK_VERSION: installed"
}

main() {
    local what="${1:-all}"
    case "$what" in
        localstack) with_lock install install_localstack ;;
        moto) with_lock install install_moto ;;
        all) with_lock install install_localstack && install_moto ;;
        *) die "usage: $0 [localstack|moto|all]" ;;
    esac
}

main "$@"
