#!/usr/bin/env bash
# try.sh — from a fresh Debian machine to a command running in a banger VM:
# installs host packages, builds banger into ./bin, builds the test guest
# (Debian bookworm + cloud kernel; cached), registers it as the image
# "default", boots a VM named "try" and runs a command in it.
#
# Usage: sudo scripts/try.sh [-- COMMAND ARGS...]    (default: uname -a)
#
# The VM is left running: `bin/banger vm ssh try` opens a shell in it and
# `bin/banger vm delete --force try` removes it. Until the images issue ships
# a default image, the fixture guest stands in for it.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "try.sh: run as root (sudo): banger needs a bridge and taps" >&2; exit 1; }

source scripts/host-deps.sh
echo "==> building banger into ./bin" >&2
go build -o bin/ ./cmd/banger ./cmd/bangerd
CGO_ENABLED=0 go build -o bin/ ./cmd/banger-agent ./cmd/banger-init # run in guests: static
echo "==> building the guest (cached after the first run)" >&2
guest=$(bash test/fixture/build-guest.sh | tail -n1)

banger=bin/banger
if ! $banger kernel show fixture >/dev/null 2>&1; then
	$banger kernel import fixture --kernel "$guest/vmlinuz" --modules "$guest/modules"
fi
if ! $banger image show default >/dev/null 2>&1; then
	$banger image register --name default --rootfs "$guest/rootfs.ext4" --kernel-name fixture
fi
if $banger vm show try >/dev/null 2>&1; then
	echo "==> replacing the VM 'try' from an earlier run" >&2
	$banger vm delete --force try
fi
$banger vm create --name try
[[ ${1:-} != -- ]] || shift
(($#)) || set -- uname -a
echo "==> banger vm ssh try -- $*" >&2
$banger vm ssh try -- "$@"
