#!/usr/bin/env bash
# The container image, built from docker/Dockerfile as shipped and run with Podman (as root),
# checked from outside as a user would: ../shared/container.md's recipe.
#
#   bash tests/container/run.sh            # tests/run.sh runs it after the Rust tests
#
# 1. The gateway with the original SwiftDrop's environment (MYHOSTNAME, RELAY_DOMAINS,
#    FORWARDS, SWIFTDROP_*), reached through a mapped port: a message stored under cur/ byte
#    for byte, a forwarded address delivered onward (to an smtp-sink inside the container), an
#    unknown recipient and an outside relay refused.
# 2. The dequeue worker of the image, in a container of its own beside it (its volume, its
#    network): it claims the stored message, sends its alert, moves it to done/, and stops
#    with 0 on `podman stop`.
# 3. `podman stop` of the gateway while five clients are in the middle of DATA: each gets its
#    250, each 250 has its object, the container exits 0; and `podman stop` of a gateway whose
#    store check hangs (a Swift that never answers) ends it with 0 at once, not by SIGKILL.
# 4. With TEST_SWIFT_PORT set (tests/run.sh's Swift all-in-one): the gateway storing into
#    Swift, configured by environment only, as a Kubernetes pod would be.
#
# Base images cannot be pulled here: debian:bookworm-slim is made with debootstrap and
# rust:1.95-bookworm from it and the host's toolchain, once; Podman keeps them (and the
# image's layers) between runs. Prints "SKIPPED: <why>" and exits 0 only when not run as root
# (Podman's storage and networks need it here); any other failure fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

