#!/usr/bin/env bash
# The dequeue worker's speed: messages per second from swiftdrop into an XMPP room, and the
# time from the filter's 250 to a watcher in the room seeing the message (p50, p99), at 1 and
# 8 concurrent jobs; beside, in the same run, a bare client posting the same texts to the
# same room (each after the room echoed the one before, as the worker's sink waits): the
# ceiling.
#
#   bench/dequeue.sh        (root, Debian with prosody: tests/xmpp/prosody.sh install)
#
# Then the same with each message posted to the room and to a user (the watcher, directly),
# with the time until the last one is done (both posts confirmed by the server).
#
# COUNT (default 200) messages per run; CONCS (default "1 8"). swiftdrop stores into a Maildir
# (fsync), the worker claims with the local lock engine; all on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-200}
CONCS=${CONCS:-1 8}

bash tests/xmpp/prosody.sh install
cargo build --release --quiet --bin swiftdrop --example dequeue --example dequeue_bench
bin=$PWD/target/release
mkdir -p target
work=$(mktemp -d "$(realpath target)/swiftdrop-dequeue-bench.XXXXXX")
pids=()
cleanup() {
    set +e
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
    bash tests/xmpp/prosody.sh stop "$work/prosody"
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
xmpp_port=$(free_port); smtp_port=$(free_port)
bash tests/xmpp/prosody.sh start "$work/prosody" "$xmpp_port" bot:bot watcher:watcher bare:bare

export SWIFTDROP_DEFAULT_PATH="$work/maildir" SWIFTDROP_SERVER_RELAY=off RUST_LOG=warn
"$bin/swiftdrop" serve --listen "127.0.0.1:$smtp_port" 2>> "$work/swiftdrop.log" &
pids+=($!)
for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$smtp_port") 2>/dev/null && break; sleep 0.05; done

cat > "$work/rules.yml" <<YML
unmatched: done
xmpp:
  jabberid: bot@xmpp.test
  password: bot
  server: 127.0.0.1:$xmpp_port
  tls: false
  nick: swiftdrop
managers:
  - name: bench
    rules:
      - name: room
        actions: [xmpp:bench@conference.xmpp.test]
YML

printf '%-10s %6s %8s %10s %8s %8s\n' run count seconds "msg/s" "p50 ms" "p99 ms"
line() { # label, then the bench's line: mode count seconds rate p50 p99
    local label=$1; shift
    read -r _ count seconds rate p50 p99 <<< "$*"
    printf '%-10s %6s %8s %10s %8s %8s\n' "$label" "$count" "$seconds" "$rate" "$p50" "$p99"
}
line bare "$("$bin/examples/dequeue_bench" bare --xmpp-port "$xmpp_port" --count "$COUNT")"
for conc in $CONCS; do
    "$bin/examples/dequeue" --config "$work/rules.yml" --concurrency "$conc" 2>> "$work/dequeue.log" &
    worker=$!
    pids+=($worker)
    line "worker x$conc" "$("$bin/examples/dequeue_bench" pipeline --xmpp-port "$xmpp_port" \
        --smtp-port "$smtp_port" --count "$COUNT")"
    kill "$worker"; wait "$worker" || true
done
# Each message to the room and to a user (the watcher, directly): the worker's time until
# the last message is in done/ (both posts confirmed), from the first message sent.
sed 's|actions: \[xmpp:bench@conference.xmpp.test\]|actions: [xmpp:bench@conference.xmpp.test, xmpp:watcher@xmpp.test?message]|' \
    "$work/rules.yml" > "$work/rules-both.yml"
runs=$(wc -w <<< "$CONCS")
for conc in $CONCS; do
    before=$(find "$work/maildir/done" -type f | wc -l)
    "$bin/examples/dequeue" --config "$work/rules-both.yml" --concurrency "$conc" 2>> "$work/dequeue.log" &
    worker=$!
    pids+=($worker)
    start=$(date +%s.%N)
    line "room+user x$conc" "$("$bin/examples/dequeue_bench" pipeline --xmpp-port "$xmpp_port" \
        --smtp-port "$smtp_port" --count "$COUNT")"
    while [ "$(find "$work/maildir/done" -type f | wc -l)" -lt $(( before + COUNT )) ]; do sleep 0.05; done
    printf '%-10s %d messages to a room and a user in %s s\n' "" "$COUNT" \
        "$(python3 -c "print(f'{$(date +%s.%N) - $start:.2f}')")"
    kill "$worker"; wait "$worker" || true
done
runs=$(( runs * 2 ))
done_count=$(find "$work/maildir/done" -type f | wc -l)
echo "messages in done/: $done_count of $(( COUNT * runs ))"
echo "bare: one client posting and waiting for the room's echo of each message (the ceiling);"
echo "worker: SMTP 250 from swiftdrop -> claim -> rules -> the sink's post -> the watcher sees it"
