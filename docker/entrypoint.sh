#!/bin/sh
# Container entrypoint: configure Postfix from the environment, prove the stores, then run
# Postfix and swiftdrop in the foreground.
#
# Signals are handled from the first line. SIGTERM/SIGINT while starting: the step under way
# is stopped and the container exits 0 at once (nothing was served). Once running, a drain:
#   1. the public smtpd answers new connections `421 4.3.2` (a reload: its processes serving
#      a client finish their session, the transaction in it included; new ones exit at once);
#   2. those sessions are waited for, up to SMTP_DRAIN_TIMEOUT seconds;
#   3. swiftdrop drains what it still holds (its own drain_timeout) and exits: a session
#      still waiting for its end of data then gets swiftdrop's reply through Postfix;
#   4. Postfix's queue (postmaster@ and forwards, relayed by swiftdrop) is flushed for up to
#      QUEUE_FLUSH_TIMEOUT seconds, then Postfix stops. What is still queued then stays in
#      /var/spool/postfix: give it a persistent volume, or it goes with the container.
# A second signal during the drain changes nothing. Exit 0 after a signal; 1 when swiftdrop or
# Postfix ended by itself (the orchestrator then restarts the container whole).
#
# Environment: MYHOSTNAME (required), MYDOMAIN, RELAY_DOMAINS, FORWARDS (JSON) for Postfix,
# SWIFTDROP_* for swiftdrop (see README.rst); SMTP_LISTEN (default 0.0.0.0:25) for the
# public smtpd; SMTP_DRAIN_TIMEOUT (default 30), QUEUE_FLUSH_TIMEOUT (default 15);
# POSTFIX_CONFIG_DIR (default /etc/postfix).
set -eu

phase=starting
step_pid=
on_signal() {
    trap '' TERM INT
    if [ "$phase" = starting ]; then
        [ -z "$step_pid" ] || kill -TERM "$step_pid" 2>/dev/null || true
        echo "entrypoint: stopped while starting" >&2
        exit 0
    fi
    phase=stopping
}
trap on_signal TERM INT

# Runs one start-up step in the background, so that a signal is handled at once (sh runs a
# trap only between commands, and `wait` is one that a signal ends).
step() {
    "$@" &
    step_pid=$!
    status=0
    wait "$step_pid" || status=$?
    step_pid=
    return "$status"
}

conf=${POSTFIX_CONFIG_DIR:-/etc/postfix}
drain_timeout=${SMTP_DRAIN_TIMEOUT:-30}
flush_timeout=${QUEUE_FLUSH_TIMEOUT:-15}
for value in "$drain_timeout" "$flush_timeout"; do
    case $value in '' | *[!0-9]*)
        echo "entrypoint: SMTP_DRAIN_TIMEOUT and QUEUE_FLUSH_TIMEOUT are whole seconds, not '$value'" >&2
        exit 1 ;;
    esac
done
# Object keys and greetings carry the gateway's name, not the container's.
export SWIFTDROP_SERVER_HOSTNAME="${SWIFTDROP_SERVER_HOSTNAME:-${MYHOSTNAME:-}}"
step swiftdrop postfix-config --output "$conf" --public "${SMTP_LISTEN:-0.0.0.0:25}"
step postfix -c "$conf" check
step swiftdrop check
# The public smtpd: the inet service that hands transactions to swiftdrop.
public=$(postconf -c "$conf" -M | awk '$2 == "inet" && /smtpd_proxy_filter/ { print $1; exit }')
[ -n "$public" ] || { echo "entrypoint: no public smtpd in $conf/master.cf" >&2; exit 1; }
master_pid_file="$(postconf -c "$conf" -h queue_directory)/pid/master.pid"

# From here a signal drains: whatever has started by then is stopped in order.
swiftdrop_pid=
postfix_pid=
phase=running
swiftdrop serve &
swiftdrop_pid=$!
postfix -c "$conf" start-fg &
postfix_pid=$!

# The pid of this Postfix's master, once it runs.
master_pid() {
    tr -d ' ' 2>/dev/null <"$master_pid_file" || true
}

