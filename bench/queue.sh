#!/usr/bin/env bash
# The queue's throughput and wake-up latency, each beside a reference measured in the same run.
#
#   bench/queue.sh            (root, Debian; installs Swift and Redis when missing)
#
# Throughput: claims + finishes per second with 1, 4 and 8 worker processes
# (examples/queue_worker.rs, each claiming, reading and finishing one message at a time) on a
# Maildir (local lock) and on Swift (Redis lock), beside the bare rate of the same store doing
# what durability requires of any queue (examples/queue_bench.rs: cur/ listed once, then two
# moves per message, cur/ -> processing/ -> done/, with a read between them; on a Maildir each
# move a rename with the fsyncs of the file and both folders, on Swift a copy and a DELETE),
# at the same concurrency, with no lease, metadata or checks. Store requests per message are
# counted by the workers (queue_worker --report). The same again with dedup_window = 0 shows
# what the duplicate index costs (one entry per finish).
#
# Depth: the same with 4 workers over the first DEPTH_SAMPLE messages of a queue 100 deep and
# of one DEEP deep (Maildir 100000, Swift SWIFT_DEEP), with requests per message and the
# workers' peak resident memory.
#
# Latency: the time from swiftdrop serve's 250 to a waiting worker's claim, p50 and p99, over
# LAT_COUNT messages sent one at a time, each once the worker finished the one before, so that
# it waits (Maildir: inotify; Swift: Redis announcements).
#
# Environment: MAILDIR_COUNT (default 2000), SWIFT_COUNT (default 400), WORKERS (default
# "1 4 8"), LAT_COUNT (default 200), DEEP (default 100000), SWIFT_DEEP (default 20000),
# DEPTH_SAMPLE (default 2000), BENCH_PORT (Swift proxy port, default 28080), PARTS (default
# "throughput depth latency": any of them alone runs only that part).
set -euo pipefail
cd "$(dirname "$0")/.."
MAILDIR_COUNT=${MAILDIR_COUNT:-2000}
SWIFT_COUNT=${SWIFT_COUNT:-400}
WORKERS=${WORKERS:-"1 4 8"}
LAT_COUNT=${LAT_COUNT:-200}
DEEP=${DEEP:-100000}
SWIFT_DEEP=${SWIFT_DEEP:-20000}
DEPTH_SAMPLE=${DEPTH_SAMPLE:-2000}
PARTS=${PARTS:-"throughput depth latency"}
PORT=${BENCH_PORT:-28080}

bash tests/swift/swift-aio.sh install
command -v redis-server >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
}
cargo build --release --quiet --bin swiftdrop --example queue_worker --example queue_bench
bin=$PWD/target/release/swiftdrop
worker=$PWD/target/release/examples/queue_worker
helper=$PWD/target/release/examples/queue_bench
work=$(mktemp -d "$PWD/target/queue-bench.XXXXXX")
chmod 755 "$work" # Swift's servers run as the swift user
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    bash tests/swift/swift-aio.sh stop "$work/swift" || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
bash tests/swift/swift-aio.sh start "$work/swift" "$PORT"
redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --dir "$work" \
    --logfile "$work/redis.log" --daemonize no &
pids+=($!)
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.05; done

common=(RUST_LOG=warn SWIFTDROP_SERVER_RELAY=off SWIFTDROP_QUEUE_LEASE=60s
    SWIFTDROP_QUEUE_POLL_INTERVAL=5s SWIFTDROP_DEFAULT_RECIPIENTS='*')
# queue_env STORE NAME: the SWIFTDROP_* variables of a fresh destination called NAME.
queue_env() {
    case $1 in
        maildir) echo "SWIFTDROP_DEFAULT_PATH=$work/$2" ;;
        swift) echo "SWIFTDROP_DEFAULT_AUTHURL=http://127.0.0.1:$PORT/auth/v1.0 SWIFTDROP_DEFAULT_USER=test:tester" \
            "SWIFTDROP_DEFAULT_KEY=testing SWIFTDROP_DEFAULT_CONTAINER=$2 SWIFTDROP_DEFAULT_CREATE_CONTAINER=yes" \
            "SWIFTDROP_QUEUE_LOCK=redis://127.0.0.1:$redis_port/0" ;;
    esac
}

# W workers over the first SAMPLE of DEPTH messages: prints "<messages per second>
# <store requests per message> <peak RSS of a worker, MiB>".
workers_rate() { # store depth workers [sample]
    local store=$1 depth=$2 n=$3 sample=${4:-$2} name env start
    name="w$n-$RANDOM"
    read -ra env <<<"$(queue_env "$store" "$name")"
    env "${common[@]}" "${env[@]}" "$helper" load "$depth" 1024 16
    local each=$(( (sample + n - 1) / n ))
    local outs=()
    for i in $(seq 1 "$n"); do
        env "${common[@]}" "${env[@]}" "${extra[@]}" "$worker" --read --stamp --report --count "$each" \
            --idle-exit 2s >"$work/$name.$i" &
        outs+=($!)
    done
    for pid in "${outs[@]}"; do wait "$pid"; done
    python3 - "$work/$name" "$n" <<'PY'
import glob, sys
finished, claimed, requests, rss = [], [], 0, 0
for path in glob.glob(sys.argv[1] + ".*"):
    for line in open(path):
        words = line.split()
        if words[0] == "finished":
            finished.append(int(words[-1].lstrip("@")))
        elif words[0] == "claimed":
            claimed.append(int(words[-1].lstrip("@")))
        elif words[0] == "requests":
            requests += int(words[1])
        elif words[0] == "peak_rss_kib":
            rss = max(rss, int(words[1]))
seconds = (max(finished) - min(claimed)) / 1000
print(f"{len(finished) / seconds:.0f} {requests / len(finished):.1f} {rss / 1024:.0f}")
PY
}

