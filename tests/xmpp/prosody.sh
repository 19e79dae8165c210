#!/usr/bin/env bash
# A private Prosody (Debian's prosody 0.12) on loopback for tests and benchmarks: plaintext
# c2s on 127.0.0.1:PORT, the virtual host xmpp.test, a multi-user chat component
# conference.xmpp.test (rooms made by the first join, unlocked, persistent), stream management
# (XEP-0198), offline storage of chat messages to a user not online; configuration, data, log
# and pid file in DIR; no systemd, nothing in
# /etc/prosody used. Needs root (run_as_root) and Debian's prosody.
#
#   prosody.sh install                       installs prosody if missing (no service started)
#   prosody.sh start DIR PORT [USER:PASS...] writes the configuration, registers the users
#                                            (on xmpp.test), starts it, returns when PORT listens
#   prosody.sh stop DIR                      stops it (by its pid) and waits for it to exit
set -euo pipefail
. "$(dirname "$0")/../lib/daemon.sh"

HOST=xmpp.test

usage() { echo "usage: $0 install | start DIR PORT [USER:PASS...] | stop DIR" >&2; exit 2; }

install() {
    command -v prosody >/dev/null && return 0
    apt_install_no_start prosody
}

wait_port() { # port
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "prosody.sh: nothing listens on 127.0.0.1:$1" >&2
    return 1
}

start() {
    local dir=$1 port=$2; shift 2
    mkdir -p "$dir/data"
    dir=$(realpath "$dir")
    cat > "$dir/prosody.cfg.lua" <<CFG
run_as_root = true
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
log = { info = "$dir/prosody.log"; error = "$dir/prosody.err" }
modules_enabled = { "roster"; "saslauth"; "disco"; "ping"; "smacks"; "offline"; "posix" }
modules_disabled = { "s2s"; "tls"; "http" }
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
c2s_ports = { $port }
c2s_interfaces = { "127.0.0.1" }
s2s_ports = { }
http_ports = { }
https_ports = { }
limits = { }
VirtualHost "$HOST"
Component "conference.$HOST" "muc"
    muc_room_locking = false
    -- Rooms outlive a restart (a join that makes a room is refused by the sink).
    muc_room_default_persistent = true
CFG
    local user
    for user in "$@"; do
        prosodyctl --config "$dir/prosody.cfg.lua" register "${user%%:*}" "$HOST" "${user#*:}" >/dev/null 2>&1
    done
    # (Without lua-unbound it says it uses its older DNS resolver: not needed on loopback.)
    prosody --config "$dir/prosody.cfg.lua" -D >/dev/null
    wait_port "$port"
}

stop() {
    stop_pidfile "$1/prosody.pid"
}

case ${1:-} in
    install) install ;;
    start) [ $# -ge 3 ] || usage; shift; start "$@" ;;
    stop) [ $# -eq 2 ] || usage; stop "$2" ;;
    *) usage ;;
esac
