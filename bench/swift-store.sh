#!/usr/bin/env bash
# Throughput into a real OpenStack Swift, native API and S3 API, against a bare PUT client
# measured in the same run: smtp-source -> Postfix smtpd (smtpd_proxy_filter, speed_adjust)
# -> swiftdrop -> Swift, versus examples/bare_put.rs doing only the PUTs at equal concurrency.
#
#   bench/swift-store.sh [RUNS]        (root, Debian; RUNS per cell, default 1)
#
# Environment: SIZES (bytes, default "1024 102400"), CONCS (default "1 8 32"), COUNT
# (messages per run, default 200), BENCH_PORT (Swift proxy port, default 28080).
#
# Prints messages/s (median of RUNS) for each API, size and concurrency, the ratio
# swiftdrop / bare PUT, and swiftdrop's peak RSS. Every run checks that every message
# became an object under cur/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-1}
COUNT=${COUNT:-200}
PORT=${BENCH_PORT:-28080}

command -v smtp-source >/dev/null || { echo "needs Postfix's smtp-source: apt-get install postfix" >&2; exit 1; }
bash tests/swift/swift-aio.sh install
cargo build --release --quiet --bin swiftdrop --example bare_put
bin=$PWD/target/release/swiftdrop
bare=$PWD/target/release/examples/bare_put
work=$(mktemp -d "$PWD/target/swift-bench.XXXXXX")
chmod 755 "$work"
pids=()
cleanup() {
    bash tests/postfix/private-postfix.sh stop "$work/postfix" || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    bash tests/swift/swift-aio.sh stop "$work/swift" || true
    rm -rf "$work"
}
trap cleanup EXIT
bash tests/swift/swift-aio.sh start "$work/swift" "$PORT"

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
    SWIFTDROP_DEFAULT_SECRET_ACCESS_KEY=testing SWIFTDROP_DEFAULT_BUCKET=s3 \
    "$bin" serve --listen "127.0.0.1:${filter[s3]}" 2> "$work/s3.log" &
pid[s3]=$!; pids+=("${pid[s3]}")
bash tests/postfix/private-postfix.sh start "$work/postfix" \
    "${front[native]}:${filter[native]}" "${front[s3]}:${filter[s3]}"

# Objects under cur/ in a container, through the native API.
stored() {
    local token url
    token=$(curl -sf -D - -o /dev/null -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' \
        "http://127.0.0.1:$PORT/auth/v1.0" | tr -d '\r' | sed -n 's/^[Xx]-[Aa]uth-[Tt]oken: //p')
    curl -sf -I -H "X-Auth-Token: $token" "http://127.0.0.1:$PORT/v1/AUTH_test/$1" | tr -d '\r' \
        | sed -n 's/^[Xx]-[Cc]ontainer-[Oo]bject-[Cc]ount: //p'
}
now() { date +%s%N; }
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

printf '%-7s %-7s %5s %14s %16s %7s\n' api size conc "bare PUT/s" "swiftdrop msg/s" ratio
for api in native s3; do
    for size in ${SIZES:-1024 102400}; do
        for conc in ${CONCS:-1 8 32}; do
            b=() d=()
            for _ in $(seq 1 "$RUNS"); do
                b+=("$(bare_rate "$api" "$size" "$conc")")
                before=$(stored "$api")
                d+=("$(smtp_rate "$api" "$size" "$conc")")
                after=$(stored "$api")
                # The container count is updated asynchronously: allow a moment.
                for _ in 1 2 3 4 5 6 7 8 9 10; do
                    [ $((after - before)) -ge "$COUNT" ] && break
                    sleep 0.5; after=$(stored "$api")
                done
                if [ $((after - before)) -lt "$COUNT" ]; then
                    echo "swiftdrop ($api) stored $((after - before)) of $COUNT messages" >&2; exit 1
                fi
            done
            bm=$(median "${b[@]}"); dm=$(median "${d[@]}")
            printf '%-7s %-7s %5s %14s %16s %7.2f\n' "$api" "$size" "$conc" "$bm" "$dm" \
                "$(awk -v a="$dm" -v b="$bm" 'BEGIN { print a / b }')"
        done
    done
done
for api in native s3; do
    echo "swiftdrop ($api) peak RSS: $(awk '/VmHWM/ { print $2 " " $3 }' "/proc/${pid[$api]}/status")"
done
