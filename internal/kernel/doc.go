// Package kernel is banger's kernel store: guest kernels kept under
// <state>/kernels/NAME/ (vmlinuz + modules/RELEASE/ + modules.ext4, a
// read-only image of the modules tree given to guests), recorded in the
// store's kernels table, with the initramfs each boot needs generated from
// them (package initrd) and cached by content.
//
// Kernels come in by import (a kernel file with a modules directory or a
// Debian kernel package) or pull: a bundle from the kernel catalog
// ([kernel] catalog_url, else the one compiled in; .tar.zst of
// manifest.json, vmlinuz and modules/RELEASE/, size and sha256 checked
// while it downloads, then unpacked refusing anything but directories and
// the regular files the manifest lists), or, when the catalog has no bundle
// for the name or its download fails, the Debian cloud kernel from the
// host's apt sources (apt-get download + dpkg-deb -x, nothing installed).
// Concurrent pulls of one name run once. All of them stage everything in
// a temporary directory inside the store, check that the modules banger's
// initramfs needs resolve, then rename the directory into place and record
// the row; on failure or cancel the staging directories are removed and
// nothing else changed.
//
// Lock order: Store.pullMu (the running pulls by name) is only held to
// join or leave a pull, never while taking another lock; Store.mu (one
// import/remove, or a pull's install, at a time) is taken before any store
// (SQLite) call; Store.imgMu (one lazy modules image build) is never held
// with Store.mu; nothing here takes VM locks. A bundle downloads and
// unpacks without Store.mu.
//
//	store.go    Store: Import, Remove, List, Get, Initramfs; the apt pull
//	pull.go     Pull: joining running pulls, bundle catalog, bundle download → import, apt fallback; Available
//	bundle.go   kernel bundles: WriteBundle (`kernel bundle`), UnpackBundle (checked entries only)
//	modimage.go the modules image (modules.ext4): built at import, or lazily for older kernels
//	source.go   reading sources: kernel file checks, bzImage version, modules tree, .deb unpack, copying
//	apt.go      the host's apt: resolving linux-image-cloud-amd64, apt-get download
//	catalog.go  kernels `kernel pull` knows by name with a Debian package
package kernel
