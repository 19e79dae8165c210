#!/usr/bin/env bash
# moto's S3 server, an S3 that behaves as AWS does, for tests/it/aws_s3.rs (each test starts
# its own on a free port and stops it).
#
#   tests/s3/moto.sh install     installs it (root, Debian: python3-venv from apt, moto from
#                                PyPI into a virtual environment) and prints the server's path
#
# MOTO_VENV: where the virtual environment lives (default /opt/swiftdrop-test/moto; kept, so
# that a second run installs nothing).
set -euo pipefail
venv=${MOTO_VENV:-/opt/swiftdrop-test/moto}
# The version the tests were written against: a newer moto may change what it checks.
version=5.2.1

case "${1:-}" in
install)
    if ! "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$version')" 2>/dev/null; then
        if ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null \
                || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; }
        fi
        rm -rf "$venv"
        /usr/bin/python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$version" >&2
    fi
    echo "$venv/bin/moto_server"
    ;;
*)
    echo "usage: $0 install" >&2
    exit 2
    ;;
esac
