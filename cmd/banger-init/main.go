// Command banger-init is PID 1 of banger's initramfs: it mounts the VM's
// root disk, applies the banger.* settings of the kernel command line and
// hands over to the root's systemd, or stays the guest's init for roots
// without one. See package banger/internal/bootinit.
//
// Build: CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" ./cmd/banger-init
package main

import (
	"fmt"
	"os"

	"banger/internal/bootinit"
)

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "banger-init: must run as PID 1 of banger's initramfs (it mounts, switches root and powers off)")
		os.Exit(2)
	}
	bootinit.Run()
}
