#!/usr/bin/env bash
# A real OpenStack Swift all-in-one on loopback for tests and benchmarks (Debian's swift
# packages): one account, container and object server, memcached, and a proxy serving the
# native API (tempauth: user test:tester, key testing) and the S3 API (s3api: access key
# test:tester, secret testing, region us-east-1, path-style). Everything but
# /etc/swift/swift.conf lives in DIR; no systemd, nothing started is left behind by `stop`.
# Needs root.
#
#   swift-aio.sh install
#       apt-get installs the packages when they are missing.
#   swift-aio.sh start DIR PORT
#       Proxy on 127.0.0.1:PORT; storage servers on PORT+1..PORT+3; memcached on PORT+4.
#       Storage is a loop-mounted XFS image (kept in /dev/shm when writable; sparse, of
#       SWIFT_AIO_SIZE, default 1G) when possible (Swift keeps metadata in xattrs and
#       ext4 holds only ~4 KB of them per file), else a plain directory. Returns when
#       auth v1 works and the account answers.
#   swift-aio.sh add-proxy DIR NAME PORT
#       Another proxy on PORT with its own memcached on PORT+1, serving the same storage:
#       tests stop it or restart its memcached without disturbing others.
#   swift-aio.sh stop-proxy DIR NAME | start-proxy DIR NAME | restart-memcached DIR NAME
#       NAME is `main` for the proxy started by `start`.
#   swift-aio.sh remove-proxy DIR NAME
#       Stops a proxy added with add-proxy and its memcached.
#   swift-aio.sh stop DIR
#       Stops every process started in DIR (by PID) and unmounts the storage.
set -euo pipefail

PACKAGES="curl swift swift-proxy swift-account swift-container swift-object python3-swiftclient memcached xfsprogs"
PY=/usr/bin/python3
export EVENTLET_NO_GREENDNS=yes

usage() { echo "usage: $0 install | start DIR PORT | add-proxy DIR NAME PORT | stop-proxy|start-proxy|restart-memcached DIR NAME | stop DIR" >&2; exit 2; }

install() {
    local missing=()
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

wait_port() { # port [tries]
    for _ in $(seq 1 "${2:-300}"); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "swift-aio: nothing listens on 127.0.0.1:$1" >&2
    return 1
}

# launch DIR NAME COMMAND...: runs COMMAND in the background, PID in DIR/pids/NAME.
launch() {
    local dir=$1 name=$2; shift 2
    "$@" >"$dir/log/$name.log" 2>&1 &
    echo $! >"$dir/pids/$name"
}

kill_pid() { # dir name
    local file="$1/pids/$2" pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

write_storage_conf() { # dir kind port
    cat >"$1/etc/$2-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $3
workers = 0
devices = $1/srv
mount_check = false
disable_fallocate = true
swift_dir = $1/etc
log_level = WARNING

[pipeline:main]
pipeline = $2-server

[app:$2-server]
use = egg:swift#$2

[$2-replicator]
[$2-updater]
[$2-auditor]
EOF
}

write_proxy_conf() { # dir name port memcached_port
    cat >"$1/etc/proxy-$2.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $3
# One process: with workers > 0 the master process polls its children and burns about 40%
# of a core doing it, which a 2-core test machine cannot spare.
workers = 0
swift_dir = $1/etc
log_level = WARNING

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl ratelimit s3api tempauth copy container-quotas account-quotas slo dlo versioned_writes symlink proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin

[filter:s3api]
use = egg:swift#s3api

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$4
# The default pool of 2 connections per proxy worker makes concurrent requests wait up to a
# second for one ("Timeout getting a connection to memcached"), then error-limits memcached.
memcache_max_connections = 64

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:tempurl]
use = egg:swift#tempurl
[filter:ratelimit]
use = egg:swift#ratelimit
[filter:copy]
use = egg:swift#copy
[filter:container-quotas]
use = egg:swift#container_quotas
[filter:account-quotas]
use = egg:swift#account_quotas
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
[filter:symlink]
use = egg:swift#symlink
EOF
    echo "$4" >"$1/etc/proxy-$2.memcached"
}

start_memcached() { # dir name port
    launch "$1" "memcached-$2" memcached -u root -l 127.0.0.1 -p "$3" -U 0 -m 16
    wait_port "$3"
}

start_proxy() { # dir name
    local port
    port=$(sed -n 's/^bind_port = //p' "$1/etc/proxy-$2.conf")
    launch "$1" "proxy-$2" "$PY" /usr/bin/swift-proxy-server "$1/etc/proxy-$2.conf" -v
    wait_port "$port"
}

healthy() { # port
    local token
    for _ in $(seq 1 200); do
        token=$(curl -sf -o /dev/null -D - -H 'X-Storage-User: test:tester' -H 'X-Storage-Pass: testing' \
            "http://127.0.0.1:$1/auth/v1.0" | tr -d '\r' | sed -n 's/^[Xx]-[Aa]uth-[Tt]oken: //p') || true
        if [ -n "$token" ] && curl -sf -o /dev/null -I -H "X-Auth-Token: $token" "http://127.0.0.1:$1/v1/AUTH_test"; then
            return 0
        fi
        sleep 0.1
    done
    echo "swift-aio: Swift on port $1 did not become healthy" >&2
    return 1
}

mount_storage() { # dir
    mkdir -p "$1/srv/d1"
    # The image goes to RAM (/dev/shm) when it can: on this VM's disk some fsyncs stall for up
    # to a second, which made a Swift request take 10 ms or 1 s at random.
    local image="$1/xfs.img"
    if [ -d /dev/shm ] && [ -w /dev/shm ]; then
        image=$(mktemp /dev/shm/swift-aio.XXXXXX.img)
    fi
    echo "$image" >"$1/image"
    if command -v mkfs.xfs >/dev/null && truncate -s "${SWIFT_AIO_SIZE:-1G}" "$image" && mkfs.xfs -q -f "$image" 2>/dev/null \
        && mount -o loop "$image" "$1/srv/d1" 2>/dev/null; then
        echo "$1/srv/d1" >"$1/mounted"
    else
        rm -f "$image" "$1/image"
        echo "swift-aio: storage on a plain directory (no XFS loop mount); large metadata may fail" >&2
    fi
}

build_rings() { # dir port
    "$PY" - "$1/etc" "$2" <<'EOF'
import sys
from swift.common.ring import RingBuilder
etc, port = sys.argv[1], int(sys.argv[2])
for offset, kind in ((3, "account"), (2, "container"), (1, "object")):
    b = RingBuilder(10, 1, 1)
    b.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": port + offset,
               "device": "d1", "weight": 100, "meta": ""})
    b.rebalance()
    b.get_ring().save(f"{etc}/{kind}.ring.gz")
