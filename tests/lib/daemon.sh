# Shared by the test servers' scripts (tests/xmpp/prosody.sh, tests/ldap/slapd.sh): source it.

# Installs Debian packages without letting them start a system-wide service: policy-rc.d
# refuses every start (one that is already there, as in container images, is left as it is).
apt_install_no_start() { # packages...
    export DEBIAN_FRONTEND=noninteractive
    local policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    [ -n "$policy" ] && rm -f "$policy"
    return 0
}

# Stops the daemon whose pid FILE holds: SIGTERM, up to 10 s for it to exit, then SIGKILL;
# the file is removed.
stop_pidfile() { # file
    local file=$1 pid=
    [ -f "$file" ] && pid=$(cat "$file")
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 200); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$file"; return 0; }
        sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$file"
}
