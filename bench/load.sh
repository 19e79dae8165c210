#!/usr/bin/env bash
# Load and faults through a real Postfix (smtpd_proxy_filter) into swiftdrop, with smtp-sink
# as the SMTP ceiling measured in the same invocation.
#
#   bench/load.sh        (root, Debian with postfix, python3, and swift for the Swift part)
#
# SESSIONS (default 500) SMTP sessions stay busy for DURATION seconds (default 60), each
# sending unique messages of 0.8 to 120 KB one after another (bench/load.py), through one
# Postfix front smtpd per target:
#   sink      the front hands to smtp-sink: the ceiling of Postfix and the load generator;
#   maildir   swiftdrop storing into a Maildir (fsync), then the same with SIGKILL of
#             swiftdrop halfway through and a restart one second later;
#   swift     the same into a container of a private Swift (tests/swift/swift-aio.sh).
# After each run every message answered 250 is looked up: it must be stored exactly once,
# its bytes' SHA-256 as sent (the check fails the script otherwise). Printed per run:
# messages/s answered 250 (over the time until the last message ended), replies by code,
# latency p50/p99 (connecting included), lost / damaged / stored twice /
# stored without a 250 (a SIGKILL between the store's confirmation and the reply, or a
# client that gave up: the documented duplicate, which the queue's duplicate check catches),
# and swiftdrop's peak RSS against its max_memory.
# STORES (default "maildir swift") and KILL (default yes) choose the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-500}
DURATION=${DURATION:-60}
STORES=${STORES:-maildir swift}
KILL=${KILL:-yes}
MAX_MEMORY=${MAX_MEMORY:-192MiB}

command -v smtp-source >/dev/null || { echo "needs Postfix: apt-get install postfix" >&2; exit 1; }
cargo build --release --quiet
bin=$PWD/target/release/swiftdrop
mkdir -p target
work=$(mktemp -d "$(realpath target)/swiftdrop-load.XXXXXX")
chmod 755 "$work"
pids=()
sd_pid=
swift_port=
cleanup() {
    set +e
    for pid in "${pids[@]}" $sd_pid; do kill "$pid" 2>/dev/null; done
    for pid in "${pids[@]}" $sd_pid; do wait "$pid" 2>/dev/null; done
    bash tests/postfix/private-postfix.sh stop "$work/postfix"
    [ -n "$swift_port" ] && bash tests/swift/swift-aio.sh stop "$work/swift" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink_port=$(free_port); filter_port=$(free_port); front_sink=$(free_port); front_sd=$(free_port)

smtp-sink -u nobody "127.0.0.1:$sink_port" 1024 &
pids+=($!)

# swiftdrop on filter_port with the destination variables given; sets sd_pid.
start_swiftdrop() {
    env "$@" SWIFTDROP_SERVER_MAX_CONNECTIONS=1000 SWIFTDROP_SERVER_MAX_MEMORY="$MAX_MEMORY" \
        RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$filter_port" >> "$work/swiftdrop.log" 2>&1 &
    sd_pid=$!
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$filter_port") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "swiftdrop did not start:" >&2; tail "$work/swiftdrop.log" >&2; exit 1
}
stop_swiftdrop() { kill "$sd_pid" 2>/dev/null || true; wait "$sd_pid" || true; sd_pid=; }
peak_rss() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$sd_pid/status"; }

# One smtpd per session (the limit is also the listen backlog); loopback is exempt from
# anvil's per-client limits (mynetworks).
bash tests/postfix/private-postfix.sh start "$work/postfix" "$front_sink:$sink_port" \
    "$front_sd:$filter_port" --process-limit "$((SESSIONS + 50))"

printf '%-14s %8s %9s %8s %8s %5s %5s %5s %6s %8s  %s\n' run "250s/s" "MB/s" "p50 ms" "p99 ms" \
    lost dmgd twice no250 "RSS MB" replies
# One run: name, front port, seconds, checker arguments...; kills swiftdrop halfway when
# the name ends in +kill.
run() {
    local name=$1 port=$2 seconds=$3; shift 3
    local record="$work/$name.jsonl" killer=
    if [[ $name == *+kill ]]; then
        (sleep "$((seconds / 2))"; kill -9 "$sd_pid") &
        killer=$!
        pids+=("$killer")
    fi
    python3 bench/load.py send "$port" "$SESSIONS" "$seconds" "$record" &
    local sender=$!
    pids+=("$sender")
    if [ -n "$killer" ]; then
        wait "$killer"
        wait "$sd_pid" 2>/dev/null || true
        sleep 1
        start_swiftdrop "${env[@]}"
    fi
    wait "$sender"
    local rss=-
    [ -n "$sd_pid" ] && rss=$(peak_rss)
    local figures
    figures=$(python3 bench/load.py check "$record" "$@") || { echo "$name: $figures" >&2; exit 1; }
    python3 - "$name" "$rss" "$figures" <<'PY'
import json, sys
name, rss, f = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
seconds = f["elapsed"]
print(f"{name:<14} {f['answered_250'] / seconds:8.1f} {f['bytes_250'] / seconds / 1e6:9.2f} "
      f"{f['p50_ms']:8} {f['p99_ms']:8} {f['lost_250']:5} {f['damaged']:5} "
      f"{f['stored_twice_after_250']:5} {f['stored_without_250']:6} {rss:>8}  {f['replies']}")
PY
}

run sink "$front_sink" "$DURATION" none
for store in $STORES; do
    case $store in
        maildir)
            env=(SWIFTDROP_DEFAULT_PATH="$work/maildir")
            check=(maildir "$work/maildir")
            ;;
        swift)
            swift_port=$(free_port)
            bash tests/swift/swift-aio.sh start "$work/swift" "$swift_port" > "$work/swift.log" 2>&1
            env=(SWIFTDROP_OPS_RECIPIENTS='*' SWIFTDROP_OPS_AUTHURL="http://127.0.0.1:$swift_port/auth/v1.0"
                 SWIFTDROP_OPS_USER=test:tester SWIFTDROP_OPS_KEY=testing
                 SWIFTDROP_OPS_CONTAINER=load SWIFTDROP_OPS_CREATE_CONTAINER=yes)
            check=(swift "http://127.0.0.1:$swift_port/auth/v1.0" load)
            ;;
        *) echo "unknown store $store" >&2; exit 2 ;;
    esac
    start_swiftdrop "${env[@]}"
    run "$store" "$front_sd" "$DURATION" "${check[@]}"
    if [ "$KILL" = yes ]; then
        run "$store+kill" "$front_sd" "$((DURATION / 2))" "${check[@]}"
    fi
    stop_swiftdrop
    if [ "$store" = swift ]; then
        bash tests/swift/swift-aio.sh stop "$work/swift" >/dev/null 2>&1; swift_port=
    fi
done
echo "sessions: $SESSIONS; max_memory: $MAX_MEMORY; RSS is swiftdrop's peak (VmHWM, after a kill: the restarted process's)"
echo "errors and warnings logged by swiftdrop: $(grep -c -E 'ERROR|WARN' "$work/swiftdrop.log" || true)"
