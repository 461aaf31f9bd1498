#!/usr/bin/env bash
# The test command of README.md, and what CI runs. As root it installs the
# Debian packages the system tests use, creates the unprivileged user the
# rootless tests run as (`sytest`), makes /dev/net/tun 0666 as common
# distributions do, then runs the whole test suite. Namespace tests fail (not
# skip) when CI=true and they cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(iproute2 iputils-ping iperf3 dnsutils netcat-openbsd curl ethtool procps util-linux passwd protobuf-compiler etcd-server)

if [ "$(id -u)" -eq 0 ]; then
    missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    id sytest >/dev/null 2>&1 || useradd --create-home --shell /bin/bash sytest
    chmod 0666 /dev/net/tun
    # The unprivileged user must be able to run the test binaries from here.
    chmod o+rx "$PWD" || true
else
    echo "note: not root; namespace system tests will be skipped (they need root to create test namespaces)" >&2
fi

cargo test --release "$@"
