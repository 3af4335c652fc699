#!/usr/bin/env bash
# The real Session-Buddy 0.36.0 and Akosha 0.24.5 MCP servers, for `make test-counterparts`.
#
#   tests/counterparts/real_servers.sh build          build the cache once (idempotent)
#   tests/counterparts/real_servers.sh run CMD ARGS   build, start both servers on free loopback
#                                                     ports, run CMD with
#                                                     MAHAVISHNU_REAL_SESSION_BUDDY_URL and
#                                                     MAHAVISHNU_REAL_AKOSHA_URL set, stop them
#
# Both need Python >= 3.14, which Debian bookworm does not have: the script makes a Debian sid
# root with debootstrap (python3.14 from sid), one virtual environment per server inside it
# (pinned by the constraints files next to this script: the freeze of a working install), and
# runs each server in its own mount namespace (`unshare -m`) chrooted into that root with /proc,
# /dev and a fresh state folder (its HOME) bind-mounted. The servers share the host's network, so
# the tests reach them at 127.0.0.1. Needs root, debootstrap (installed with apt-get when
# missing), network access to Debian and PyPI for the first build (about 5 minutes, ~2.7 GB).
#
# The cache lives outside the repository: MAHAVISHNU_COUNTERPARTS_CACHE, by default
# ~/.cache/mahavishnu/counterparts. Remove it to rebuild from scratch.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${MAHAVISHNU_COUNTERPARTS_CACHE:-$HOME/.cache/mahavishnu/counterparts}"
ROOT="$CACHE/root"
SID_MIRROR="${MAHAVISHNU_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
READY_TIMEOUT="${MAHAVISHNU_COUNTERPARTS_READY_TIMEOUT:-120}"  # seconds a server may take to answer
PYTHON="${PYTHON:-python3}"

SB_PACKAGE="session-buddy==0.36.0"
AK_PACKAGE="akosha==0.24.5"

log() { printf 'real_servers: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

build_root() {
    [[ -f "$ROOT/.mahavishnu-root-ready" ]] && return 0
    [[ $EUID -eq 0 ]] || die "building the Debian sid root needs root (debootstrap, chroot)"
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap"
        apt-get install -y debootstrap >/dev/null
    fi
    mkdir -p "$CACHE"
    rm -rf "$ROOT.partial"
    log "debootstrap sid into $ROOT (about a minute)"
    debootstrap --variant=minbase --include=python3.14,python3.14-venv,ca-certificates \
        sid "$ROOT.partial" "$SID_MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $CACHE/debootstrap.log"
    finish_root "$ROOT.partial"
    rm -rf "$ROOT"
    mv "$ROOT.partial" "$ROOT"
}

finish_root() {  # DIR: what the root needs besides the packages
    local dir="$1"
    cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
    cp /etc/resolv.conf "$dir/etc/resolv.conf"
    mkdir -p "$dir/state" "$dir/opt/constraints"
    touch "$dir/.mahavishnu-root-ready"
}

in_root() {  # run a command chrooted into the root, in a private mount namespace
    unshare -m -- /bin/sh -c '
        root="$1"; shift
        mount --bind /proc "$root/proc" && mount --bind /dev "$root/dev" || exit 1
        exec chroot "$root" "$@"
    ' in_root "$ROOT" "$@"
}

build_venv() {  # NAME PACKAGE CONSTRAINTS: /opt/NAME in the root with PACKAGE installed
    local name="$1" package="$2" constraints="$3"
    [[ -f "$ROOT/opt/$name/.mahavishnu-venv-ready" ]] && return 0
    cp "$HERE/$constraints" "$ROOT/opt/constraints/$name.txt"
    rm -rf "$ROOT/opt/$name"
    log "installing $package into the root (under a minute)"
    in_root /usr/bin/python3.14 -m venv "/opt/$name" \
        || die "python3.14 -m venv /opt/$name failed"
    in_root /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root \
        PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "/opt/$name/bin/pip" install --quiet -c "/opt/constraints/$name.txt" "$package" \
        >"$CACHE/pip-$name.log" 2>&1 || die "pip install $package failed; see $CACHE/pip-$name.log"
    touch "$ROOT/opt/$name/.mahavishnu-venv-ready"
}

build() {
    build_root
    build_venv session-buddy "$SB_PACKAGE" session-buddy-0.36.0.freeze.txt
    build_venv akosha "$AK_PACKAGE" akosha-0.24.5.freeze.txt
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start_server() {  # NAME PORT STATE COMMAND...: start in the background; prints the pid
    local name="$1" port="$2" state="$3"; shift 3
    mkdir -p "$state"
    unshare -m -- /bin/sh -c '
        root="$1"; state="$2"; shift 2
        mount --bind /proc "$root/proc" && mount --bind /dev "$root/dev" \
            && mount --bind "$state" "$root/state" || exit 1
        exec chroot "$root" /bin/sh -c "cd /state && exec \"\$@\"" server "$@"
    ' start_server "$ROOT" "$state" /usr/bin/env -i PATH="/opt/$name/bin:/usr/bin:/bin" \
        HOME=/state FASTMCP_CHECK_FOR_UPDATES=off "$@" \
        >"$state.log" 2>&1 &
    echo $!
}

wait_ready() {  # NAME PID PORT LOG: until the MCP endpoint answers an initialize request
    local name="$1" pid="$2" port="$3" logfile="$4"
    "$PYTHON" - "$pid" "$port" "$READY_TIMEOUT" <<'EOF' || { tail -n 30 "$logfile" >&2; die "$name did not answer on port $port"; }
import json, os, sys, time, urllib.request

pid, port, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "real_servers.sh", "version": "1"}}}).encode()
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"the server process {pid} exited")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/mcp", data=body, headers={
        "content-type": "application/json", "accept": "application/json, text/event-stream"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            if answer.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)  # polling a port that has no readiness event of its own
