#!/bin/sh
# The Sippy B2BUA 2.5 (PyPI `sippy`, in the project's venv) as bench/calls.py
# runs it: one UDP listener on 127.0.0.1, every call routed to one answering
# SIPp, no authentication and no accounting (both would need a Radius
# server), and no per-message logging (SIPLOG_BEND=none: without it every
# message is logged and the B2BUA is slower; notes/peers.md).
#
#     bench/sippy/b2bua.sh PORT ROUTE_HOST:ROUTE_PORT WORKDIR
#
# Foreground (-f), so the caller owns the process: `exec` keeps its pid.
set -eu
if [ "$#" -ne 3 ]; then
    echo "usage: $0 PORT ROUTE_HOST:ROUTE_PORT WORKDIR" >&2
    exit 2
fi
port=$1
route=$2
work=$3
here=$(cd "$(dirname "$0")" && pwd)
b2bua=${B2BUA:-$here/../../.venv/bin/b2bua}
mkdir -p "$work"
SIPLOG_BEND=none
export SIPLOG_BEND
exec "$b2bua" -f \
    --sip_address=127.0.0.1 --sip_port="$port" \
    --static_route="$route" \
    --auth_enable=off --acct_enable=off \
    --b2bua_socket="$work/b2bua.sock" \
    --logfile="$work/b2bua.log" --pidfile="$work/b2bua.pid"
