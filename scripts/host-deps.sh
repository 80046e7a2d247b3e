#!/usr/bin/env bash
# host-deps.sh — install the Debian packages banger and its tests use.
# Idempotent: skips apt entirely when every package is already installed.
set -euo pipefail

PACKAGES=(
	qemu-system-x86 qemu-utils          # the QEMU driver, qcow2 overlays
	e2fsprogs xfsprogs                  # work disks (mkfs.ext4 -d), reflink tests on XFS
	iproute2 nftables                   # bridge, taps, network namespaces
	openssh-client                      # `banger vm ssh`
	dnsutils dnsmasq-base               # dig, and an upstream resolver, for the DNS tests
	debootstrap busybox-static cpio kmod # the test guest fixture (test/fixture)
	dmsetup util-linux procps zstd ca-certificates
)

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "host-deps: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "host-deps: Go is not installed (need Go 1.26: https://go.dev/doc/install)" >&2; exit 1; }
