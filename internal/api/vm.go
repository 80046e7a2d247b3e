package api

import "time"

const (
	MethodVMCreate  = "vm.create" // returns an Op (asynchronous)
	MethodVMStart   = "vm.start"  // streams EventStage; returns VM
	MethodVMStop    = "vm.stop"
	MethodVMRestart = "vm.restart"
	MethodVMKill    = "vm.kill"
	MethodVMDelete  = "vm.delete"
	MethodVMList    = "vm.list"
	MethodVMShow    = "vm.show"
	MethodVMLogs    = "vm.logs" // streams EventLog when Follow; returns LogChunk
	MethodVMSet     = "vm.set"
	MethodVMPrune   = "vm.prune"
	MethodVMSSHInfo = "vm.ssh_info"
	// MethodVMSSHCheck does an SSH handshake with the guest and returns the
	// precise error (e.g. a changed host key) when it fails.
	MethodVMSSHCheck = "vm.ssh_check"
	// MethodVMExec runs a command through the guest agent; it streams
	// EventOutput and returns VMExecResult.
	MethodVMExec = "vm.exec"
	// MethodVMNetwork changes NAT and published ports (VMNetworkParams → VM).
	MethodVMNetwork = "vm.network"
	// MethodVMPorts lists guests' listening sockets (VMPortsParams → []VMPort).
	MethodVMPorts = "vm.ports"
	// Workspaces: prepare streams EventProgress and returns WorkspacePrepareResult.
	MethodVMWorkspacePrepare = "vm.workspace.prepare"
	MethodVMWorkspaceExport  = "vm.workspace.export"
)

// VM states.
const (
	StateCreating = "creating"
	StateStopped  = "stopped"
	StateStarting = "starting"
	StateRunning  = "running"
	StateStopping = "stopping"
)

