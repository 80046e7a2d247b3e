package hostnet

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tunOpened reports whether process pid has /dev/net/tun open.
func tunOpened(pid int) bool {
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && l == tunDevice {
			return true
		}
	}
	return false
}

// TestQEMUOpensTap starts a real (paused, TCG) QEMU microvm inside the test
// namespace with -netdev tap,ifname=<tap>,script=no,downscript=no and checks
// that it attaches to the tap CreateTap made, vnet_hdr included.
func TestQEMUOpensTap(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	tn := enterTestNetns(t)
	if err := EnsureBridge(testConfig()); err != nil {
		t.Fatal(err)
	}
	tap := TapName("vm-qemu")
	if err := CreateTap(tap, testBridge, -1); err != nil {
		t.Fatal(err)
	}
	if tt := checkTap(t, tap, testBridge); tt.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
		t.Errorf("tap has carrier before anyone attached")
	}

	var stderr bytes.Buffer
	cmd := exec.Command(qemu,
		"-M", "microvm", "-accel", "tcg", "-nodefaults", "-display", "none", "-S",
		"-netdev", "tap,id=n,ifname="+tap+",script=no,downscript=no",
		"-device", "virtio-net-device,netdev=n,mac="+MAC("vm-qemu"))
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	// Started from the locked thread that is in the test namespace, so the
	// child is created in that namespace.
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	pid := cmd.Process.Pid
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	exited := false
	t.Cleanup(func() {
		if !exited {
			_ = cmd.Process.Kill() // exactly this pid
			<-done
		}
	})

	if ino, err := procNetnsInode(pid); err != nil || ino != tn.inode {
		t.Fatalf("qemu (pid %d) in netns inode %d (%v), want test netns %d", pid, ino, err, tn.inode)
	}

	deadline := time.Now().Add(20 * time.Second)
	opened := false
	for !opened && time.Now().Before(deadline) {
		select {
		case err := <-done:
			exited = true
			t.Fatalf("qemu exited before opening the tap: %v\n%s", err, stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		opened = tunOpened(pid)
	}
	if !opened {
		t.Fatalf("qemu (pid %d) did not open %s within 20s\n%s", pid, tunDevice, stderr.String())
	}
	// Still running a moment later: the tap configuration was accepted.
	select {
	case err := <-done:
		exited = true
		t.Fatalf("qemu exited after opening the tap: %v\n%s", err, stderr.String())
	case <-time.After(500 * time.Millisecond):
	}

	// Attached: the tap now has carrier, and QEMU kept vnet_hdr on.
	var tt *netlink.Tuntap
	for range 40 {
		tt = tapInfo(t, tap)
		if tt.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if tt.Attrs().RawFlags&unix.IFF_LOWER_UP == 0 {
		t.Errorf("tap has no carrier with qemu attached (flags %#x)", tt.Attrs().RawFlags)
	}
	if tt.Flags&netlink.TUNTAP_VNET_HDR == 0 || tt.Flags&netlink.TUNTAP_NO_PI == 0 {
		t.Errorf("tap flags with qemu attached = %#x, want NO_PI|VNET_HDR", tt.Flags)
	}
	t.Logf("qemu pid %d attached to %s (tun flags %#x)", pid, tap, tt.Flags)

	if err := cmd.Process.Kill(); err != nil {
		t.Fatalf("kill qemu pid %d: %v", pid, err)
	}
	<-done
	exited = true

	// The tap is persistent: it outlives QEMU, still attached to the bridge.
	checkTap(t, tap, testBridge)
}
