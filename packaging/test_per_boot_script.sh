#!/usr/bin/env bash
# Runs the Terraform templates' per-boot script (coder-agents.sh.tftpl, rendered as
# Terraform would) for real, against the simulator (coder-agent-auth-sim serve), once per
# cloud. It runs inside private mount and PID namespaces, where /usr/local/bin, /home and
# /var/log are tmpfs and /etc/passwd and /etc/group are copies with a test user. Nothing on
# the machine changes, and every process it started dies with the namespace.
#
# For each cloud it checks that both agents, main and dev, were started:
#   - through `coder-agent-auth --agent-name NAME -- setpriv ... coder agent`;
#   - as the test user, in its home directory;
#   - with CODER_AGENT_AUTH=token, CODER_AGENT_URL and a token, distinct per agent.
# "coder" is a stub that records its environment; curl is a stub that fails, which
# exercises the script's "keep the previous Coder CLI" branch.
#
# Usage (as root): packaging/test_per_boot_script.sh PATH/TO/coder-agent-auth PATH/TO/coder-agent-auth-sim
set -euo pipefail
BIN=$(realpath "$1")
SIM=$(realpath "$2")
# The binary installed in the namespace is the pinned one, so the script keeps it (curl is a
# stub that fails); a wrong pin is tried once at the end.
BIN_SHA256=$(sha256sum "$BIN" | cut -d' ' -f1)
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/caa-per-boot.XXXXXX)
SIM_PID=""
cleanup() {
    if [ -n "$SIM_PID" ]; then kill "$SIM_PID" 2>/dev/null || true; wait "$SIM_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

passed=0
failed=0
for cloud in aws gcp azure; do
    dir="$WORK/$cloud"
    mkdir -p "$dir/fakebin" "$dir/report"
    chmod 1777 "$dir/report"
    chmod 755 "$WORK" "$dir"

    "$SIM" serve --cloud "$cloud" --agents main,dev --ready-file "$dir/ready.json" \
        >"$dir/sim.log" 2>&1 &
    SIM_PID=$!
    for _ in $(seq 100); do [ -s "$dir/ready.json" ] && break; sleep 0.1; done
    [ -s "$dir/ready.json" ] || { cat "$dir/sim.log"; echo "simulator did not start" >&2; exit 1; }
    read -r metadata_url coder_url < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["metadata_url"], d["coder_url"])' "$dir/ready.json")

    # Render the template exactly as check_terraform.py does (Terraform's ${} and $${}).
    python3 - "$HERE/terraform/$cloud-multi-agent/coder-agents.sh.tftpl" "$dir/per-boot.sh" "$coder_url/" "$BIN_SHA256" <<'PY'
import importlib.util, pathlib, sys
spec = importlib.util.spec_from_file_location("ct", pathlib.Path(sys.argv[1]).parents[2] / "check_terraform.py")
ct = importlib.util.module_from_spec(spec)
sys.modules["hcl2"] = type(sys)("hcl2")  # render_template needs no HCL parser
spec.loader.exec_module(ct)
text = pathlib.Path(sys.argv[1]).read_text()
out = ct.render_template(text, {"access_url": sys.argv[3], "release_url": "http://127.0.0.1:9/none",
                                "version": "0.1.0", "sha256_amd64": sys.argv[4], "sha256_arm64": sys.argv[4],
                                "watch": "1m", "linux_user": "caatest"})
pathlib.Path(sys.argv[2]).write_text(out)
PY
    chmod 755 "$dir/per-boot.sh"

    cat >"$dir/coder" <<STUB