# The public smtpd's processes that started before the moment `since` (in clock ticks after
# boot, /proc/PID/stat's 22nd field): children of this Postfix's master whose command line
# names the service. Those started later only answer 421 and go.
public_smtpd_before() {
    master=$(master_pid)
    for dir in /proc/[0-9]*; do
        cmd=$(tr '\0' ' ' 2>/dev/null <"$dir/cmdline") || continue
        case $cmd in "smtpd -n $public -t inet"*) ;; *) continue ;; esac
        parent=$(awk '/^PPid:/ { print $2 }' "$dir/status" 2>/dev/null) || continue
        [ -n "$master" ] && [ "$parent" = "$master" ] || continue
        started=$(sed 's/.*) //' "$dir/stat" 2>/dev/null | awk '{ print $20 }') || continue
        [ -n "$started" ] && [ "$started" -lt "$1" ] && echo "${dir#/proc/}"
    done
}

# Clock ticks since boot now: the start time of a process made for the purpose.
now_ticks() {
    sed 's/.*) //' /proc/self/stat | awk '{ print $20 }'
}

drain() {
    echo "entrypoint: draining: new connections get 421, sessions in flight finish" >&2
    if [ -n "$postfix_pid" ]; then
        # A stop right after the start: Postfix's master must be up to take the reload.
        waited=0
        while ! postfix -c "$conf" status >/dev/null 2>&1 && kill -0 "$postfix_pid" 2>/dev/null &&
            [ "$waited" -lt 10 ]; do
            sleep 1
            waited=$((waited + 1))
        done
        # The after-queue smtpd sets its own (empty) client restrictions: it keeps taking
        # what swiftdrop relays. Idle processes of the new generation go after a second.
        postconf -c "$conf" -e \
            "smtpd_client_restrictions = check_client_access static:{421 4.3.2 Service shutting down, try again later}" \
            "smtpd_delay_reject = no" "max_idle = 1s" || true
        postfix -c "$conf" reload >/dev/null 2>&1 || true
        # The master reloads on its own time: processes started until a second later are
        # waited for too, those started after only answer 421.
        sleep 1
        since=$(now_ticks)
        serving=$(public_smtpd_before "$since")
        waited=0
        while [ -n "$serving" ] && [ "$waited" -lt "$drain_timeout" ]; do
            sleep 1
            waited=$((waited + 1))
            left=
            for pid in $serving; do
                if kill -0 "$pid" 2>/dev/null; then left="$left $pid"; fi
            done
            serving=$left
        done
        [ -z "$serving" ] ||
            echo "entrypoint: SMTP_DRAIN_TIMEOUT (${drain_timeout}s) over: sessions still open; swiftdrop answers those it holds, Postfix's stop cuts the rest" >&2
    fi
    if [ -n "$swiftdrop_pid" ]; then
        kill -TERM "$swiftdrop_pid" 2>/dev/null || true
        wait "$swiftdrop_pid" 2>/dev/null || true
    fi
    if [ -n "$postfix_pid" ]; then
        postqueue -c "$conf" -f 2>/dev/null || true
        # Mail on hold waits for an operator: it does not hold up the stop.
        queued() { postqueue -c "$conf" -j 2>/dev/null | grep -v '"queue_name": *"hold"' || true; }
        waited=0
        while [ -n "$(queued)" ] && [ "$waited" -lt "$flush_timeout" ]; do
            sleep 1
            waited=$((waited + 1))
        done
        [ -z "$(queued)" ] ||
            echo "entrypoint: QUEUE_FLUSH_TIMEOUT (${flush_timeout}s) over: mail left in Postfix's queue" >&2
        # Until the master is gone (one that was still starting misses the first stop).
        waited=0
        while kill -0 "$postfix_pid" 2>/dev/null && [ "$waited" -lt 30 ]; do
            postfix -c "$conf" stop >/dev/null 2>&1 || kill -TERM "$(master_pid)" 2>/dev/null || true
            sleep 1
            waited=$((waited + 1))
        done
        wait "$postfix_pid" 2>/dev/null || true
    fi
}

# Either process ending ends the container (the orchestrator restarts it whole).
# A sleep waited for in the background: a signal ends the wait at once.
while [ "$phase" = running ] && kill -0 "$swiftdrop_pid" 2>/dev/null && kill -0 "$postfix_pid" 2>/dev/null; do
    sleep 1 &
    wait $! || true
done
if [ "$phase" = stopping ]; then
    drain
    exit 0
fi
echo "entrypoint: $(kill -0 "$swiftdrop_pid" 2>/dev/null && echo Postfix || echo swiftdrop) ended by itself" >&2
phase=stopping
kill -TERM "$swiftdrop_pid" 2>/dev/null || true
postfix -c "$conf" stop >/dev/null 2>&1 || true
wait "$swiftdrop_pid" 2>/dev/null || true
wait "$postfix_pid" 2>/dev/null || true
exit 1
