#!/usr/bin/env bash
# Fail unless the emulator serving a target is the server the tests are named for.
#
# Usage: localstack/require-kind.sh TARGET KIND [URL]
#        e.g. localstack/require-kind.sh localstack localstack "$TERN_LOCALSTACK_URL"
#
# Without Python 3.13, `start.sh localstack` serves moto on LocalStack's port (a developer
# can still run most tests). Tests named for LocalStack then ran on moto, and a CI run that
# passed would claim what it did not check. This script is the guard .ci/run calls before
# and after the tests. It checks all three records of what serves TARGET:
#   1. the kind start.sh recorded ($TERN_EMULATOR_HOME/TARGET.kind), if this home started it;
#   2. the "emulator" field infra-up.sh wrote into infra-TARGET.json (required);
#   3. the server itself at URL (default: the target's URL): LocalStack answers
#      /_localstack/health with its services, moto serves its dashboard at /moto-api/.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

main() {
    [[ $# -ge 2 && $# -le 3 ]] || die "usage: $0 TARGET KIND [URL]"
    local target="$1" want="$2" url="${3:-}" recorded outputs got
    case "$target" in localstack | moto) ;; *) die "unknown target '$target'" ;; esac
    case "$want" in localstack | moto) ;; *) die "unknown kind '$want'" ;; esac
    [[ -n "$url" ]] || url="$(target_url "$target")"

    if [[ -f "$(kind_file "$target")" ]]; then
        recorded="$(cat "$(kind_file "$target")")"
        [[ "$recorded" == "$want" ]] \
            || die "'$target' is served by $recorded, not $want (recorded in $(kind_file "$target"))"
    fi

    outputs="$(infra_outputs_file "$target")"
    [[ -s "$outputs" ]] || die "no infra outputs at $outputs: run localstack/infra-up.sh $target first"
    got="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("emulator", ""))' "$outputs")" \
        || die "cannot read the \"emulator\" field of $outputs"
    [[ "$got" == "$want" ]] \
        || die "the infra for '$target' was applied to ${got:-an unknown emulator}, not $want ($outputs)"

    # The server at the URL says what it is (a PID file can be stale, a port can be reused).
    local probe_ok=false
    case "$want" in
        localstack)
            curl -fsS --max-time 5 "$url/_localstack/health" 2>/dev/null \
                | grep -Eq '"s3": *"(available|running)"' && probe_ok=true
            ;;
        moto)
            moto_answers "$url" \
                && ! curl -fsS --max-time 5 -o /dev/null "$url/_localstack/health" 2>/dev/null \
                && probe_ok=true
            ;;
    esac
    $probe_ok || die "the server at $url does not answer as $want"
    log "'$target' is $want at $url"
}

main "$@"
