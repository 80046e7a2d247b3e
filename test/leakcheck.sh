#!/usr/bin/env bash
# leakcheck.sh — the suite-wide leak check.
#
#   test/leakcheck.sh snapshot FILE   record the host's resources before the tests
#   test/leakcheck.sh compare FILE    fail if anything appeared since the snapshot
#
# Resources: network namespaces, links, loop devices, device-mapper devices,
# mounts, and processes of banger or QEMU. Each test package has its own
# check too; this one also catches what falls between them.
set -euo pipefail

inventory() {
	ip netns list 2>/dev/null | awk '{print "netns " $1}'
	ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print "link " $2}'
	losetup -n -O NAME,BACK-FILE 2>/dev/null | awk '{print "loop " $1 " " $2}'
	if dmsetup ls >/dev/null 2>&1; then dmsetup ls | awk '$1 != "No" {print "dm " $1}'; fi
	awk '{print "mount " $2}' /proc/self/mounts
	# Zombies hold no resources (their parent may be a reaper outside the tests).
	ps -eo pid=,stat=,args= | awk '$2 !~ /^Z/ && ($3 ~ /(qemu-system|bangerd|firecracker)/ || $0 ~ /banger(test|bench)/) {print "process " $0}'
}

case ${1:-} in
snapshot) inventory | sort >"$2" ;;
compare)
	new=$(comm -13 "$2" <(inventory | sort) | grep -v "process .*leakcheck" || true)
	if [[ -n $new ]]; then
		echo "LEAK CHECK FAILED: the tests left these behind:" >&2
		sed 's/^/  /' <<<"$new" >&2
		exit 1
	fi
	echo "leak check passed: no namespace, link, loop or dm device, mount or VMM process was left" >&2
	;;
*) echo "usage: $0 snapshot|compare FILE" >&2; exit 2 ;;
esac
