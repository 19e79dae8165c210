#!/bin/sh
# Container entrypoint: configure Postfix from the environment, prove the stores, then run
# Postfix and swiftdrop in the foreground.
#
# Signals are handled from the first line. SIGTERM/SIGINT while starting: the step under way
# is stopped and the container exits 0 at once (nothing was served). Once running, a drain:
#   1. the public smtpd answers new connections `421 4.3.2` (a reload: its processes serving
#      a client finish their session, the transaction in it included);
#   2. those sessions are waited for, up to SMTP_DRAIN_TIMEOUT seconds (then cut);
#   3. swiftdrop drains what it still holds (its own drain_timeout) and exits;
#   4. Postfix stops (the after-queue smtpd took what swiftdrop relayed by then).
# Exit 0 after a signal; 1 when swiftdrop or Postfix ended by itself (the orchestrator then
# restarts the container whole).
#
# Environment: MYHOSTNAME (required), MYDOMAIN, RELAY_DOMAINS, FORWARDS (JSON) for Postfix,
# SWIFTDROP_* for swiftdrop (see README.rst); SMTP_LISTEN (default 0.0.0.0:25) for the
# public smtpd; SMTP_DRAIN_TIMEOUT (default 30); POSTFIX_CONFIG_DIR (default /etc/postfix).
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
# Object keys and greetings carry the gateway's name, not the container's.
export SWIFTDROP_SERVER_HOSTNAME="${SWIFTDROP_SERVER_HOSTNAME:-${MYHOSTNAME:-}}"
step swiftdrop postfix-config --output "$conf" --public "${SMTP_LISTEN:-0.0.0.0:25}"
step postfix -c "$conf" check
step swiftdrop check
# The public smtpd: the inet service that hands transactions to swiftdrop.
public=$(postconf -c "$conf" -M | awk '$2 == "inet" && /smtpd_proxy_filter/ { print $1; exit }')

swiftdrop serve &
swiftdrop_pid=$!
postfix -c "$conf" start-fg &
postfix_pid=$!
phase=running

# The processes of the public smtpd now running: their command line names the service.
public_smtpd() {
    for dir in /proc/[0-9]*; do
        cmd=$(tr '\0' ' ' <"$dir/cmdline" 2>/dev/null) || continue
        case $cmd in "smtpd -n $public -t inet"*) echo "${dir#/proc/}" ;; esac
    done
}

drain() {
    echo "entrypoint: draining: new connections get 421, sessions in flight finish" >&2
    serving=$(public_smtpd)
    # The after-queue smtpd sets its own (empty) client restrictions: it keeps taking what
    # swiftdrop relays.
    postconf -c "$conf" -e \
        "smtpd_client_restrictions = check_client_access static:{421 4.3.2 Service shutting down, try again later}" \
        "smtpd_delay_reject = no" || true
    postfix -c "$conf" reload 2>/dev/null || true
    waited=0
    while :; do
        left=
        for pid in $serving; do
            if kill -0 "$pid" 2>/dev/null; then left="$left $pid"; fi
        done
        serving=$left
        [ -n "$serving" ] && [ "$waited" -lt "$drain_timeout" ] || break
        sleep 1
        waited=$((waited + 1))
    done
    if [ -n "$serving" ]; then
        echo "entrypoint: SMTP_DRAIN_TIMEOUT (${drain_timeout}s) over: cutting sessions$serving" >&2
        # shellcheck disable=SC2086 # a list of pids
        kill -TERM $serving 2>/dev/null || true
    fi
    kill -TERM "$swiftdrop_pid" 2>/dev/null || true
    wait "$swiftdrop_pid" 2>/dev/null || true
    postfix -c "$conf" stop >/dev/null 2>&1 || true
    wait "$postfix_pid" 2>/dev/null || true
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
echo "entrypoint: $( kill -0 "$swiftdrop_pid" 2>/dev/null && echo Postfix || echo swiftdrop ) ended by itself" >&2
phase=stopping
kill -TERM "$swiftdrop_pid" 2>/dev/null || true
postfix -c "$conf" stop >/dev/null 2>&1 || true
wait "$swiftdrop_pid" 2>/dev/null || true
wait "$postfix_pid" 2>/dev/null || true
exit 1
