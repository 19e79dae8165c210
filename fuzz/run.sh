#!/usr/bin/env bash
# Coverage-guided fuzzing of swiftdrop's fuzz targets (src/fuzzing/) with AFL++ through
# cargo-afl, on the stable toolchain.
#
#   fuzz/run.sh [--seconds N] [--keep] [TARGET...]
#
# Runs each target (default: all of smtp_session, names, message_rules) for N seconds
# (default 600) from its corpus in fuzz/corpus/TARGET, at most one per core at a time, and
# prints what AFL++ counted. Exit 1 when a target crashed or hung: the inputs are under
# fuzz/out/TARGET/default/crashes (replay one with `fuzz/target/release/TARGET < FILE`).
# --keep replaces the corpus's found inputs with `cargo afl cmin`'s minimum of them and of
# what AFL++ found; the seeds (seed-*) and the inputs of crashes fixed (found-*) stay.
# `cargo test` replays the corpus in every run (tests/it/fuzz_corpus.rs).
#
# First run on a fresh machine: installs cargo-afl and builds AFL++ (a few minutes; make and
# a C compiler are needed, installed as Debian's build-essential when run as root).
set -euo pipefail
cd "$(dirname "$0")"

all=(smtp_session names message_rules)
seconds=600
keep=false
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --keep) keep=true; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "fuzz/run.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for target in "${targets[@]}"; do
  [ -d "corpus/$target" ] || { echo "fuzz/run.sh: no target $target (${all[*]})" >&2; exit 2; }
done

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v make >/dev/null || ! command -v cc >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "fuzz/run.sh: needs make and cc (apt-get install build-essential)" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends build-essential >/dev/null
fi
if ! cargo afl --version 2>/dev/null | grep -q '^cargo-afl 0.18.2'; then
  cargo install cargo-afl --version 0.18.2 --locked
fi
# AFL++ is built once per rustc (cargo afl refuses to build it again).
rustc_id=$(rustc -vV | sed -n 's/^release: //p')-$(rustc -vV | sed -n 's/^commit-hash: //p' | cut -c1-7)
if [ ! -e "${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs/rustc-$rustc_id/afl.rs-0.18.2/afl-llvm/afl-compiler-rt.o" ]; then
  cargo afl config --build
fi

# The same dependency versions as the main build (its lock, plus afl's own entries).
cp ../Cargo.lock Cargo.lock
# cargo afl sets RUSTFLAGS, which hides .cargo/config.toml's: give its cfg again.
env -u CARGO_ENCODED_RUSTFLAGS RUSTFLAGS="--cfg tracing_unstable" \
  cargo afl build --release --quiet

# Whatever ends this script ends the fuzzers it started.
pids=()
stop() { for pid in "${pids[@]}"; do kill -- "-$pid" 2>/dev/null || true; done; }
trap stop EXIT
trap 'exit 130' INT TERM

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFLRS_NO_UPDATE_CHECK=1 AFL_NO_AFFINITY=1
jobs=$(nproc)
for target in "${targets[@]}"; do
  rm -rf "out/$target"
  mkdir -p "out/$target"
  echo "fuzzing $target for $seconds s (log: fuzz/out/$target.log)"
  # -t: a run may take a second on a loaded machine before it counts as a hang.
  # A process group of its own (setsid): cargo afl starts afl-fuzz as its child, and the
  # stop below ends them both.
  setsid cargo afl fuzz -i "corpus/$target" -o "out/$target" -V "$seconds" -t 1000 \
    -- "target/release/$target" >"out/$target.log" 2>&1 &
  pids+=($!)
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
done
for pid in "${pids[@]}"; do wait "$pid" || true; done
pids=()

failed=0
printf '%-14s %12s %9s %8s %8s %8s %10s\n' target execs_done execs/s corpus crashes hangs stability
for target in "${targets[@]}"; do
  stats="out/$target/default/fuzzer_stats"
  if [ ! -f "$stats" ]; then
    echo "$target: AFL++ did not run; see fuzz/out/$target.log" >&2
    tail -20 "out/$target.log" >&2
    failed=1
    continue
  fi
  get() { sed -n "s/^$1 *: *//p" "$stats"; }
  printf '%-14s %12s %9s %8s %8s %8s %10s\n' "$target" "$(get execs_done)" \
    "$(get execs_per_sec)" "$(get corpus_count)" "$(get saved_crashes)" \
    "$(get saved_hangs)" "$(get stability)"
  if [ "$(get saved_crashes)" != 0 ] || [ "$(get saved_hangs)" != 0 ]; then
    ls "out/$target/default/crashes" "out/$target/default/hangs" >&2
    failed=1
  elif $keep; then
    # The minimum of the found inputs (committed and new) that keeps their coverage.
    rm -rf "out/$target/all" "out/$target/min"
    mkdir -p "out/$target/all"
    # The queue's `orig:` entries are the corpus as it was: the committed ones come below.
    find "out/$target/default/queue" -maxdepth 1 -type f -name 'id:*' ! -name '*orig:*' \
      -exec cp {} "out/$target/all/" \;
    find "corpus/$target" -type f ! -name 'seed-*' ! -name 'found-*' -exec cp {} "out/$target/all/" \;
    # An empty minimum of a non-empty set is cmin failing to read the traces: keep the corpus.
    if cargo afl cmin -i "out/$target/all" -o "out/$target/min" -t 1000 \
         -- "target/release/$target" >"out/$target.cmin.log" 2>&1 &&
       { [ -z "$(ls "out/$target/all")" ] || [ -n "$(ls "out/$target/min")" ]; }; then
      find "corpus/$target" -type f ! -name 'seed-*' ! -name 'found-*' -delete
      for input in "out/$target/min"/*; do
        [ -f "$input" ] || continue
        cp "$input" "corpus/$target/$(sha1sum "$input" | cut -c1-16)"
      done
      echo "$target: fuzz/corpus/$target holds $(ls "corpus/$target" | wc -l) inputs"
    else
      echo "$target: cmin failed, corpus unchanged; see fuzz/out/$target.cmin.log" >&2
      failed=1
    fi
  fi
done
exit "$failed"