extra=() # more variables for the workers of workers_rate

# The bare move rate at concurrency N over COUNT messages: prints moves per second.
bare_rate() { # store count concurrency
    local store=$1 count=$2 n=$3 name env
    name="b$n-$RANDOM"
    read -ra env <<<"$(queue_env "$store" "$name")"
    env "${common[@]}" "${env[@]}" "$helper" load "$count" 1024 16
    env "${common[@]}" "${env[@]}" "$helper" bare "$n" "$count" | python3 -c 'import sys; m, s = sys.stdin.read().split(); print(f"{int(m) / float(s):.0f}")'
}

if [[ " $PARTS " == *" throughput "* ]]; then
    echo "== claims + finishes per second (1 KiB messages; worker reads each message) =="
    echo "(no dedup: the same with dedup_window = 0, no duplicate index entry per finish)"
    printf "%-8s %7s %10s %12s %6s %9s %15s %6s\n" store workers "bare msg/s" "queue msg/s" ratio "req/msg" \
        "no dedup msg/s" ratio
    for store in maildir swift; do
        count=$MAILDIR_COUNT
        [ "$store" = swift ] && count=$SWIFT_COUNT
        for n in $WORKERS; do
            bare=$(bare_rate "$store" "$count" "$n")
            read -r queue requests _ <<<"$(workers_rate "$store" "$count" "$n")"
            extra=(SWIFTDROP_QUEUE_DEDUP_WINDOW=0)
            read -r plain _ <<<"$(workers_rate "$store" "$count" "$n")"
            extra=()
            printf "%-8s %7s %10s %12s %6s %9s %15s %6s\n" "$store" "$n" "$bare" "$queue" \
                "$(python3 -c "print(f'{$queue / $bare:.2f}')")" "$requests" "$plain" \
                "$(python3 -c "print(f'{$plain / $bare:.2f}')")"
        done
    done
fi
if [[ " $PARTS " == *" depth "* ]]; then
    echo "== claims + finishes at depth: 4 workers, the first $DEPTH_SAMPLE messages (all of a shallow queue) =="
    printf "%-8s %8s %12s %9s %14s %10s\n" store depth "queue msg/s" "req/msg" "peak RSS MiB" "deep/shallow"
    for store in maildir swift; do
        deep=$DEEP
        [ "$store" = swift ] && deep=$SWIFT_DEEP
        read -r shallow_rate requests rss <<<"$(workers_rate "$store" 100 4)"
        printf "%-8s %8s %12s %9s %14s %10s\n" "$store" 100 "$shallow_rate" "$requests" "$rss" -
        read -r deep_rate requests rss <<<"$(workers_rate "$store" "$deep" 4 "$DEPTH_SAMPLE")"
        printf "%-8s %8s %12s %9s %14s %10s\n" "$store" "$deep" "$deep_rate" "$requests" "$rss" \
            "$(python3 -c "print(f'{$deep_rate / $shallow_rate:.2f}')")"
    done
fi
[[ " $PARTS " == *" latency "* ]] || exit 0

# Latency: one waiting worker, messages sent through swiftdrop serve one at a time.
echo "== from the filter's 250 to a waiting worker's claim ($LAT_COUNT messages) =="
for store in maildir swift; do
    read -ra env <<<"$(queue_env "$store" "lat-$RANDOM")"
    port=$(free_port)
    env "${common[@]}" "${env[@]}" "$bin" serve --listen "127.0.0.1:$port" 2>"$work/serve-$store.log" &
    serve=$!; pids+=("$serve")
    env "${common[@]}" "${env[@]}" "$worker" --stamp --idle-exit 10s >"$work/lat-$store.out" &
    w=$!; pids+=("$w")
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.05; done
    sleep 1 # the worker is waiting
    python3 - "$port" "$LAT_COUNT" "$work/lat-$store.out" >"$work/sent-$store" <<'PY'
import random, smtplib, sys, time
port, count, worker_out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def finished(name):
    with open(worker_out) as f:
        return any(l.startswith(f"finished {name}") for l in f)
s = smtplib.SMTP("127.0.0.1", port)
for i in range(count):
    s.mail("bench@example.org")
    s.rcpt("ops@example.com")
    code, msg = s.data(f"Subject: latency {i}\r\n\r\nbody\r\n")
    at = time.time() * 1000
    assert code == 250, (code, msg)
    name = msg.decode().split("stored as cur/")[1].split()[0].rstrip(";")
    print(name, int(at), flush=True)
    # The next message goes to a waiting worker, not into a backlog: this measures the
    # wake-up and the claim, not the worker's throughput.
    give_up = time.time() + 30
    while not finished(name) and time.time() < give_up:
        time.sleep(0.005)
    time.sleep(random.uniform(0.02, 0.08))
s.quit()
PY
    wait "$w" || true
    kill "$serve"; wait "$serve" 2>/dev/null || true
    python3 - "$work/sent-$store" "$work/lat-$store.out" "$store" <<'PY'
import sys
sent = dict(l.split() for l in open(sys.argv[1]))
claimed = {}
for l in open(sys.argv[2]):
    parts = l.split()
    if parts[0] == "claimed":
        claimed[parts[1]] = int(parts[-1].lstrip("@"))
lat = sorted(claimed[n] - int(t) for n, t in sent.items() if n in claimed)
missing = len(sent) - len(lat)
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"{sys.argv[3]:<8} p50 {p(0.5)} ms  p99 {p(0.99)} ms  max {lat[-1]} ms  (claimed {len(lat)} of {len(sent)})")
if missing:
    sys.exit(f"{missing} messages were never claimed")
PY
done
