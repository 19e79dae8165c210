#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine and runs the whole suite.
# Run as root: the tests start a private Postfix, a Swift all-in-one and private Redis
# servers, and mount tmpfs/read-only stores; every server started is stopped again (by PID).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: run as root (the tests start Postfix and mount file systems)" >&2
    exit 1
fi
command -v cargo >/dev/null || { echo "tests/run.sh: needs a Rust toolchain (cargo)" >&2; exit 1; }

# Postfix (with smtp-sink/smtp-source): the real MTA in front of the filter.
missing=()
[ -x /usr/sbin/postfix ] || missing+=(postfix)
# Redis: the queue tests' lock engine (each test starts and stops its own redis-server, and
# for the failover test a primary, a replica and three redis-sentinel processes).
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)
command -v mount >/dev/null || missing+=(mount)
# Cyrus SASL's saslpasswd2: the gateway test makes the applications' logins with it.
command -v saslpasswd2 >/dev/null || missing+=(sasl2-bin)
# A real headless Chromium, driven by Selenium, for the admin web view's test.
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
/usr/bin/python3 -c 'import selenium' 2>/dev/null || missing+=(python3-selenium)
# Podman builds and runs the container image (tests/container/run.sh): runc as its runtime
# (crun rejects this machine's cgroup layout), debootstrap for the base image.
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
[ -x /usr/lib/podman/netavark ] || missing+=(netavark aardvark-dns)
command -v iptables >/dev/null || missing+=(iptables)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # "No configuration": the package must not configure or start a system Postfix.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Prosody (XMPP, with a chat-room service) for the dequeue worker's tests: each test starts
# and stops its own (tests/xmpp/prosody.sh); the package starts no service of its own.
bash tests/xmpp/prosody.sh install
# OpenLDAP (slapd) for the Mattermost sink's authorisation tests: each test starts and stops
# its own directory (tests/ldap/slapd.sh); the package configures and starts nothing.
bash tests/ldap/slapd.sh install

# moto's S3 server: a second S3 besides Swift's s3api, one that behaves as AWS does (each
# test starts and stops its own).
TEST_MOTO_SERVER=$(bash tests/s3/moto.sh install)
export TEST_MOTO_SERVER

# OpenStack Swift (native API + S3 API) on loopback for the object-store tests; stopped on
# exit, whatever the outcome.
bash tests/swift/swift-aio.sh install
export TEST_SWIFT_DIR="$PWD/target/test-swift"
export TEST_SWIFT_PORT="${TEST_SWIFT_PORT:-18080}"
bash tests/swift/swift-aio.sh stop "$TEST_SWIFT_DIR"
rm -rf "$TEST_SWIFT_DIR"
trap 'bash tests/swift/swift-aio.sh stop "$TEST_SWIFT_DIR"' EXIT
bash tests/swift/swift-aio.sh start "$TEST_SWIFT_DIR" "$TEST_SWIFT_PORT"

# The queue tests run the example workers as separate processes: build the runnable
# examples, then the tests of everything else (examples have no tests of their own, and
# building each again as a test harness costs minutes).
cargo build --examples
# Two at a time (the default on two cores): with four, the shared Swift all-in-one stalls
# for many seconds under the load and tests fail for it.
cargo test --lib --bins --tests
# The container image, built from docker/Dockerfile and run with Podman (the Swift above
# still runs for its Swift part).
bash tests/container/run.sh
