#!/usr/bin/env bash
# try.sh — from a fresh Debian machine to a command running in a banger VM:
# installs host packages, builds banger into ./bin, boots a VM named "try"
# from the default image and runs a command in it.
#
# Usage: sudo scripts/try.sh [-- COMMAND ARGS...]    (default: uname -a)
#
# On first use `banger vm create` gets the default image itself: the Debian
# cloud kernel from the host's apt sources and the debian-bookworm image built
# from the host's Debian packages (a few minutes, once; cached by banger).
# The VM is left running: `bin/banger vm ssh try` opens a shell in it and
# `bin/banger vm delete --force try` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "try.sh: run as root (sudo): banger needs a bridge and taps" >&2; exit 1; }

source scripts/host-deps.sh
echo "==> building banger into ./bin" >&2
go build -o bin/ ./cmd/banger ./cmd/bangerd
CGO_ENABLED=0 go build -o bin/ ./cmd/banger-agent ./cmd/banger-init # run in guests: static

banger=bin/banger
if $banger vm show try >/dev/null 2>&1; then
	echo "==> replacing the VM 'try' from an earlier run" >&2
	$banger vm delete --force try
fi
$banger vm create --name try
[[ ${1:-} != -- ]] || shift
(($#)) || set -- uname -a
echo "==> banger vm ssh try -- $*" >&2
$banger vm ssh try -- "$@"