sys.exit(f"no answer within {limit:g} s")
EOF
}

stop_server() {  # PID
    local pid="$1"
    [[ -n "$pid" && "$pid" != 0 ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

run() {
    [[ $# -gt 0 ]] || die "usage: $0 run COMMAND [ARGS...]"
    build
    local states sb_port ak_port
    states="$(mktemp -d "$CACHE/state.XXXXXX")"
    SB_PID="" AK_PID=""  # global: the EXIT trap runs after this function's locals are gone
    trap 'stop_server "$SB_PID"; stop_server "$AK_PID"' EXIT
    trap 'exit 130' INT TERM
    sb_port="$(free_port)"
    ak_port="$(free_port)"
    SB_PID="$(start_server session-buddy "$sb_port" "$states/session-buddy" \
        ONEIRIC_MCP_HTTP_PORT="$sb_port" MAHAVISHNU__LLAMA_SERVER_URL=http://127.0.0.1:9/v1 \
        session-buddy server start)"
    AK_PID="$(start_server akosha "$ak_port" "$states/akosha" \
        akosha start --host 127.0.0.1 --port "$ak_port" --mode lite)"
    wait_ready session-buddy "$SB_PID" "$sb_port" "$states/session-buddy.log"
    wait_ready akosha "$AK_PID" "$ak_port" "$states/akosha.log"
    log "Session-Buddy 0.36.0 at http://127.0.0.1:$sb_port/mcp (log $states/session-buddy.log)"
    log "Akosha 0.24.5 at http://127.0.0.1:$ak_port/mcp (log $states/akosha.log)"
    MAHAVISHNU_REAL_SESSION_BUDDY_URL="http://127.0.0.1:$sb_port/mcp" \
        MAHAVISHNU_REAL_AKOSHA_URL="http://127.0.0.1:$ak_port/mcp" "$@"
}

case "${1:-}" in
    build) build ;;
    run) shift; run "$@" ;;
    *) die "usage: $0 build | run COMMAND [ARGS...]" ;;
esac
