#!/bin/sh
# Stand-in for Coder's CLI in the boot test (Coder's real binary cannot be fetched there). The
# simulator serves it at $CODER_URL/bin/coder-linux-amd64, where coderd serves its CLI, so the
# per-boot script and the README's quick start download it like the real one.
#
# It accepts exactly `coder agent --auth token --agent-token-file FILE`, as coder-agent@.service
# runs it, reads FILE, appends what it got to ~/coder-standin.log (the token as its SHA-256 only,
# next to the boot id, the unit and the CODER_AGENT_* environment it was given), then stays
# running like the agent. Anything else: a message on stderr and exit 64.
set -eu
log="${HOME:?}/coder-standin.log"
fail() {
    echo "coder stand-in: $*" >&2
    echo "boot=$(cat /proc/sys/kernel/random/boot_id) error=$(printf '%s' "$*" | tr ' \n' '__')" >>"$log"
    exit 64
}
[ "$#" -eq 5 ] && [ "$1" = agent ] && [ "$2" = --auth ] && [ "$3" = token ] &&
    [ "$4" = --agent-token-file ] || fail "unexpected arguments: $*"
file=$5
[ -r "$file" ] || fail "cannot read the token file $file"
token=$(cat "$file")
[ -n "$token" ] || fail "the token file $file is empty"
sha=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)
unit=$(sed -n 's/^0::.*\/\([^/]*\.service\)$/\1/p' /proc/self/cgroup)
echo "boot=$(cat /proc/sys/kernel/random/boot_id) unit=${unit:-?} pid=$$ user=$(id -un)" \
    "file=$file token_sha256=$sha" \
    "env_auth=${CODER_AGENT_AUTH-unset} env_token_file=${CODER_AGENT_TOKEN_FILE-unset}" \
    "env_url=${CODER_AGENT_URL-unset}" >>"$log"
exec sleep infinity
