// Package image keeps banger's managed images and builds them: a registry
// image pulled, flattened and turned into an ext4 root filesystem (with
// package oci), with banger's guest files injected. It holds no database
// state; package vm records images in the store and runs pulls as
// asynchronous operations.
//
// Files:
//
//	store.go   Store: one directory per image under the state dir's images/;
//	           new images are staged in images/.staging-* and renamed into
//	           place; deletes rename aside first; stale staging removed on start.
//	pull.go    BuildFromOCI: pull (blob cache shared by all pulls, held
//	           read-locked against a prune), flatten, inject, build ext4, as
//	           named stages with byte progress; image.json metadata.
//	inject.go  GuestFiles and Inject: what a pulled image gets so banger can
//	           boot and reach it (sshd settings and per-VM host keys, volatile
//	           journal, empty fstab and machine-id, systemd-networkd enabled);
//	           files embedded from guest/. SeedFromTree: the image's /root
//	           kept as its work seed (the work disk mounted on /root hides it).
//	catalog.go Catalog: bundles by name (name, description, url, sha256,
//	           size); the image and kernel catalogs embedded from catalog/,
//	           or fetched from a configured URL.
//	bundle.go  bundles (.tar.zst of manifest.json, rootfs.ext4 and an
//	           optional work-seed.tar): WriteBundle, Download (size and
//	           sha256 checked before anything is opened), Unpack (only the
//	           expected regular files; rootfs written sparse), ExtractSeed;
//	           the pieces kernel bundles share: WriteTarZst, AddJSON,
//	           AddFile, AddTree, OpenTarZst.
package image
