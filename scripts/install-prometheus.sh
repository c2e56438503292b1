#!/usr/bin/env bash
# Install Debian's `prometheus` package (it ships `prometheus` and `promtool`) for the test suite:
# tests/integration/test_prometheus.py starts its own Prometheus on loopback and runs
# `promtool check metrics` on the worker's /metrics output.
#
# Idempotent: does nothing when both binaries are already on PATH. Never leaves the package's
# system service running (it would listen on :9090): service starts are blocked with a temporary
# policy-rc.d during the install, and a service that runs anyway is stopped afterwards.
# Needs root (or passwordless sudo) only when something has to be installed.
set -euo pipefail

have_tools() { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }

if have_tools; then
    echo "install-prometheus: prometheus and promtool already installed ($(command -v prometheus), $(command -v promtool))"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        cat >&2 <<'MSG'
install-prometheus: `prometheus` and `promtool` are not installed, and installing them needs root.
  The Prometheus integration test (tests/integration/test_prometheus.py) needs both. Run as root:
      apt-get update && apt-get install -y --no-install-recommends prometheus
  or: sudo scripts/install-prometheus.sh
MSG
        exit 1
    fi
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-prometheus: apt-get not found; install Prometheus (prometheus + promtool) by other means and put both on PATH" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# Block service starts from the package's maintainer scripts (invoke-rc.d / deb-systemd-invoke
# honour policy-rc.d). Only when no policy-rc.d exists; remove ours again on exit.
POLICY=/usr/sbin/policy-rc.d
OUR_POLICY=""
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# temporary, from sms-connector scripts/install-prometheus.sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 755 "$POLICY"
    OUR_POLICY=1
fi
cleanup() { if [ -n "$OUR_POLICY" ]; then $SUDO rm -f "$POLICY"; fi; }
trap cleanup EXIT

install_pkg() {
    $SUDO apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold prometheus
}

# apt-get update only when needed: no package lists yet, the package unknown, or the install
# fails on stale lists.
if ! apt-cache show prometheus >/dev/null 2>&1; then
    echo "install-prometheus: apt-get update"
    $SUDO apt-get update -q
fi
echo "install-prometheus: apt-get install prometheus"
if ! install_pkg; then
    echo "install-prometheus: install failed; apt-get update and retry"
    $SUDO apt-get update -q
    install_pkg
fi

# If the package's service got started anyway (an existing policy-rc.d allowed it, or systemd
# started it), stop it: it would hold :9090 and scrape nothing we care about.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl stop prometheus.service >/dev/null 2>&1 || true
    $SUDO systemctl disable prometheus.service >/dev/null 2>&1 || true
fi
if [ -x /etc/init.d/prometheus ]; then
    $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi
if [ -f /run/prometheus.pid ] || [ -f /run/prometheus/prometheus.pid ]; then
    for pidfile in /run/prometheus.pid /run/prometheus/prometheus.pid; do
        if [ -f "$pidfile" ]; then
            pid=$(cat "$pidfile")
            if [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = prometheus ]; then
                $SUDO kill "$pid" 2>/dev/null || true
            fi
        fi
    done
fi

hash -r
if ! have_tools; then
    echo "install-prometheus: the prometheus package is installed but prometheus/promtool are not on PATH" >&2
    exit 1
fi
echo "install-prometheus: $(prometheus --version 2>&1 | head -n1)"
echo "install-prometheus: promtool at $(command -v promtool)"
