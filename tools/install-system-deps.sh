#!/bin/sh
# Installs the Debian packages the PBX and its tests need, when missing:
#   sip-tester (SIPp), baresip-core and linphone-cli (linphonec) for interop
#   tests, espeak-ng and sox for voice prompts and audio checks.
# As root it uses apt-get; otherwise it says what is missing and goes on
# (the interop tests then skip with that reason).
set -u
missing=""
command -v sipp >/dev/null 2>&1 || missing="$missing sip-tester"
command -v baresip >/dev/null 2>&1 || missing="$missing baresip-core"
command -v linphonec >/dev/null 2>&1 || missing="$missing linphone-cli"
command -v espeak-ng >/dev/null 2>&1 || missing="$missing espeak-ng"
command -v sox >/dev/null 2>&1 || missing="$missing sox"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq $missing >/dev/null \
        || { echo "apt-get install failed for:$missing" >&2; exit 1; }
else
    echo "not root: cannot install$missing; tests that need them will be skipped" >&2
fi
