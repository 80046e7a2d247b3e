package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// The raw guests' network, private to the run's namespace (banger's own
// bridge there uses its default 10.213.0.0/24).
const (
	rawBridge  = "bgbench-rbr0"
	rawTap     = "bgbench-rtap0"
	rawGateway = "172.31.253.1"
	rawGuestIP = "172.31.253.2"
	rawPrefix  = 24
)

// Readiness polling of the raw guest.
const (
	readyTimeout     = 180 * time.Second      // banger's default vm.ready_timeout
	pollInterval     = 100 * time.Millisecond // at most one attempt per interval
	connectTimeout   = 500 * time.Millisecond // a connect waits for ARP until the guest is up
	handshakeTimeout = 20 * time.Second       // key exchange is emulated under TCG
)

type rawNet struct{ bridge, tap string }

// setupRawNet makes a bridge with the gateway address and a tap on it.
func setupRawNet(ctx context.Context, ns *netns) (rawNet, error) {
	steps := [][]string{
		{"link", "add", rawBridge, "type", "bridge"},
		{"addr", "add", rawGateway + "/" + strconv.Itoa(rawPrefix), "dev", rawBridge},
		{"link", "set", rawBridge, "up"},
		{"tuntap", "add", "dev", rawTap, "mode", "tap"},
		{"link", "set", rawTap, "master", rawBridge, "up"},
	}
	for _, s := range steps {
		if err := ns.ip(ctx, s...); err != nil {
			return rawNet{}, err
		}
	}
	return rawNet{bridge: rawBridge, tap: rawTap}, nil
}

// rawIteration prepares disks, launches QEMU directly and times launch → SSH.
func (b *bench) rawIteration(ctx context.Context, i int, rep *report) error {
	dir := filepath.Join(b.dir, "raw"+strconv.Itoa(i))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	t0 := time.Now()
	overlay, work, err := b.rawDisks(ctx, dir)
	if err != nil {
		return err
	}
	prepare := time.Since(t0)
	// A fresh MAC per boot, like a new banger VM; forget the last guest's.
	if err := b.ns.ip(ctx, "neigh", "flush", "dev", b.raw.bridge); err != nil {
		return err
	}
	name := "bgbench-raw" + strconv.Itoa(i)
	q, err := startQEMU(b.ns, b.rawArgv(name, dir, overlay, work, randomMAC()), dir)
	if err != nil {
		return err
	}
	b.undo.push(fmt.Sprintf("kill raw qemu pid %d", q.pid()), q.kill)
	portOpen, err := b.waitRawSSH(ctx, q)
	ready := time.Since(q.started)
	if kerr := q.kill(ctx); err == nil {
		err = kerr
	}
	if err != nil {
		return err
	}
	rep.add(measureRawPrepare, prepare)
	rep.add(measureRawPort, portOpen)
	rep.add(measureRaw, ready)
	logf("raw %d/%d: disks %.2f s, launch → port 22 open %.2f s, → SSH + true %.2f s",
		i, b.o.n, prepare.Seconds(), portOpen.Seconds(), ready.Seconds())
	return os.RemoveAll(dir)
}

// rawDisks makes the qcow2 overlay over the fixture rootfs and the work disk.
func (b *bench) rawDisks(ctx context.Context, dir string) (overlay, work string, err error) {
	overlay = filepath.Join(dir, "root.qcow2")
	if _, err := runCmd(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", b.guest.rootfs, overlay); err != nil {
		return "", "", err
	}
	work = filepath.Join(dir, "work.ext4")
	f, err := os.OpenFile(work, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", "", err
	}
	err = f.Truncate(workDiskMiB << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", "", err
	}
	// No size argument: mkfs uses the whole pre-sized file.
	_, err = runCmd(ctx, "mkfs.ext4", "-q", "-F", "-L", "bgbench-work", "-E", "root_owner=0:0", "-d", b.seed, work)
	return overlay, work, err
}

