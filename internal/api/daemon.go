package api

import "time"

const (
	MethodDaemonStatus = "daemon.status"
	MethodDaemonStop   = "daemon.stop"
)

// DaemonStatus describes the running daemon.
type DaemonStatus struct {
	Version   string    `json:"version"`
	PID       int       `json:"pid"`
	StartedAt time.Time `json:"started_at"`
	Socket    string    `json:"socket"`
	StateDir  string    `json:"state_dir"`
	// VMM is the driver in use and why it was chosen.
	VMM       string `json:"vmm"`
	VMMReason string `json:"vmm_reason"`
	// Accel is the accelerator the driver uses ("kvm" or "tcg") and why.
	Accel       string `json:"accel"`
	AccelReason string `json:"accel_reason"`
	// DiskBackend is the root disk backend "auto" resolves to, and why.
	DiskBackend       string `json:"disk_backend"`
	DiskBackendReason string `json:"disk_backend_reason"`
	// SSHKey and KnownHosts are the daemon's SSH identity and the file its
	// guests' host keys are pinned in (as NAME.vm).
	SSHKey     string `json:"ssh_key"`
	KnownHosts string `json:"known_hosts"`
	// DNS is where the NAME.vm server listens, or why it does not.
	DNS string `json:"dns"`
	// TapPool is "READY/SIZE ready" for the warm tap pool, or "off".
	TapPool    string `json:"tap_pool"`
	VMsRunning int    `json:"vms_running"`
	VMsTotal   int    `json:"vms_total"`
}

// DaemonStopParams asks the daemon to exit. Running VMs keep running.
type DaemonStopParams struct {
	// Cleanup also removes what the daemon keeps on the host between VMs
	// (its nftables tables, the bridge); refused while a VM runs.
	Cleanup bool `json:"cleanup,omitempty"`
}
