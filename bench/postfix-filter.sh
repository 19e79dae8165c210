#!/usr/bin/env bash
# Throughput of swiftdrop behind a real Postfix, against smtp-sink as the ceiling, measured
# in the same run: smtp-source -> Postfix smtpd (smtpd_proxy_filter, speed_adjust) -> filter.
#
#   bench/postfix-filter.sh [RUNS]        (root, Debian with postfix; RUNS per cell, default 3)
#
# Environment: SIZES (bytes, default "1024 102400"), CONCS (default "1 10 50"), BENCH_DIR
# (where the Maildir and Postfix's queue live; default: a file system made for this run,
# ext4 with its journal as most servers have it, in a sparse image under target/,
# loop-mounted, so that no run pays for what the disk did before: ext4 without a journal,
# as this VM's root, skips every inode freed in the last minutes when it makes a file, and
# a run right after another that deleted thousands of files was slowed by a third), BENCH_BIN (a swiftdrop binary to measure instead of building this tree's: an earlier
# build, for a before-and-after table in one sitting).
#
# Prints messages/s (median of RUNS) for 1 KB and 100 KB at concurrency 1, 10 and 50, the
# ratio swiftdrop / smtp-sink and swiftdrop's peak RSS. swiftdrop stores into a Maildir on
# disk with fsync, exactly as in production; every run checks that all messages were stored.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}

command -v smtp-source >/dev/null || { echo "needs Postfix's smtp-source/smtp-sink: apt-get install postfix" >&2; exit 1; }
if [ -n "${BENCH_BIN:-}" ]; then
    bin=$(realpath "$BENCH_BIN")
else
    cargo build --release --quiet
    bin=$PWD/target/release/swiftdrop
fi
fs_dir= work= pids=()
cleanup() {
    if [ -n "$work" ]; then
        grep -hE "ERROR|panicked|error:" "$work/swiftdrop.log" 2>/dev/null | tail -5 >&2 || true
        bash tests/postfix/private-postfix.sh stop "$work/postfix" || true
    fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ -n "$work" ] && rm -rf "$work"
    if [ -n "$fs_dir" ]; then
        mountpoint -q "$fs_dir" && { umount "$fs_dir" || umount -l "$fs_dir"; }
        rm -rf "$fs_dir" "$fs_dir.img"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ -z "${BENCH_DIR:-}" ]; then
    mkdir -p target
    fs_dir=$(mktemp -d "$(realpath target)/bench-fs.XXXXXX")
    truncate -s 4G "$fs_dir.img"
    # Inode tables and journal written now, not by the kernel during the first runs.
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$fs_dir.img"
    mount -o loop "$fs_dir.img" "$fs_dir"
fi
mkdir -p "${BENCH_DIR:-$fs_dir}"
work=$(mktemp -d "$(realpath "${BENCH_DIR:-$fs_dir}")/swiftdrop-bench.XXXXXX")
chmod 755 "$work"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink_port=$(free_port); filter_port=$(free_port); front_sink=$(free_port); front_sd=$(free_port)

smtp-sink -u nobody "127.0.0.1:$sink_port" 1024 &
sink_pid=$!
pids+=($sink_pid)
SWIFTDROP_DEFAULT_PATH="$work/maildir" SWIFTDROP_SERVER_MAX_CONNECTIONS=512 RUST_LOG=info \
    "$bin" serve --listen "127.0.0.1:$filter_port" 2> "$work/swiftdrop.log" &
sd_pid=$!
pids+=($sd_pid)
bash tests/postfix/private-postfix.sh start "$work/postfix" "$front_sink:$sink_port" "$front_sd:$filter_port"

# Messages/s for one run: port size concurrency count.
rate() {
    local start end
    start=$(date +%s%N)
    smtp-source -s "$3" -m "$4" -l "$2" -f bench@example.org -t rcpt@example.com "127.0.0.1:$1" \
        > "$work/source.out" 2>&1 || { cat "$work/source.out" >&2; return 1; }
    end=$(date +%s%N)
    if [ -s "$work/source.out" ]; then cat "$work/source.out" >&2; return 1; fi
    awk -v n="$4" -v ns=$((end - start)) 'BEGIN { printf "%.0f", n / (ns / 1e9) }'
}
# CPU time (user + system) a process has used so far, in microseconds (USER_HZ = 100).
cpu_us() { awk '{ printf "%.0f\n", ($14 + $15) * 10000 }' "/proc/$1/stat"; }
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

stored_before=0
printf '%-8s %5s %12s %16s %7s %16s %16s\n' size conc "sink msg/s" "swiftdrop msg/s" ratio \
    "sink cpu us/msg" "swiftdrop cpu us/msg"
for size in ${SIZES:-1024 102400}; do
    [ "$size" = 1024 ] && count=1000 || count=300
    for conc in ${CONCS:-1 10 50}; do
        sink=() sd=()
        sink_cpu=0 sd_cpu=0
        for _ in $(seq 1 "$RUNS"); do
            before=$(cpu_us "$sink_pid")
            sink+=("$(rate "$front_sink" "$size" "$conc" "$count")")
            sink_cpu=$((sink_cpu + $(cpu_us "$sink_pid") - before))
            before=$(cpu_us "$sd_pid")
            sd+=("$(rate "$front_sd" "$size" "$conc" "$count")")
            sd_cpu=$((sd_cpu + $(cpu_us "$sd_pid") - before))
            stored=$(find "$work/maildir/cur" -type f | wc -l)
            if [ $((stored - stored_before)) -ne "$count" ]; then
                echo "swiftdrop stored $((stored - stored_before)) of $count messages" >&2; exit 1
            fi
            stored_before=$stored
        done
        s=$(median "${sink[@]}"); d=$(median "${sd[@]}")
        printf '%-8s %5s %12s %16s %7s %16s %16s\n' "$((size / 1024))KB" "$conc" "$s" "$d" \
            "$(awk -v a="$d" -v b="$s" 'BEGIN { printf "%.2f", a / b }')" \
            $((sink_cpu / (RUNS * count))) $((sd_cpu / (RUNS * count)))
    done
done
echo "swiftdrop peak RSS: $(awk '/VmHWM/ { printf "%.1f MB", $2 / 1024 }' "/proc/$sd_pid/status")"
echo "messages stored by swiftdrop: $stored_before (all checked)"