// rawArgv is QEMU's command line in the shape banger's QEMU driver uses
// (internal/vmm/qemu/qemu.go), with TCG and the guest settings of banger's
// kernel command line.
func (b *bench) rawArgv(name, dir, overlay, work, mac string) []string {
	cmdline := fmt.Sprintf("console=ttyS0 root=/dev/vda rw panic=-1 net.ifnames=0 banger.hostname=%s "+
		"banger.ip=%s/%d banger.gw=%s banger.dns=%s banger.work=/dev/vdb tsc_early_khz=%d tsc=reliable",
		name, rawGuestIP, rawPrefix, rawGateway, rawGateway, b.tscKHz)
	drive := func(id, path, format string) []string {
		return []string{"-drive", "id=" + id + ",file=" + escapeOpt(path) + ",format=" + format + ",if=none,cache=writeback,discard=unmap",
			"-device", "virtio-blk-device,drive=" + id}
	}
	a := []string{"qemu-system-x86_64",
		"-name", name,
		"-M", "microvm", "-accel", "tcg",
		"-m", strconv.Itoa(guestMemoryMiB), "-smp", strconv.Itoa(guestVCPU),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", b.guest.kernel, "-append", cmdline, "-initrd", b.guest.initrd,
	}
	a = append(a, drive("root", overlay, "qcow2")...)
	a = append(a, drive("work", work, "raw")...)
	return append(a,
		"-netdev", "tap,id=net0,ifname="+b.raw.tap+",script=no,downscript=no",
		"-device", "virtio-net-device,netdev=net0,mac="+mac,
		"-chardev", "file,id=console,path="+escapeOpt(filepath.Join(dir, "console.log"))+",append=on",
		"-serial", "chardev:console",
		"-qmp", "unix:"+escapeOpt(filepath.Join(dir, "qmp.sock"))+",server=on,wait=off",
	)
}

// escapeOpt doubles commas, QEMU's escape inside option values.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// randomMAC is a locally administered unicast MAC in QEMU's 52:54:00 range.
func randomMAC() string {
	h := randHex(3)
	return "52:54:00:" + h[0:2] + ":" + h[2:4] + ":" + h[4:6]
}

// waitRawSSH polls until an SSH handshake and `true` succeed, QEMU exits,
// or the ready timeout passes. It returns when port 22 first accepted a
// TCP connection (as time since launch).
func (b *bench) waitRawSSH(ctx context.Context, q *qemuProc) (portOpen time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	pace := time.NewTicker(pollInterval)
	defer pace.Stop()
	addr := net.JoinHostPort(rawGuestIP, "22")
	connected := func() {
		if portOpen == 0 {
			portOpen = time.Since(q.started)
		}
	}
	for {
		err := b.sshTrue(ctx, addr, connected)
		if err == nil {
			return portOpen, nil
		}
		select {
		case <-q.done:
			return 0, fmt.Errorf("qemu exited before SSH answered (%v); %s", q.waitErr, q.tails())
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return 0, fmt.Errorf("no SSH at %s within %v (last error: %v); %s", addr, readyTimeout, err, q.tails())
			}
			return 0, ctx.Err()
		case <-pace.C:
		}
	}
}

// sshTrue connects, calls connected, authenticates with the run's key and
// runs `true`.
func (b *bench) sshTrue(ctx context.Context, addr string, connected func()) error {
	conn, err := b.ns.dialTCP(ctx, addr, connectTimeout)
	if err != nil {
		return err
	}
	connected()
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	cfg := &ssh.ClientConfig{
		User: "root",
		Auth: []ssh.AuthMethod{ssh.PublicKeys(b.key)},
		// A throwaway guest on a private network that generated its host
		// key on this boot: there is nothing to pin it against.
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		return err
	}
	client := ssh.NewClient(c, chans, reqs)
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		return err
	}
	defer sess.Close()
	return sess.Run("true")
}
