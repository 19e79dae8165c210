#!/usr/bin/env bash
# Throughput into a real OpenStack Swift, native API and S3 API, against a bare PUT client
# measured in the same run: smtp-source -> Postfix smtpd (smtpd_proxy_filter, speed_adjust)
# -> swiftdrop -> Swift, versus examples/bare_put.rs doing only the PUTs at equal concurrency.
#
#   bench/swift-store.sh [RUNS]        (root, Debian; RUNS per cell, default 1)
#
# Environment: SIZES (bytes, default "1024 102400"; past 8 MiB a message is streamed), CONCS
# (default "1 8 32"), COUNT (messages per run, default 200), BENCH_PORT (Swift proxy port,
# default 28080), BENCH_BIN (a swiftdrop binary to measure instead of building this tree's:
# an earlier build, for a before-and-after table in one sitting).
#
# Prints messages/s (median of RUNS) for each API, size and concurrency, the ratio
# swiftdrop / bare PUT, the CPU time per message in microseconds of the whole machine in
# each run (all processes: Swift's, Postfix's, the client's, swiftdrop's) and of Swift's
# servers alone, and of swiftdrop itself, and swiftdrop's peak RSS. Every run checks that every message became an object under cur/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-1}
COUNT=${COUNT:-200}
PORT=${BENCH_PORT:-28080}

command -v smtp-source >/dev/null || { echo "needs Postfix's smtp-source: apt-get install postfix" >&2; exit 1; }
bash tests/swift/swift-aio.sh install
cargo build --release --quiet --bin swiftdrop --example bare_put
bin=$PWD/target/release/swiftdrop
[ -n "${BENCH_BIN:-}" ] && bin=$(realpath "$BENCH_BIN")
bare=$PWD/target/release/examples/bare_put
work=$(mktemp -d "$PWD/target/swift-bench.XXXXXX")
chmod 755 "$work"
pids=()
cleanup() {
    # What went wrong, if anything: the filters' last errors and warnings.
    grep -hE "WARN|ERROR|panicked" "$work/native.log" "$work/s3.log" 2>/dev/null | tail -5 >&2 || true
    bash tests/postfix/private-postfix.sh stop "$work/postfix" || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    bash tests/swift/swift-aio.sh stop "$work/swift" || true
    rm -rf "$work"
}
trap cleanup EXIT
# Room for large SIZES: every message is stored three times (bare, native, S3).
SWIFT_AIO_SIZE=${SWIFT_AIO_SIZE:-8G} bash tests/swift/swift-aio.sh start "$work/swift" "$PORT"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -A filter front pid
for api in native s3; do
    filter[$api]=$(free_port); front[$api]=$(free_port)
done

common=(SWIFTDROP_SERVER_RELAY=off SWIFTDROP_SERVER_MAX_CONNECTIONS=512 RUST_LOG=warn
    SWIFTDROP_DEFAULT_RECIPIENTS='*' SWIFTDROP_DEFAULT_CREATE_CONTAINER=yes)
env "${common[@]}" SWIFTDROP_DEFAULT_AUTHURL="http://127.0.0.1:$PORT/auth/v1.0" \
    SWIFTDROP_DEFAULT_USER=test:tester SWIFTDROP_DEFAULT_KEY=testing SWIFTDROP_DEFAULT_CONTAINER=native \
    "$bin" serve --listen "127.0.0.1:${filter[native]}" 2> "$work/native.log" &
pid[native]=$!; pids+=("${pid[native]}")
env "${common[@]}" SWIFTDROP_DEFAULT_BACKEND=s3 SWIFTDROP_DEFAULT_ENDPOINT="http://127.0.0.1:$PORT" \
    SWIFTDROP_DEFAULT_ALLOW_HTTP=yes SWIFTDROP_DEFAULT_ACCESS_KEY_ID=test:tester \
    SWIFTDROP_DEFAULT_SECRET_ACCESS_KEY=testing SWIFTDROP_DEFAULT_BUCKET=swiftdrop-s3 \
    "$bin" serve --listen "127.0.0.1:${filter[s3]}" 2> "$work/s3.log" &
pid[s3]=$!; pids+=("${pid[s3]}")
bash tests/postfix/private-postfix.sh start "$work/postfix" \
    "${front[native]}:${filter[native]}" "${front[s3]}:${filter[s3]}"

