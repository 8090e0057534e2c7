#!/bin/bash
# Install what the pipeline needs on Debian 12, as root: system packages and a Python venv
# in .venv. With --with-tests, also what the test suite needs. Safe to run again.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

requirements="requirements.txt"
if [ "${1:-}" = "--with-tests" ]; then
  requirements="requirements-test.txt"
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# packer: builds; qemu-*: the local target's VMs; xorriso: cloud-init seeds; mmdebstrap,
# e2fsprogs, fdisk: the debian12 base image; openssh-*: the test suite's SSH target; sudo:
# the verify suite's privilege step; nftables: checking the rendered ruleset.
apt-get install -y -q --no-install-recommends \
  packer qemu-system-x86 qemu-utils xorriso mmdebstrap e2fsprogs fdisk \
  openssh-client openssh-server sudo nftables ca-certificates git \
  python3 python3-venv python3-pip

if [ "$requirements" = requirements-test.txt ]; then
  # systemd-analyze: the tests verify the shipped systemd units; jq, openssl: the tests run
  # docs/consumers.md's signature check; chromium: the tests open verify/report.html in a
  # headless browser (counts, rows and filter as rendered, a screenshot); aide: the tests run
  # the rendered AIDE configuration on a tree of files (without aide-common: nothing of it runs
  # on this machine).
  apt-get install -y -q --no-install-recommends systemd jq openssl chromium aide
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r "$requirements"
echo "install.sh: ready (.venv/bin/invoke --list)"