// VM is the daemon's view of one virtual machine.
type VM struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	State string `json:"state"`
	Image string `json:"image"`
	VCPU  int    `json:"vcpu"`
	// MemoryMiB is guest RAM in MiB.
	MemoryMiB int `json:"memory_mib"`
	// DiskSizeBytes is the root disk's virtual size; WorkSizeBytes the /root disk's.
	DiskSizeBytes int64  `json:"disk_size_bytes"`
	WorkSizeBytes int64  `json:"work_size_bytes"`
	IP            string `json:"ip"`
	MAC           string `json:"mac"`
	Tap           string `json:"tap"`
	// Driver is the VMM driver; Accel is "kvm" or "tcg" while running.
	Driver string `json:"driver"`
	Accel  string `json:"accel,omitempty"`
	// RootBackend is the copy-on-write backend of the root disk.
	RootBackend string `json:"root_backend"`
	RootPath    string `json:"root_path"`
	WorkPath    string `json:"work_path"`
	ConsoleLog  string `json:"console_log"`
	PID         int    `json:"pid,omitempty"`
	// BootID is the guest kernel's boot_id, read when the guest became ready.
	BootID    string    `json:"boot_id,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	StartedAt time.Time `json:"started_at,omitempty"`
	// Stages are the timings of the last create or start.
	Stages    []Stage `json:"stages,omitempty"`
	LastError string  `json:"last_error,omitempty"`
	// NAT and Publish are the VM's network options (see VMCreateParams).
	NAT     bool     `json:"nat,omitempty"`
	Publish []string `json:"publish,omitempty"`
	// Agent: the running guest has banger's agent (vm exec goes through it).
	Agent bool `json:"agent,omitempty"`
	// Workspace is the repository copied in, if any.
	Workspace *Workspace `json:"workspace,omitempty"`
}

// Workspace records a host directory copied into a VM.
type Workspace struct {
	// Source is the host work tree (resolved, absolute); Dest the guest directory.
	Source string `json:"source"`
	Dest   string `json:"dest"`
	// Mode is "git" (tracked files and history) or "plain" (a directory
	// outside any git work tree, copied whole).
	Mode string `json:"mode"`
	// Subdir is where in Dest the given path lies: commands start there.
	Subdir string `json:"subdir,omitempty"`
	// BaseCommit is the commit the guest's HEAD started at (the host's
	// HEAD); Snapshot is a guest commit of the tree exactly as copied.
	// Export defaults to Snapshot: only what changed in the guest.
	BaseCommit string    `json:"base_commit,omitempty"`
	Snapshot   string    `json:"snapshot,omitempty"`
	Branch     string    `json:"branch,omitempty"`
	Files      int       `json:"files"`
	Bytes      int64     `json:"bytes"`
	PreparedAt time.Time `json:"prepared_at"`
}

// VMCreateParams creates a VM. Zero values take the config defaults.
type VMCreateParams struct {
	// Name is a DNS label (1-63 of [a-z0-9-], no leading or trailing '-');
	// generated when empty.
	Name  string `json:"name,omitempty"`
	Image string `json:"image,omitempty"`
	// VCPU is the number of virtual CPUs; nil takes the config default.
	VCPU *int `json:"vcpu,omitempty"`
	// Memory and sizes accept "512M", "1GiB", or bytes.
	Memory   string `json:"memory,omitempty"`
	DiskSize string `json:"disk_size,omitempty"`
	WorkSize string `json:"work_size,omitempty"`
	// NoStart prepares the VM (disks) without booting it.
	NoStart bool `json:"no_start,omitempty"`
	// NAT lets the guest reach the outside through the host (masquerade).
	NAT bool `json:"nat,omitempty"`
	// Publish maps host ports to guest ports: "[hostip:]hostport:guestport[/tcp|udp]".
	Publish []string `json:"publish,omitempty"`
	// KeepFailed keeps a VM whose guest never became ready, stopped and with
	// its console log, instead of rolling it back, so the failure can be
	// read. A cancel still removes everything.
	KeepFailed bool `json:"keep_failed,omitempty"`
}

// VMRef names one VM.
type VMRef struct {
	Name string `json:"name"`
}

// VMStopParams stops a VM gracefully; after Timeout seconds (default 60)
// the VMM is told to quit and then killed.
type VMStopParams struct {
	Name           string `json:"name"`
	TimeoutSeconds int    `json:"timeout_seconds,omitempty"`
}

// VMKillParams sends a signal to the VMM (default SIGKILL).
type VMKillParams struct {
	Name   string `json:"name"`
	Signal string `json:"signal,omitempty"` // e.g. "KILL", "SIGTERM", "9"
}

// VMDeleteParams deletes a VM and everything banger made for it. A running
// VM is refused unless Force, which kills it first.
type VMDeleteParams struct {
	Name  string `json:"name"`
	Force bool   `json:"force,omitempty"`
}

// VMSetParams changes a stopped VM's resources. Sizes only grow.
type VMSetParams struct {
	Name     string `json:"name"`
	VCPU     int    `json:"vcpu,omitempty"`
	Memory   string `json:"memory,omitempty"`
	WorkSize string `json:"work_size,omitempty"`
}

// VMPruneResult lists the VMs prune deleted.
type VMPruneResult struct {
	Deleted []string `json:"deleted"`
}

// VMLogsParams reads the serial console log.
type VMLogsParams struct {
	Name string `json:"name"`
	// Tail limits the initial read to the last Tail bytes (0: all).
	Tail   int64 `json:"tail,omitempty"`
	Follow bool  `json:"follow,omitempty"`
}

// LogChunk is a piece of console output.
type LogChunk struct {
	Data string `json:"data"`
}

// SSHInfo is what a client needs to run the system ssh against a VM.
type SSHInfo struct {
	Name       string `json:"name"`
	Host       string `json:"host"`
	User       string `json:"user"`
	KeyFile    string `json:"key_file"`
	KnownHosts string `json:"known_hosts"`
	// HostKeyAlias is the name the VM's host key is pinned under.
	HostKeyAlias string `json:"host_key_alias"`
}

// WorkspacePrepareParams copies a host directory into a running VM.
type WorkspacePrepareParams struct {
	Name string `json:"name"`
	// Path is the host directory, absolute (the CLI resolves it against
	// its working directory).
	Path string `json:"path"`
	// Dest is the guest directory (default /root/repo).
	Dest             string `json:"dest,omitempty"`
	IncludeUntracked bool   `json:"include_untracked,omitempty"`
	// Branch creates a guest-side branch at From (a host revision, default HEAD).
	Branch string `json:"branch,omitempty"`
	From   string `json:"from,omitempty"`
	// Replace an existing, non-empty Dest.
	Replace bool `json:"replace,omitempty"`
	// DryRun lists what would be sent; nothing is copied.
	DryRun bool `json:"dry_run,omitempty"`
}

// WorkspacePrepareResult is the prepared workspace, plus what a person
// should know (submodules, LFS, skipped files).
type WorkspacePrepareResult struct {
	Workspace Workspace `json:"workspace"`
	Warnings  []string  `json:"warnings,omitempty"`
	// Listing is the dry run's file list (DryRun only).
	Listing string `json:"listing,omitempty"`
}

// WorkspaceExportParams asks for the guest's changes as a patch.
type WorkspaceExportParams struct {
	Name string `json:"name"`
	// BaseCommit diffs against this commit instead of the workspace's
	// snapshot (e.g. the workspace's base_commit, to include the host's
	// uncommitted changes that were copied in).
	BaseCommit string `json:"base_commit,omitempty"`
	// Commits exports the guest's commits as an mbox for `git am`.
	Commits bool `json:"commits,omitempty"`
}

// WorkspaceExportResult carries the patch text (git's binary patches are ASCII).
type WorkspaceExportResult struct {
	Patch string `json:"patch"`
}

// Progress reports bytes moved by a long step (EventProgress).
type Progress struct {
	Phase string `json:"phase"`
	Bytes int64  `json:"bytes"`
	Total int64  `json:"total,omitempty"`
}

// VMExecParams runs a command in a running VM through its guest agent.
type VMExecParams struct {
	Name string   `json:"name"`
	Argv []string `json:"argv"`
	// Dir defaults to the workspace directory, else /root.
	Dir string   `json:"dir,omitempty"`
	Env []string `json:"env,omitempty"`
}

// VMExecResult is how the command ended: ExitCode is a shell's status
// (128+n after signal n).
type VMExecResult struct {
	ExitCode int    `json:"exit_code"`
	Signal   string `json:"signal,omitempty"`
}

// Output is a chunk of a command's output (EventOutput).
type Output struct {
	Stream string `json:"stream"` // "stdout" or "stderr"
	Data   []byte `json:"data"`
}

// VMPortsParams names the VMs whose ports to list (empty: every running VM).
type VMPortsParams struct {
	Names []string `json:"names,omitempty"`
}

// VMPort is a listening socket in a guest.
type VMPort struct {
	VM      string `json:"vm"`
	Proto   string `json:"proto"` // "tcp" or "udp"
	Port    int    `json:"port"`
	Address string `json:"address"` // the guest address it is bound to
	Process string `json:"process,omitempty"`
	// Endpoint is NAME.vm:PORT; Reachable is false for sockets bound to the
	// guest's loopback. URL is set when the port answers HTTP.
	Endpoint  string `json:"endpoint"`
	Reachable bool   `json:"reachable"`
	URL       string `json:"url,omitempty"`
}

// VMNetworkParams changes a VM's network options; a running VM's firewall
// follows at once.
type VMNetworkParams struct {
	Name          string   `json:"name"`
	NAT           *bool    `json:"nat,omitempty"`
	AddPublish    []string `json:"add_publish,omitempty"`
	RemovePublish []string `json:"remove_publish,omitempty"`
}