# Where each filter stores (an S3 bucket's name has at least three characters).
declare -A container=([native]=native [s3]=swiftdrop-s3)
# Objects under cur/ in a container, through the native API.
stored() {
    local token url
    token=$(curl -sf -D - -o /dev/null -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' \
        "http://127.0.0.1:$PORT/auth/v1.0" | tr -d '\r' | sed -n 's/^[Xx]-[Aa]uth-[Tt]oken: //p')
    curl -sf -I -H "X-Auth-Token: $token" "http://127.0.0.1:$PORT/v1/AUTH_test/$1" | tr -d '\r' \
        | sed -n 's/^[Xx]-[Cc]ontainer-[Oo]bject-[Cc]ount: //p'
}
now() { date +%s%N; }
# CPU time (user + system, all processes) the machine has spent so far, in microseconds
# (USER_HZ = 100), and that of one process.
# (user, nice, system, irq, softirq: not steal, the time other guests of the host had).
cpu_all() { awk '/^cpu / { printf "%.0f\n", ($2 + $3 + $4 + $7 + $8) * 10000 }' /proc/stat; }
cpu_us() { awk '{ printf "%.0f\n", ($14 + $15) * 10000 }' "/proc/$1/stat"; }
# That of Swift's servers (every process started with this run's Swift configuration, and
# the memcached its proxy uses).
cpu_swift() {
    local total=0 p
    for p in $(pgrep -f "$work/swift/") $(cat "$work"/swift/pids/memcached-* 2>/dev/null); do
        total=$((total + $(cpu_us "$p" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
smtp_rate() { # api size conc
    local start end
    start=$(now)
    smtp-source -s "$3" -m "$COUNT" -l "$2" -f bench@example.org -t rcpt@example.com \
        "127.0.0.1:${front[$1]}" > "$work/source.out" 2>&1 || { cat "$work/source.out" >&2; return 1; }
    end=$(now)
    if [ -s "$work/source.out" ]; then cat "$work/source.out" >&2; return 1; fi
    awk -v n="$COUNT" -v ns=$((end - start)) 'BEGIN { printf "%.0f", n / (ns / 1e9) }'
}
bare_rate() { # api size conc
    if [ "$1" = native ]; then
        "$bare" native "http://127.0.0.1:$PORT/auth/v1.0" test:tester testing bare "$2" "$COUNT" "$3"
    else
        "$bare" s3 "http://127.0.0.1:$PORT" test:tester testing bare "$2" "$COUNT" "$3"
    fi
}
# The bare client writes into its own container, so that counting ours stays exact.
token=$(curl -sf -D - -o /dev/null -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' \
    "http://127.0.0.1:$PORT/auth/v1.0" | tr -d '\r' | sed -n 's/^[Xx]-[Aa]uth-[Tt]oken: //p')
curl -sf -X PUT -H "X-Auth-Token: $token" "http://127.0.0.1:$PORT/v1/AUTH_test/bare" >/dev/null
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# CPU per message: of the whole machine, then of Swift's servers alone, in the bare run and
# in swiftdrop's; then of swiftdrop itself.
printf '%-7s %-7s %5s %11s %11s %6s %9s %9s %9s %9s %9s\n' api size conc "bare PUT/s" "sd msg/s" \
    ratio "bare cpu" "of Swift" "sd cpu" "of Swift" "of sd"
for api in native s3; do
    for size in ${SIZES:-1024 102400}; do
        for conc in ${CONCS:-1 8 32}; do
            b=() d=()
            bare_cpu=0 bare_swift=0 sd_cpu=0 sd_swift=0 own_cpu=0
            for _ in $(seq 1 "$RUNS"); do
                cpu=$(cpu_all); swift=$(cpu_swift)
                b+=("$(bare_rate "$api" "$size" "$conc")")
                bare_cpu=$((bare_cpu + $(cpu_all) - cpu)); bare_swift=$((bare_swift + $(cpu_swift) - swift))
                before=$(stored "${container[$api]}")
                cpu=$(cpu_all); swift=$(cpu_swift); own=$(cpu_us "${pid[$api]}")
                d+=("$(smtp_rate "$api" "$size" "$conc")")
                sd_cpu=$((sd_cpu + $(cpu_all) - cpu)); sd_swift=$((sd_swift + $(cpu_swift) - swift))
                own_cpu=$((own_cpu + $(cpu_us "${pid[$api]}") - own))
                after=$(stored "${container[$api]}")
                # The container count is updated asynchronously: allow a moment.
                for _ in 1 2 3 4 5 6 7 8 9 10; do
                    [ $((after - before)) -ge "$COUNT" ] && break
                    sleep 0.5; after=$(stored "${container[$api]}")
                done
                if [ $((after - before)) -lt "$COUNT" ]; then
                    echo "swiftdrop ($api) stored $((after - before)) of $COUNT messages" >&2; exit 1
                fi
            done
            bm=$(median "${b[@]}"); dm=$(median "${d[@]}")
            n=$((RUNS * COUNT))
            printf '%-7s %-7s %5s %11s %11s %6.2f %9s %9s %9s %9s %9s\n' "$api" "$size" "$conc" "$bm" "$dm" \
                "$(awk -v a="$dm" -v b="$bm" 'BEGIN { print a / b }')" \
                $((bare_cpu / n)) $((bare_swift / n)) $((sd_cpu / n)) $((sd_swift / n)) $((own_cpu / n))
        done
    done
done
for api in native s3; do
    echo "swiftdrop ($api) peak RSS: $(awk '/VmHWM/ { print $2 " " $3 }' "/proc/${pid[$api]}/status")"
done
