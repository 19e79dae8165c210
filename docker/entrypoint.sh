#!/bin/sh
# Container entrypoint: configure Postfix from the environment, prove the stores, then run
# Postfix and swiftdrop in the foreground. SIGTERM/SIGINT stop Postfix from taking new mail
# first, then let swiftdrop drain the transactions in flight; the container exits when both
# are gone.
#
# Environment: MYHOSTNAME (required), MYDOMAIN, RELAY_DOMAINS, FORWARDS (JSON) for Postfix,
# SWIFTDROP_* for swiftdrop (see README.rst); SMTP_LISTEN (default 0.0.0.0:25) for the
# public smtpd; POSTFIX_CONFIG_DIR (default /etc/postfix).
set -eu

conf=${POSTFIX_CONFIG_DIR:-/etc/postfix}
# Object keys and greetings carry the gateway's name, not the container's.
export SWIFTDROP_SERVER_HOSTNAME="${SWIFTDROP_SERVER_HOSTNAME:-${MYHOSTNAME:-}}"
swiftdrop postfix-config --output "$conf" --public "${SMTP_LISTEN:-0.0.0.0:25}"
postfix -c "$conf" check
swiftdrop check

swiftdrop serve &
swiftdrop_pid=$!
postfix -c "$conf" start-fg &
postfix_pid=$!

stopped=
stop() {
    trap - TERM INT
    [ -n "$stopped" ] && return
    stopped=yes
    postfix -c "$conf" stop || true
    kill -TERM "$swiftdrop_pid" 2>/dev/null || true
}
trap stop TERM INT

# Either process ending ends the container (the orchestrator restarts it whole).
while kill -0 "$swiftdrop_pid" 2>/dev/null && kill -0 "$postfix_pid" 2>/dev/null; do
    wait "$swiftdrop_pid" "$postfix_pid" 2>/dev/null || true
    sleep 1
done
stop
wait "$swiftdrop_pid" 2>/dev/null || true
wait "$postfix_pid" 2>/dev/null || true
