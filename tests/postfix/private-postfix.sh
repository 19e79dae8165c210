#!/usr/bin/env bash
# A private Postfix on loopback for tests and benchmarks: configuration and queue in DIR,
# no systemd, no syslog, nothing in /etc/postfix changed. Needs root and Debian's postfix.
#
#   private-postfix.sh start DIR FRONT:FILTER [FRONT:FILTER ...] [--lock-step]
#                            [--after-queue PORT] [--deliver-to PORT] [--process-limit N]
#       One front smtpd per FRONT port (127.0.0.1), each handing its transactions to the
#       before-queue filter on 127.0.0.1:FILTER (smtpd_proxy_filter, speed_adjust unless
#       --lock-step). A before-queue filter's 250 ends the transaction: the front smtpd writes
#       no queue file. Anything queued by other paths is discarded (example.com) or bounced
#       (elsewhere): nothing leaves the machine. Returns when every front port listens.
#       --after-queue PORT adds the after-queue smtpd a filter relays to (127.0.0.1:PORT,
#       XFORWARD trusted from loopback); --deliver-to PORT sends queued mail to an SMTP
#       server on 127.0.0.1:PORT (e.g. smtp-sink) instead of discarding or bouncing it.
#       --process-limit N lets each service run N processes (default 100), which is also
#       the listen backlog of each front port: one smtpd serves one client session.
#   private-postfix.sh start-from DIR PORT... [-- postconf-setting...]
#       Starts the configuration already in DIR/etc (e.g. from `swiftdrop postfix-config`),
#       with its queue, data and log moved into DIR and the extra main.cf settings applied;
#       returns when every PORT listens.
#   private-postfix.sh stop DIR
#       Stops it and waits for the master process (by PID) to exit.
set -euo pipefail

usage() { echo "usage: $0 start DIR FRONT:FILTER... [options] | start-from DIR PORT... [-- setting...] | stop DIR" >&2; exit 2; }

wait_port() { # port
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "private-postfix: nothing listens on 127.0.0.1:$1" >&2
    return 1
}

prepare() { # dir
    # Postfix's own processes (user postfix) must be able to read the whole path.
    mkdir -p "$1"/{etc,log,data,queue}
    chmod 755 "$1" "$1"/{etc,log,data,queue}
    # master.lock lives in the data directory and is created by the postfix user.
    chown postfix "$1/data"
}

start_from() {
    local dir=$1; shift
    local ports=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do ports+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    prepare "$dir"
    postconf -c "$dir/etc" -e "queue_directory = $dir/queue" "data_directory = $dir/data" \
        "maillog_file = $dir/log/maillog" "maillog_file_prefixes = $dir/log" "$@"
    postfix -c "$dir/etc" check
    postfix -c "$dir/etc" start
    local port
    for port in "${ports[@]}"; do wait_port "$port"; done
}

start() {
    local dir=$1; shift
    local options=speed_adjust pairs=() after_queue= deliver_to= process_limit=100
    while [ $# -gt 0 ]; do
        case $1 in
            --lock-step) options= ;;
            --after-queue) after_queue=$2; shift ;;
            --deliver-to) deliver_to=$2; shift ;;
            --process-limit) process_limit=$2; shift ;;
            *:*) pairs+=("$1") ;;
            *) usage ;;
        esac
        shift
    done
    local relay_transport="discard:stored by the filter" default_transport="error:nothing leaves this test"
    if [ -n "$deliver_to" ]; then
        relay_transport="smtp:[127.0.0.1]:$deliver_to"
        default_transport=$relay_transport
    fi
    [ ${#pairs[@]} -gt 0 ] || usage
    prepare "$dir"
    cat > "$dir/etc/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
maillog_file = $dir/log/maillog
maillog_file_prefixes = $dir/log
mail_owner = postfix
myhostname = pfxtest.localdomain
mydomain = localdomain
myorigin = \$myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = example.com
relay_transport = $relay_transport
default_transport = $default_transport
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
smtputf8_enable = yes
message_size_limit = 60000000
default_process_limit = $process_limit
CF
    : > "$dir/etc/master.cf"
    local pair
    for pair in "${pairs[@]}"; do
        cat >> "$dir/etc/master.cf" <<CF
127.0.0.1:${pair%%:*} inet n - n - - smtpd
  -o smtpd_proxy_filter=127.0.0.1:${pair##*:}
  -o smtpd_proxy_options=$options
  -o smtpd_proxy_timeout=100s
CF
    done
    if [ -n "$after_queue" ]; then
        cat >> "$dir/etc/master.cf" <<CF
127.0.0.1:$after_queue inet n - n - - smtpd
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
  -o smtpd_client_restrictions= -o smtpd_helo_restrictions= -o smtpd_sender_restrictions=
  -o smtpd_relay_restrictions= -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o mynetworks=127.0.0.0/8 -o receive_override_options=no_unknown_recipient_checks
CF
    fi
    cat "$(dirname "$0")/../../src/cli/postfix_services.cf" >> "$dir/etc/master.cf"
    postfix -c "$dir/etc" check
    postfix -c "$dir/etc" start
    for pair in "${pairs[@]}"; do wait_port "${pair%%:*}"; done
    if [ -n "$after_queue" ]; then wait_port "$after_queue"; fi
}

stop() {
    local dir=$1 pid=
    [ -f "$dir/queue/pid/master.pid" ] && pid=$(tr -d ' ' < "$dir/queue/pid/master.pid")
    postfix -c "$dir/etc" stop >/dev/null 2>&1 || true
    # `postfix stop` returns before master exits: wait on its pid, then insist.
    if [ -n "$pid" ]; then
        for _ in $(seq 1 200); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.05
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
}

case ${1:-} in
    start) [ $# -ge 3 ] || usage; shift; start "$@" ;;
    start-from) [ $# -ge 3 ] || usage; shift; start_from "$@" ;;
    stop) [ $# -eq 2 ] || usage; stop "$2" ;;
    *) usage ;;
esac
