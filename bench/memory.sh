#!/usr/bin/env bash
# swiftdrop's memory under the loads issue 26 names, each beside its target, with a release
# build and the default max_memory (192 MiB):
#   idle     10 000 connections that got their greeting and stay idle: RSS (target <= 100 MB);
#   burst    32 clients at once, each a 20 MB message stored into a Maildir and relayed to
#            smtp-sink: how many were accepted (target: all; a session waits for room in
#            max_memory rather than refuse) and the peak RSS (target <= max_memory + 32 MiB);
#   one      one 50 MiB message into a Maildir: peak RSS (target <= 64 MiB).
#
#   bench/memory.sh        (root or a user allowed 11 000 open files; Debian with postfix for
#                          smtp-sink, python3)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v smtp-sink >/dev/null || { echo "needs Postfix's smtp-sink: apt-get install postfix" >&2; exit 1; }
cargo build --release --quiet --bin swiftdrop
bin=$PWD/target/release/swiftdrop
mkdir -p target
work=$(mktemp -d "$(realpath target)/swiftdrop-memory.XXXXXX")
chmod 755 "$work"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 20000

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
rss() { awk -v k="$2" '$1 == k":" { printf "%.1f MB", $2 / 1024 }' "/proc/$1/status"; }
sink_port=$(free_port)
smtp-sink -u nobody "127.0.0.1:$sink_port" 1024 &
pids+=($!)
# serve NAME: a fresh swiftdrop on a free port, its Maildir and spool in the work folder.
serve() {
    local port
    port=$(free_port)
    mkdir -p "$work/$1/spool"
    SWIFTDROP_OURS_RECIPIENTS=ours@example.com SWIFTDROP_OURS_PATH="$work/$1/maildir" \
        SWIFTDROP_SERVER_RELAY="127.0.0.1:$sink_port" SWIFTDROP_SERVER_SPOOL_DIR="$work/$1/spool" \
        SWIFTDROP_SERVER_MAX_CONNECTIONS=11000 RUST_LOG=warn \
        "$bin" serve --listen "127.0.0.1:$port" 2> "$work/$1.log" &
    pids+=($!)
    server=$! server_port=$port
    wait_port "$port"
}

serve idle
python3 bench/memory.py idle "$server_port" 10000 5 > "$work/idle.out" &
client=$!
for _ in $(seq 1 600); do grep -q greeted "$work/idle.out" && break; sleep 0.1; done
echo "idle:  $(cat "$work/idle.out") of 10000 connections, RSS $(rss "$server" VmRSS) (target <= 100 MB)"
wait "$client"

serve burst
result=$(python3 bench/memory.py burst "$server_port" 32 20)
echo "burst: $result, peak RSS $(rss "$server" VmHWM) (target: all, <= 224 MiB)"

serve one
result=$(python3 bench/memory.py one "$server_port" 50)
echo "one:   50 MiB message, $result, peak RSS $(rss "$server" VmHWM) (target <= 64 MiB)"
