#!/usr/bin/env bash
# Installs the Prometheus server (Debian package `prometheus`) when it is missing.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
echo "==> installing the Prometheus server (Debian package prometheus)" >&2
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
  command -v sudo >/dev/null || { echo "error: prometheus is missing and this user cannot install it: run 'apt-get install prometheus' as root" >&2; exit 1; }
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends: the server and promtool only, no node exporter; the package's own service is not started here.
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v prometheus >/dev/null || { echo "error: apt-get installed prometheus but the binary is not on PATH" >&2; exit 1; }
echo "==> prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}') installed" >&2
