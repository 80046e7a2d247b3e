// Package recipe builds banger's default images from Debian packages. A
// recipe is data embedded in the binary (one directory per image); Build
// turns it into an image directory: rootfs.ext4, work-seed/ (the image's
// /root, applied to each new VM's work disk) and recipe.json.
//
//	r, err := recipe.Get("debian-bookworm")
//	res, err := recipe.Build(ctx, r, stagingDir, recipe.Options{}, runStage)
//
// Build needs root (debootstrap). Its stages, reported through a
// StageRunner, are "debootstrap" (minbase + the recipe's packages from the
// host's apt source), "configure" (banger's guest files and the recipe's
// overlay and dotfiles, units enabled/disabled/masked, generators off, SSH
// not waiting for the network, per-VM identity removed, caches trimmed),
// "work seed" and "build ext4" (oci.ScanDir + oci.BuildExt4: sized from the
// content, built without mounting, renamed into place).
//
// Files:
//
//	recipe.go         Recipe, Get, Names: recipe.toml parsed and checked; the
//	                  recipe hash (recipe files, guest files, build version).
//	build.go          Build and its stages; Manifest (recipe.json: hash,
//	                  package versions, sizes, stage timings).
//	exec.go           running tools with argv in their own process group
//	                  (killed as a group on cancel); detaching mounts under
//	                  the tree before anything is removed.
//	entry.go          Check: can this host build a recipe? (refused at once with
//	                  the fix when not; the daemon asks before a build)
//	cache.go          BuildCached: one build per recipe hash under a cache
//	                  directory (flock, staged, renamed): the daemon's recipe
//	                  cache, CI and tests.
//	debian-bookworm/  the default image: recipe.toml (suite, packages, units),
//	                  overlay/ (files over /), root/ (/root dotfiles: the work
//	                  seed) and an equivalent Dockerfile.
//
// banger's own guest configuration (sshd, journald, ...) comes from package
// guestfiles, shared with the test guest (test/fixture/build-guest.sh).
// Kernel modules are not part of an image: they come with the kernel.
package recipe
