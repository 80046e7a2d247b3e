// Package guestfiles holds the configuration files banger puts into every
// Debian guest root filesystem it builds: the test guest
// (test/fixture/build-guest.sh reads rootfs/ from the checkout) and the
// default image recipes (package recipe embeds them).
//
// Files:
//
//	guestfiles.go  FS: the tree under rootfs/, embedded.
//	rootfs/        the files, at their path in the guest: sshd settings
//	               (ed25519 host key made per VM on first start), a volatile
//	               journal, the locale, and kvm blacklisted (nested
//	               virtualisation cannot work in banger's guests).
//
// Every file is installed root-owned with mode 0644 (directories 0755).
package guestfiles

import (
	"embed"
	"io/fs"
)

//go:embed all:rootfs
var files embed.FS

// FS returns the guest files; paths are relative to the guest's /, e.g.
// "etc/ssh/sshd_config.d/10-banger.conf".
func FS() fs.FS {
	sub, err := fs.Sub(files, "rootfs")
	if err != nil {
		panic(err) // rootfs is embedded above
	}
	return sub
}
