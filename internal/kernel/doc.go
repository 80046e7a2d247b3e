// Package kernel is banger's kernel store: guest kernels kept under
// <state>/kernels/NAME/ (vmlinuz + modules/RELEASE/ + modules.ext4, a
// read-only image of the modules tree given to guests), recorded in the
// store's kernels table, with the initramfs each boot needs generated from
// them (package initrd) and cached by content.
//
// Kernels come in by import (a kernel file with a modules directory or a
// Debian kernel package) or pull (the Debian cloud kernel from the host's
// apt sources: apt-get download + dpkg-deb -x, nothing installed). Both
// stage everything in a temporary directory inside the store, check that
// the modules banger's initramfs needs resolve, then rename the directory
// into place and record the row; on failure or cancel the staging
// directory is removed and nothing else changed.
//
// Lock order: Store.mu (one import/pull/remove at a time) is taken before
// any store (SQLite) call; Store.imgMu (one lazy modules image build) is
// never held with Store.mu; nothing here takes VM locks.
//
//	store.go    Store: Import, Pull, Remove, List, Get, Initramfs
//	modimage.go the modules image (modules.ext4): built at import, or lazily for older kernels
//	source.go   reading sources: kernel file checks, bzImage version, modules tree, .deb unpack, copying
//	apt.go      the host's apt: resolving linux-image-cloud-amd64, apt-get download
//	catalog.go  kernels `kernel pull` knows by name
package kernel