skip() { echo "tests/container: SKIPPED: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "Podman's storage and networks need root here"
command -v podman >/dev/null || { echo "tests/container: podman is not installed (tests/run.sh installs it)" >&2; exit 1; }

work=/var/tmp/swiftdrop-container
mkdir -p "$work"
# This machine's limits and its cgroup layout (../shared/container.md): runc, and ulimits
# within the hard limits root has.
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
[network]
network_backend = "netavark"
EOF
export CONTAINERS_CONF="$work/containers.conf"
podman info >/dev/null 2>&1 || { podman info >&2 || true; echo "tests/container: FAILED: podman info" >&2; exit 1; }

started=()
silent_pid=
cleanup() {
    [ -z "$silent_pid" ] || kill "$silent_pid" 2>/dev/null || true
    for c in "${started[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
    podman volume rm -f swiftdrop-ct-spool >/dev/null 2>&1 || true
}
trap cleanup EXIT
step() { echo "tests/container: $*"; }
fail() { echo "tests/container: FAILED: $*" >&2; exit 1; }

# --- Base images (once) --------------------------------------------------------------------
if ! podman image exists localhost/debian:bookworm-slim; then
    step "making debian:bookworm-slim with debootstrap (once)"
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    rootfs="$work/rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        rm -f "$rootfs/etc/apt/sources.list"
        cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/"
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import - localhost/debian:bookworm-slim >/dev/null
    rm -rf "$rootfs"
fi
# The Dockerfile builds with Rust 1.95: rustup's toolchain of that version, else the host's
# rustc if it is 1.95. The image is made again when the toolchain changes.
if rustc_path=$(rustup which --toolchain 1.95 rustc 2>/dev/null); then
    sysroot=${rustc_path%/bin/rustc}
elif rustc --version | grep -q '^rustc 1\.95\.'; then
    sysroot=$(rustc --print sysroot)
else
    fail "docker/Dockerfile builds with Rust 1.95: rustup toolchain install 1.95"
fi
rust_version=$("$sysroot/bin/rustc" --version)
if [ "$(podman image inspect -f '{{ index .Labels "rustc" }}' localhost/rust:1.95-bookworm 2>/dev/null)" != "$rust_version" ]; then
    step "making rust:1.95-bookworm from $rust_version (once per toolchain)"
    ctx="$work/rust-ctx"
    rm -rf "$ctx"
    mkdir -p "$ctx/toolchain" "$ctx/extra-ca"
    cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/toolchain/"
    # HTTPS here may be trusted through extra CAs: the build stage needs them for crates.io.
    cp /usr/local/share/ca-certificates/*.crt "$ctx/extra-ca/" 2>/dev/null || true
    cat >"$ctx/Containerfile" <<'EOF'
FROM localhost/debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       ca-certificates gcc libc6-dev make pkg-config perl \
    && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates && rustc --version && cargo --version
EOF
    podman build --pull=never -q --label "rustc=$rust_version" -t localhost/rust:1.95-bookworm "$ctx" >/dev/null
    rm -rf "$ctx"
fi

# --- The image, from docker/Dockerfile unchanged ---------------------------------------------
step "building docker/Dockerfile (cached layers are reused)"
ctx="$work/ctx"
rm -rf "$ctx"
mkdir -p "$ctx"
tar -C "$repo" --exclude=./target --exclude=./.git --exclude=./fuzz/target --exclude=./fuzz/out -cf - . |
    tar -C "$ctx" -xf -
# The build stage is tagged too: the prune below keeps it, and with it the next build's cache.
podman build --pull=never -q -f docker/Dockerfile --target build -t localhost/swiftdrop-build:test "$ctx" >/dev/null
podman build --pull=never -q -f docker/Dockerfile -t localhost/swiftdrop:test "$ctx" >/dev/null
rm -rf "$ctx"
# The build stages and images this build replaced (gigabytes each); the tagged ones stay.
podman image prune -f >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# SMTP from the host: one message; prints the reply to the end of data, or the refusal.
send() { # port from to subject
    python3 - "$@" <<'EOF'
import smtplib, sys
port, sender, rcpt, subject = sys.argv[1:]
try:
    with smtplib.SMTP("127.0.0.1", int(port), timeout=60) as s:
        code, text = s.ehlo("client.test")
        s.mail(sender)
        code, text = s.rcpt(rcpt)
        if code >= 400:
            print(code, text.decode()); sys.exit(0)
        code, text = s.data(f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\ncontainer test\r\n".encode())
        print(code, text.decode())
except smtplib.SMTPResponseException as e:
    print(e.smtp_code, e.smtp_error.decode())
EOF
}
wait_greeting() { # port container
    for _ in $(seq 1 120); do
        if python3 -c "import smtplib,sys; smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=2).quit()" "$1" 2>/dev/null; then
            return 0
        fi
        podman container exists "$2" && [ "$(podman inspect -f '{{.State.Running}}' "$2")" = true ] ||
            { podman logs "$2" | tail -20 >&2; fail "$2 stopped while starting"; }
        sleep 0.5
    done
    podman logs "$2" | tail -20 >&2
    fail "no greeting on 127.0.0.1:$1"
}
expect() { # what got want
    case $2 in "$3"*) ;; *) fail "$1: got '$2', want '$3...'" ;; esac
}
stopped_with_0() { # container
    podman stop -t 150 "$1" >/dev/null
    code=$(podman inspect -f '{{.State.ExitCode}}' "$1")
    [ "$code" = 0 ] || { podman logs "$1" | tail -20 >&2; fail "$1 exited $code on podman stop"; }
}

# --- 1. The gateway, the original SwiftDrop's environment ------------------------------------
port=$(free_port)
gateway=swiftdrop-ct-gateway
podman rm -f -t 0 "$gateway" >/dev/null 2>&1 || true
podman volume rm -f swiftdrop-ct-spool >/dev/null 2>&1 || true
started+=("$gateway")
podman run -d --name "$gateway" -p "127.0.0.1:$port:25" -v swiftdrop-ct-spool:/var/spool/swiftdrop \
    -e MYHOSTNAME=mx.example.com -e RELAY_DOMAINS=example.com \
    -e FORWARDS='{"fwd@example.com": "target@elsewhere.example"}' \
    -e SWIFTDROP_OURS_RECIPIENTS=ours@example.com \
    localhost/swiftdrop:test >/dev/null
wait_greeting "$port" "$gateway"
# Only for the test: what Postfix sends on goes to an smtp-sink inside the container.
podman exec "$gateway" sh -c 'mkdir -p /tmp/sink && chown postfix /tmp/sink &&
    (smtp-sink -u postfix -d /tmp/sink/%M. 127.0.0.1:2526 100 >/dev/null 2>&1 &) &&
    postconf -e "default_transport = smtp:[127.0.0.1]:2526" "relay_transport = smtp:[127.0.0.1]:2526" &&
    postfix reload >/dev/null 2>&1'

step "a message for a destination is stored under cur/, byte for byte"
reply=$(send "$port" sender@example.net ours@example.com "stored in the container")
expect "stored" "$reply" "250 2.0.0 Ok: stored as cur/"
key=${reply#250 2.0.0 Ok: stored as }
# swiftdrop's trace lines, Postfix's Received: header, then the client's bytes unchanged.
podman exec "$gateway" cat "/var/spool/swiftdrop/maildir/$key" | python3 -c '
import re, sys
stored = sys.stdin.buffer.read()
sent = b"From: sender@example.net\r\nTo: ours@example.com\r\nSubject: stored in the container\r\n\r\ncontainer test\r\n"
trace = b"Return-Path: <sender@example.net>\r\nDelivered-To: ours@example.com\r\n"
received = re.match(rb"Received: [^\r]*\r\n(?:[ \t][^\r]*\r\n)*", stored[len(trace):])
ok = stored.startswith(trace) and received and stored[len(trace) + received.end():] == sent
sys.exit(0 if ok else f"stored bytes: {stored!r}")' || fail "the stored message is not the bytes sent"

step "a forwarded address is delivered onward"
reply=$(send "$port" sender@example.net fwd@example.com "forwarded")
expect "forwarded" "$reply" "250"
for _ in $(seq 1 60); do
    podman exec "$gateway" sh -c 'grep -l "Subject: forwarded" /tmp/sink/* 2>/dev/null' >/dev/null && break
    sleep 0.5
done
podman exec "$gateway" sh -c 'grep -l "Subject: forwarded" /tmp/sink/*' >/dev/null ||
    fail "the forward never reached the sink: $(podman exec "$gateway" postqueue -p)"

step "an unknown recipient and an outside relay are refused"
expect "unknown" "$(send "$port" sender@example.net nobody@example.com x)" "550"
expect "relay" "$(send "$port" sender@example.net someone@outside.example x)" "554"

# --- 2. The worker of the image, beside the gateway --------------------------------------------
step "the image's dequeue worker claims the stored message, alerts, finishes it, stops with 0"
podman exec -i "$gateway" sh -c 'cat > /var/spool/swiftdrop/rules.yml' <<'EOF'
remote-smtp: 127.0.0.1:2526
unmatched: done
managers:
  - name: ours
    messages-we-want:
      to: ours@example.com
    rules:
      - name: alert
        actions: [mailto:oncall@example.com]
EOF
worker=swiftdrop-ct-worker
started+=("$worker")
podman run -d --name "$worker" --network "container:$gateway" -v swiftdrop-ct-spool:/var/spool/swiftdrop \
    -e SWIFTDROP_OURS_RECIPIENTS=ours@example.com --entrypoint swiftdrop-dequeue \
    localhost/swiftdrop:test --config /var/spool/swiftdrop/rules.yml --destination OURS >/dev/null
name=${key#cur/}
for _ in $(seq 1 120); do
    podman exec "$gateway" sh -c "ls /var/spool/swiftdrop/maildir/done/ 2>/dev/null" | grep -qF "$name" && break
    sleep 0.5
done
podman exec "$gateway" sh -c "ls /var/spool/swiftdrop/maildir/done/" | grep -qF "$name" ||
    { podman logs "$worker" | tail -20 >&2; fail "the worker did not finish $name"; }
podman exec "$gateway" sh -c 'grep -l "oncall@example.com" /tmp/sink/*' >/dev/null ||
    fail "the worker's alert never reached the sink"
stopped_with_0 "$worker"

# --- 3. Stop ----------------------------------------------------------------------------------
step "podman stop with five clients in the middle of DATA and one between EHLO and MAIL: each gets its 250 and object, new clients 421, exit 0"
python3 - "$port" "$gateway" <<'EOF' || fail "the drain through podman stop"
import socket, subprocess, sys, time
port, gateway = int(sys.argv[1]), sys.argv[2]
def reply(f):
    while True:
        line = f.readline().decode()
        if len(line) < 4 or line[3] != "-":
            return line.strip()
clients = []
for i in range(5):
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    f = s.makefile("rb")
    assert reply(f).startswith("220")
    for command in ["EHLO client.test", "MAIL FROM:<sender@example.net>", "RCPT TO:<ours@example.com>", "DATA"]:
        s.sendall(command.encode() + b"\r\n")
        answer = reply(f)
        assert answer[0] in "23", f"{command}: {answer}"
    s.sendall(b"Subject: in flight %d\r\n\r\nfirst half\r\n" % i)
    clients.append((s, f))
# A session that has not reached MAIL: swiftdrop holds nothing of it yet, so its 250 comes
# only if Postfix's sessions are waited for before swiftdrop stops.
early = socket.create_connection(("127.0.0.1", port), timeout=120)
early_f = early.makefile("rb")
assert reply(early_f).startswith("220")
early.sendall(b"EHLO client.test\r\n")
assert reply(early_f).startswith("250")
stop = subprocess.Popen(["podman", "stop", "-t", "150", gateway], stdout=subprocess.DEVNULL)
# The drain has begun once its first line is in the log, and its reload took once a new
# client is turned away.
deadline = time.time() + 60
while b"entrypoint: draining" not in subprocess.run(["podman", "logs", gateway], capture_output=True).stderr:
    assert time.time() < deadline, "the drain never began"
    time.sleep(0.2)
while True:
    late = socket.create_connection(("127.0.0.1", port), timeout=120)
    greeting = reply(late.makefile("rb"))
    late.close()
    if greeting.startswith("421 4.3.2"):
        break
    assert greeting.startswith("220") and time.time() < deadline, greeting
    time.sleep(0.2)
for command in ["MAIL FROM:<sender@example.net>", "RCPT TO:<ours@example.com>", "DATA"]:
    early.sendall(command.encode() + b"\r\n")
    answer = reply(early_f)
    assert answer[0] in "23", f"after the stop, {command}: {answer}"
early.sendall(b"Subject: begun before the stop\r\n\r\nhello\r\n")
clients.append((early, early_f))
keys = []
for s, f in clients:
    s.sendall(b"second half\r\n.\r\n")
    answer = reply(f)
    assert answer.startswith("250 2.0.0 Ok: stored as cur/"), answer
    keys.append(answer.rsplit(" ", 1)[1])
    s.sendall(b"QUIT\r\n")
assert stop.wait() == 0
code = subprocess.run(["podman", "inspect", "-f", "{{.State.ExitCode}}", gateway], capture_output=True, text=True).stdout.strip()
assert code == "0", f"exit {code}"
# The objects, read from the stopped container's volume.
listed = subprocess.run(["podman", "run", "--rm", "-v", "swiftdrop-ct-spool:/spool", "--entrypoint", "ls",
                         "localhost/swiftdrop:test", "/spool/maildir/cur"], capture_output=True, text=True).stdout.split()
missing = [k for k in keys if k[len("cur/"):] not in listed]
assert not missing, f"250 without an object: {missing}"
EOF

step "podman stop while the store check hangs ends the gateway with 0 at once"
silent=$(free_port)
hung=swiftdrop-ct-hung
started+=("$hung")
# A listener that takes the connection, says so in a file and never answers: the check
# would wait an hour.
rm -f "$work/check-reached"
python3 -c 'import socket,sys,time; s=socket.socket(); s.settimeout(120); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); c=s.accept(); open(sys.argv[2], "w").close(); time.sleep(120)' \
    "$silent" "$work/check-reached" >/dev/null 2>&1 &
silent_pid=$!
podman run -d --name "$hung" --network host -e MYHOSTNAME=mx.example.com -e SMTP_LISTEN="127.0.0.1:$(free_port)" \
    -e SWIFTDROP_SERVER_LISTEN="127.0.0.1:$(free_port)" -e SWIFTDROP_SERVER_RELAY="127.0.0.1:$(free_port)" \
    -e SWIFTDROP_HUNG_RECIPIENTS=hung@example.com -e SWIFTDROP_HUNG_BACKEND=swift \
    -e SWIFTDROP_HUNG_AUTHURL="http://127.0.0.1:$silent/auth/v1.0" -e SWIFTDROP_HUNG_USER=test:tester \
    -e SWIFTDROP_HUNG_KEY=testing -e SWIFTDROP_HUNG_CONTAINER=mail -e SWIFTDROP_HUNG_TIMEOUT=1h \
    localhost/swiftdrop:test >/dev/null
for _ in $(seq 1 120); do [ -e "$work/check-reached" ] && break; sleep 0.5; done
[ -e "$work/check-reached" ] || fail "the gateway's store check never reached the silent Swift"
# Without the entrypoint's signal handling this stop ends by SIGKILL after 20 s: exit 137.
podman stop -t 20 "$hung" >/dev/null
code=$(podman inspect -f '{{.State.ExitCode}}' "$hung")
kill "$silent_pid" 2>/dev/null || true
[ "$code" = 0 ] || { podman logs "$hung" | tail -5 >&2; fail "a stop during the store check: exit $code"; }

# --- 4. Swift, configured by environment only ---------------------------------------------------
if [ -z "${TEST_SWIFT_PORT:-}" ]; then
    echo "tests/container: the Swift part needs TEST_SWIFT_PORT (tests/run.sh's Swift): not run"
else
    step "the gateway stores into Swift, configured by environment only"
    port=$(free_port)
    swift=swiftdrop-ct-swift
    container="ct$(date +%s)"
    started+=("$swift")
    # The host's network: Swift listens on the host's loopback.
    podman run -d --name "$swift" --network host \
        -e MYHOSTNAME=mx.example.com -e RELAY_DOMAINS=example.com -e SMTP_LISTEN="127.0.0.1:$port" \
        -e SWIFTDROP_SERVER_LISTEN="127.0.0.1:$(free_port)" -e SWIFTDROP_SERVER_RELAY="127.0.0.1:$(free_port)" \
        -e SWIFTDROP_OURS_RECIPIENTS=ours@example.com -e SWIFTDROP_OURS_BACKEND=swift \
        -e SWIFTDROP_OURS_AUTHURL="http://127.0.0.1:$TEST_SWIFT_PORT/auth/v1.0" \
        -e SWIFTDROP_OURS_USER=test:tester -e SWIFTDROP_OURS_KEY=testing \
        -e SWIFTDROP_OURS_CONTAINER="$container" -e SWIFTDROP_OURS_CREATE_CONTAINER=yes \
        localhost/swiftdrop:test >/dev/null
    wait_greeting "$port" "$swift"
    reply=$(send "$port" sender@example.net ours@example.com "stored in swift")
    expect "stored in Swift" "$reply" "250 2.0.0 Ok: stored as cur/"
    key=${reply#250 2.0.0 Ok: stored as }
    token=$(curl -sf -D - -o /dev/null -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' \
        "http://127.0.0.1:$TEST_SWIFT_PORT/auth/v1.0" | tr -d '\r' | sed -n 's/^[Xx]-[Aa]uth-[Tt]oken: //p')
    object=$(curl -sf -H "X-Auth-Token: $token" "http://127.0.0.1:$TEST_SWIFT_PORT/v1/AUTH_test/$container/$key")
    case $object in
        "Return-Path: <sender@example.net>"*"Subject: stored in swift"*) ;;
        *) fail "the object in Swift: $object" ;;
    esac
    stopped_with_0 "$swift"
fi
echo "tests/container: passed"
