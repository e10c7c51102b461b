#!/bin/sh
# Stand-in for Coder's CLI in the boot test (Coder's real binary cannot be fetched there). The
# simulator serves it at $CODER_URL/bin/coder-linux-amd64, where coderd serves its CLI, so the
# per-boot script and the README's quick start download it like the real one.
#
# It accepts exactly the two ways the shipped units run the agent:
#   coder agent --auth token --agent-token-file FILE   (coder-agent@.service: the token in FILE)
#   coder agent                                       (coder-agent-watch@.service: the token in
#                                                      CODER_AGENT_TOKEN, CODER_AGENT_AUTH=token)
# It shows the token to the simulated coderd, as the agent does, on one of the agent's own
# routes (GET /api/v2/workspaceagents/me/gitsshkey with Coder-Session-Token: 200 for the
# current build's token, 401 for an older build's), and appends what it got to
# ~/coder-standin.log: the token as its SHA-256 only, coderd's answer, the boot id, the unit and
# the CODER_AGENT_* environment it was given. Then it stays running like the agent. Anything
# else: a message on stderr and exit 64.
set -eu
log="${HOME:?}/coder-standin.log"
fail() {
    echo "coder stand-in: $*" >&2
    echo "boot=$(cat /proc/sys/kernel/random/boot_id) error=$(printf '%s' "$*" | tr ' \n' '__')" >>"$log"
    exit 64
}
if [ "$#" -eq 5 ] && [ "$1" = agent ] && [ "$2" = --auth ] && [ "$3" = token ] &&
    [ "$4" = --agent-token-file ]; then
    file=$5
    [ -r "$file" ] || fail "cannot read the token file $file"
    token=$(cat "$file")
elif [ "$#" -eq 1 ] && [ "$1" = agent ]; then
    file=env
    [ "${CODER_AGENT_AUTH-}" = token ] || fail "coder agent without flags, and CODER_AGENT_AUTH is not token"
    token=${CODER_AGENT_TOKEN-}
else
    fail "unexpected arguments: $*"
fi
[ -n "$token" ] || fail "the token ($file) is empty"
sha=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)
says=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H "Coder-Session-Token: $token" \
    "${CODER_AGENT_URL:-}/api/v2/workspaceagents/me/gitsshkey" || true)
unit=$(sed -n 's/^0::.*\/\([^/]*\.service\)$/\1/p' /proc/self/cgroup)
echo "boot=$(cat /proc/sys/kernel/random/boot_id) unit=${unit:-?} pid=$$ user=$(id -un)" \
    "file=$file token_sha256=$sha coder_says=${says:-none}" \
    "env_auth=${CODER_AGENT_AUTH-unset} env_token_file=${CODER_AGENT_TOKEN_FILE-unset}" \
    "env_url=${CODER_AGENT_URL-unset}" >>"$log"
exec sleep infinity