EOF
}

start() {
    local dir=$1 port=$2
    [ -f /etc/swift/swift.conf ] || { echo "swift-aio: /etc/swift/swift.conf missing: run '$0 install'" >&2; exit 1; }
    mkdir -p "$dir"/{etc,log,pids,srv}
    dir=$(cd "$dir" && pwd)
    cp /etc/swift/swift.conf "$dir/etc/"
    mount_storage "$dir"
    chown -R root "$dir/srv"
    build_rings "$dir" "$port"
    write_storage_conf "$dir" object $((port + 1))
    write_storage_conf "$dir" container $((port + 2))
    write_storage_conf "$dir" account $((port + 3))
    write_proxy_conf "$dir" main "$port" $((port + 4))
    start_memcached "$dir" main $((port + 4))
    local kind
    for kind in object container account; do
        launch "$dir" "$kind" "$PY" "/usr/bin/swift-$kind-server" "$dir/etc/$kind-server.conf" -v
    done
    wait_port $((port + 1)); wait_port $((port + 2)); wait_port $((port + 3))
    start_proxy "$dir" main
    healthy "$port"
}

add_proxy() { # dir name port
    write_proxy_conf "$1" "$2" "$3" $(($3 + 1))
    start_memcached "$1" "$2" $(($3 + 1))
    start_proxy "$1" "$2"
    healthy "$3"
}

restart_memcached() { # dir name
    kill_pid "$1" "memcached-$2"
    start_memcached "$1" "$2" "$(cat "$1/etc/proxy-$2.memcached")"
}

stop() {
    local dir=$1 f
    [ -d "$dir/pids" ] || return 0
    for f in "$dir"/pids/proxy-*; do [ -e "$f" ] && kill_pid "$dir" "$(basename "$f")"; done
    for f in "$dir"/pids/*; do [ -e "$f" ] && kill_pid "$dir" "$(basename "$f")"; done
    if [ -f "$dir/mounted" ]; then
        umount "$(cat "$dir/mounted")" 2>/dev/null || umount -l "$(cat "$dir/mounted")" || true
        rm -f "$dir/mounted"
    fi
    if [ -f "$dir/image" ]; then
        rm -f "$(cat "$dir/image")" "$dir/image"
    fi
}

[ $# -ge 1 ] || usage
cmd=$1; shift
case $cmd in
    install) install ;;
    start) [ $# -eq 2 ] || usage; start "$@" ;;
    add-proxy) [ $# -eq 3 ] || usage; add_proxy "$@" ;;
    stop-proxy) [ $# -eq 2 ] || usage; kill_pid "$1" "proxy-$2" ;;
    start-proxy) [ $# -eq 2 ] || usage; start_proxy "$@" ;;
    restart-memcached) [ $# -eq 2 ] || usage; restart_memcached "$@" ;;
    remove-proxy) [ $# -eq 2 ] || usage; kill_pid "$1" "proxy-$2"; kill_pid "$1" "memcached-$2" ;;
    stop) [ $# -eq 1 ] || usage; stop "$@" ;;
    *) usage ;;
esac