#!/bin/sh
# stub Coder CLI: record who and how we were started, then idle like an agent
{
  echo "args=\$*"
  echo "user=\$(id -un)"
  echo "pwd=\$(pwd)"
  echo "home=\$HOME"
  echo "auth=\$CODER_AGENT_AUTH"
  echo "url=\$CODER_AGENT_URL"
  echo "token=\$CODER_AGENT_TOKEN"
} >"$dir/report/agent.\$\$.tmp" && mv "$dir/report/agent.\$\$.tmp" "$dir/report/agent.\$\$"
exec sleep 300
STUB
    printf '#!/bin/sh\necho "curl stub: no network in this test" >&2\nexit 7\n' >"$dir/fakebin/curl"
    chmod 755 "$dir/coder" "$dir/fakebin/curl"
    cp /etc/passwd "$dir/passwd"
    cp /etc/group "$dir/group"
    echo "caatest:x:4242:4242:per-boot test:/home/caatest:/bin/bash" >>"$dir/passwd"
    echo "caatest:x:4242:" >>"$dir/group"

    rc=0
    CODER_AGENT_METADATA_ENDPOINT="$metadata_url" PATH="$dir/fakebin:$PATH" \
        unshare --mount --propagation private --pid --fork --kill-child \
        bash -euo pipefail -c '
            dir=$1; bin=$2
            mount -t tmpfs none /usr/local/bin
            mount -t tmpfs none /home
            mount -t tmpfs none /var/log
            mount --bind "$dir/passwd" /etc/passwd
            mount --bind "$dir/group" /etc/group
            install -m 0755 "$bin" /usr/local/bin/coder-agent-auth
            install -m 0755 "$dir/coder" /usr/local/bin/coder
            install -d -o 4242 -g 4242 /home/caatest
            "$dir/per-boot.sh"
            for _ in $(seq 150); do
                [ "$(ls "$dir/report" | grep -vc tmp || true)" -ge 2 ] && break
                sleep 0.1
            done
            cp /var/log/coder-agent-main.log /var/log/coder-agent-dev.log "$dir/" 2>/dev/null || true
        ' _ "$dir" "$BIN" || rc=$?

    problems=()
    [ "$rc" = 0 ] || problems+=("the namespace script exited $rc")
    reports=("$dir"/report/agent.*[0-9])
    [ "${#reports[@]}" = 2 ] && [ -f "${reports[0]}" ] || problems+=("want 2 agent starts, found ${#reports[@]}")
    tokens=()
    for r in "${reports[@]}"; do
        [ -f "$r" ] || continue
        grep -qx 'args=agent' "$r" || problems+=("$(basename "$r"): not started as 'coder agent'")
        grep -qx 'user=caatest' "$r" || problems+=("$(basename "$r"): not running as caatest")
        grep -qx 'pwd=/home/caatest' "$r" || problems+=("$(basename "$r"): not in the home directory")
        grep -qx 'auth=token' "$r" || problems+=("$(basename "$r"): CODER_AGENT_AUTH is not token")
        grep -qx "url=$coder_url" "$r" || problems+=("$(basename "$r"): CODER_AGENT_URL is not $coder_url")
        t=$(sed -n 's/^token=//p' "$r")
        [ -n "$t" ] || problems+=("$(basename "$r"): no CODER_AGENT_TOKEN")
        tokens+=("$t")
    done
    if [ "${#tokens[@]}" = 2 ] && [ "${tokens[0]}" = "${tokens[1]}" ]; then
        problems+=("both agents got the same token")
    fi
    if [ "${#problems[@]}" = 0 ]; then
        passed=$((passed + 1))
        echo "$cloud: ok: main and dev started as caatest with distinct tokens (CODER_AGENT_AUTH=token)"
    else
        failed=$((failed + 1))
        echo "$cloud: FAILED:"
        printf '  %s\n' "${problems[@]}"
        for f in "$dir"/coder-agent-*.log "$dir"/sim.log; do
            [ -f "$f" ] && { echo "--- $f"; tail -20 "$f"; }
        done
    fi
    kill "$SIM_PID" 2>/dev/null || true
    wait "$SIM_PID" 2>/dev/null || true
    SIM_PID=""
done
# A pin that the download does not match (here: the curl stub fails, as a download that
# never comes): with no binary installed yet, nothing is installed and the script stops.
dir="$WORK/wrong-pin"
mkdir -p "$dir/fakebin"
printf '#!/bin/sh\nexit 7\n' >"$dir/fakebin/curl"
chmod 755 "$dir/fakebin/curl"
python3 - "$HERE/terraform/aws-multi-agent/coder-agents.sh.tftpl" "$dir/per-boot.sh" <<'PY'
import importlib.util, pathlib, sys
spec = importlib.util.spec_from_file_location("ct", pathlib.Path(sys.argv[1]).parents[2] / "check_terraform.py")
ct = importlib.util.module_from_spec(spec)
sys.modules["hcl2"] = type(sys)("hcl2")
spec.loader.exec_module(ct)
out = ct.render_template(pathlib.Path(sys.argv[1]).read_text(), {
    "access_url": "http://127.0.0.1:9/", "release_url": "http://127.0.0.1:9/none", "version": "0.1.0",
    "sha256_amd64": "0" * 64, "sha256_arm64": "0" * 64, "watch": "1m", "linux_user": "caatest"})
pathlib.Path(sys.argv[2]).write_text(out)
PY
chmod 755 "$dir/per-boot.sh"
rc=0
PATH="$dir/fakebin:$PATH" unshare --mount --propagation private bash -c '
    mount -t tmpfs none /usr/local/bin
    "$1/per-boot.sh" 2>"$1/stderr"
    rc=$?
    ls /usr/local/bin >"$1/installed"
    exit $rc' _ "$dir" || rc=$?
if [ "$rc" = 1 ] && grep -q "not the pinned SHA-256; not installed" "$dir/stderr" && [ ! -s "$dir/installed" ]; then
    passed=$((passed + 1))
    echo "wrong pin: ok: nothing installed, the script stopped (exit 1) and said why"
else
    failed=$((failed + 1))
    echo "wrong pin: FAILED: exit $rc, installed: $(cat "$dir/installed"), stderr: $(cat "$dir/stderr")"
fi

echo "per-boot script: $passed passed, $failed failed"
[ "$failed" = 0 ]
