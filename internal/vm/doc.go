// Package vm orchestrates VM lifecycles: create (an asynchronous operation
// with named stages and rollback), start, stop, restart, kill, delete, set,
// prune, and reconcile on daemon start. It composes stateless helpers:
// store (durable intent), disk (root and work disks), Deps.Host (the
// root-only work — bridge, taps, firewall — through privileged.Ops, in-process
// or via the root helper), vmm drivers (the machine), guest (SSH readiness
// and commands).
//
// Files:
//
//	service.go    Service, per-VM locks, views
//	names.go      VM name validation and generation
//	validate.go   request validation (daemon-side, before anything is created)
//	stages.go     stage timing and reporting
//	ops.go        asynchronous operations: begin / status / wait / cancel
//	create.go     create: reserve, disks, network, launch, wait for guest
//	lifecycle.go  start, stop, restart, kill, and the exit watcher
//	remove.go     delete, prune, and reconcile (adopting running VMMs, cleaning up after dead ones)
//	set.go        changing a stopped VM's resources
//	netopts.go    NAT and published ports of a running VM
//	ports.go      the guests' listening sockets
//	images.go     image registration, list, show, delete
//	imagepull.go  image pull from a registry (asynchronous, staged, rolled back), promote, cache prune
//	imagebundle.go catalog bundle pulls (joined when concurrent; recipe fallback when the download fails)
//	imagedefaults.go the kernel pulled images boot, recipe builds, the default image's names
//	exec.go       commands through the guest agent (one shared connection per VM)
//	workspace.go  workspaces: copy a host tree in, export the guest's changes
//
// # Locks
//
// Lock order (take left before right, never the reverse):
//
//	vmLock (one VM's lifecycle lock) → Service.reserve → Service.mu
//	Service.agentMu is a leaf: nothing else is taken while it is held.
//	Service.images.blobs (RWMutex: pulls read the blob cache, a prune writes)
//	is taken alone, never with the locks above; prune only try-locks it.
//
// Service.reserve also guards images.busy, the names of images being pulled
// or promoted (a busy name cannot be registered, pulled or deleted), and
// images.bundlePulls. A catalog pull begins its operation while holding
// Service.reserve (so a second pull of the name finds it), which takes the
// operation table's own lock: Service.reserve → opTable.mu, never reversed.
//
// A goroutine holds at most one vmLock at a time. A vmLock is a one-slot
// semaphore so an RPC waiting for it gives up when its client goes away. A
// create holds its VM's lock until the guest is up; calls on a VM that is
// still creating are refused at once instead of queued behind it. Service.reserve is the
// narrow reservation lock that makes name uniqueness and address allocation
// atomic with the row insert. Service.mu guards only the in-memory map of
// vmLocks and live machines; it is never held across I/O. The store has its
// own internal serialisation and may be called under any of these locks.
package vm
