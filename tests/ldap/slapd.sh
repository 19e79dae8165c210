#!/usr/bin/env bash
# A private OpenLDAP server (Debian's slapd 2.5) on loopback for the Mattermost sink's
# authorisation tests: suffix dc=example,dc=com, root cn=admin,dc=example,dc=com with
# password `secret`, the memberof overlay, no anonymous reads (anonymous clients may bind
# only), and a small directory:
#
#   users (ou=people, inetOrgPerson with mail): alice, bob, carol, dave, erin, mallory,
#     svc-reader (svc-reader has the password `reader`, for tests that bind as a service
#     account)
#   groups (ou=groups, groupOfNames): jira-oncall (dave), jira-users (alice, mallory and the
#     group jira-oncall: dave is in it through it), splunk-users (bob),
#     mattermost-blacklist (mallory), loop-a (carol, loop-b) and loop-b (loop-a): a circle;
#   posixGroup splunk-unix (memberUid erin)
#
# Configuration, data and pid file in DIR; no systemd, nothing in /etc/ldap changed.
#
#   slapd.sh install          installs slapd and ldap-utils if missing (no directory set up)
#   slapd.sh start DIR PORT   writes the configuration, starts it on ldap://127.0.0.1:PORT/,
#                             seeds the directory; returns when it answers
#   slapd.sh stop DIR         stops it (by its pid) and waits for it to exit
set -euo pipefail
. "$(dirname "$0")/../lib/daemon.sh"

SUFFIX=dc=example,dc=com
ROOT=cn=admin,$SUFFIX

usage() { echo "usage: $0 install | start DIR PORT | stop DIR" >&2; exit 2; }

install() {
    command -v slapd >/dev/null && command -v ldapadd >/dev/null && return 0
    echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
    apt_install_no_start slapd ldap-utils
}

start() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    dir=$(realpath "$dir")
    rm -rf "$dir/data"
    mkdir -p "$dir/data"
    cat > "$dir/slapd.conf" <<CONF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile $dir/slapd.pid
database mdb
maxsize 67108864
suffix "$SUFFIX"
rootdn "$ROOT"
rootpw secret
directory $dir/data
overlay memberof
# As a real directory: anonymous clients may only bind (and read the root DSE).
access to dn.base="" by * read
access to * by anonymous auth by * read
CONF
    slaptest -Q -f "$dir/slapd.conf" -u
    slapd -f "$dir/slapd.conf" -h "ldap://127.0.0.1:$port/"
    local ready=
    for _ in $(seq 1 200); do
        if ldapsearch -x -H "ldap://127.0.0.1:$port" -b "" -s base >/dev/null 2>&1; then
            ready=1
            break
        fi
        sleep 0.05
    done
    [ -n "$ready" ] || { echo "slapd.sh: slapd does not answer on 127.0.0.1:$port" >&2; return 1; }
    seed > "$dir/seed.ldif"
    ldapadd -x -H "ldap://127.0.0.1:$port" -D "$ROOT" -w secret -f "$dir/seed.ldif" >/dev/null
}

seed() {
    cat <<LDIF
dn: $SUFFIX
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,$SUFFIX
objectClass: organizationalUnit
ou: people

dn: ou=groups,$SUFFIX
objectClass: organizationalUnit
ou: groups

LDIF
    local name
    for name in alice bob carol dave erin mallory svc-reader; do
        cat <<LDIF
dn: uid=$name,ou=people,$SUFFIX
objectClass: inetOrgPerson
uid: $name
cn: $name
sn: $name
mail: $name@example.com
LDIF
        [ "$name" = svc-reader ] && echo "userPassword: reader"
        echo
    done
    group jira-oncall dave
    group jira-users alice mallory cn=jira-oncall
    group splunk-users bob
    group mattermost-blacklist mallory
    group loop-a carol cn=loop-b
    group loop-b cn=loop-a
    cat <<LDIF
dn: cn=splunk-unix,ou=groups,$SUFFIX
objectClass: posixGroup
cn: splunk-unix
gidNumber: 5000
memberUid: erin

LDIF
}

group() { # name members...
    local name=$1; shift
    echo "dn: cn=$name,ou=groups,$SUFFIX"
    echo "objectClass: groupOfNames"
    echo "cn: $name"
    local member
    for member in "$@"; do
        case $member in
            cn=*) echo "member: $member,ou=groups,$SUFFIX" ;;
            *) echo "member: uid=$member,ou=people,$SUFFIX" ;;
        esac
    done
    echo
}

stop() {
    stop_pidfile "$1/slapd.pid"
}

case ${1:-} in
    install) install ;;
    start) [ $# -eq 3 ] || usage; start "$2" "$3" ;;
    stop) [ $# -eq 2 ] || usage; stop "$2" ;;
    *) usage ;;
esac
