#!/usr/bin/env bash
# test.sh — everything CI runs: host packages, build, static checks, unit
# tests (real loop devices, taps, QEMU, SQLite), the test guest fixture, the
# end-to-end suite that boots real guests, and a host-wide leak check.
#
# Usage: sudo scripts/test.sh
# Env:   BANGER_TEST_GUEST=DIR  use an already built guest instead of building/finding it
#        BANGER_TEST_DEFAULT_IMAGE=DIR  use an already built debian-bookworm image (test/fixture/build-default-image)
#        E2E_PARALLEL=N         guests booted at once (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "test.sh: run as root (sudo): the tests create taps, bridges, loop devices and namespaces" >&2; exit 1; }

step() { printf '\n==> %s (%ds)\n' "$*" "$SECONDS" >&2; }

step "host packages"
source scripts/host-deps.sh

snapshot=$(mktemp)
trap 'rm -f "$snapshot"' EXIT
test/leakcheck.sh snapshot "$snapshot"

step "build and static checks"
go build ./...
go vet ./...
unformatted=$(gofmt -l cmd internal test)
[[ -z $unformatted ]] || { echo "gofmt needed on: $unformatted" >&2; exit 1; }

step "test guest"
guest=${BANGER_TEST_GUEST:-$(bash test/fixture/build-guest.sh | tail -n1)}
export BANGER_TEST_GUEST=$guest
echo "guest: $guest" >&2

step "default image (debian-bookworm recipe; built once per recipe hash, ~2.5 min cold)"
default_image=${BANGER_TEST_DEFAULT_IMAGE:-$(go run ./test/fixture/build-default-image | tail -n1)}
export BANGER_TEST_DEFAULT_IMAGE=$default_image
echo "default image: $default_image" >&2

step "unit tests"
[[ -f ../shared/firecracker/firecracker-api.yaml ]] ||
	echo "NOTE: ../shared/firecracker/firecracker-api.yaml is missing: the Firecracker contract tests will skip" >&2
go test -count=1 -race ./internal/... ./cmd/...

step "banger doctor (no check may FAIL on a machine set up by this script)"
bindir=$(mktemp -d)
trap 'rm -f "$snapshot"; rm -rf "$bindir"' EXIT
go build -o "$bindir/" ./cmd/banger ./cmd/bangerd
CGO_ENABLED=0 go build -o "$bindir/" ./cmd/banger-agent ./cmd/banger-init
"$bindir/banger" doctor

step "end-to-end tests (real guests under QEMU)"
BANGER_E2E=1 BANGER_TEST_GUEST=$guest BANGER_TEST_DEFAULT_IMAGE=$default_image go test -count=1 -v -parallel "${E2E_PARALLEL:-3}" -timeout 25m ./test/e2e

step "leak check"
test/leakcheck.sh compare "$snapshot"
step "all tests passed"
