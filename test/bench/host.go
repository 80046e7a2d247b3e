package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// command builds an exec.Cmd from argv (never a shell string). Children get
// their own process group, so a Ctrl-C in the terminal reaches only this
// program, which then stops them in order.
func command(ctx context.Context, argv ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, argv[0], argv[1:]...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return c
}

// runCmd runs argv and returns its stdout; the error carries its stderr.
func runCmd(ctx context.Context, argv ...string) (string, error) {
	c := command(ctx, argv...)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Run(); err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("%s: %w", argv[0], ctx.Err())
		}
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// netns is the run's network namespace.
type netns struct {
	name string
	fd   int // open handle on /run/netns/<name>, for setns
}

const netnsPrefix = "bgbench-"

// newNetns creates bgbench-<hex> with lo up and registers its deletion.
func newNetns(ctx context.Context, undo *cleanupStack) (*netns, error) {
	ns := &netns{name: netnsPrefix + randHex(4), fd: -1}
	if _, err := runCmd(ctx, "ip", "netns", "add", ns.name); err != nil {
		return nil, err
	}
	undo.push("delete netns "+ns.name, func(ctx context.Context) error {
		_, err := runCmd(ctx, "ip", "netns", "del", ns.name)
		return err
	})
	if _, err := runCmd(ctx, "ip", "-n", ns.name, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	fd, err := unix.Open("/run/netns/"+ns.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", ns.name, err)
	}
	ns.fd = fd
	undo.push("close netns handle", func(context.Context) error { return unix.Close(fd) })
	return ns, nil
}

// exec returns argv prefixed to run inside the namespace. `ip netns exec`
// execs the command in place, so the child's pid is the command's own.
func (ns *netns) exec(argv ...string) []string {
	return append([]string{"ip", "netns", "exec", ns.name}, argv...)
}

// ip runs `ip -n <ns> args...`.
func (ns *netns) ip(ctx context.Context, args ...string) error {
	_, err := runCmd(ctx, append([]string{"ip", "-n", ns.name}, args...)...)
	return err
}

// dialTCP connects to addr from inside the namespace. The connecting thread
// enters the namespace and is never unlocked: when the goroutine returns, the
// Go runtime discards that thread instead of reusing it in the wrong
// namespace. The socket keeps its namespace for the rest of its life.
func (ns *netns) dialTCP(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("setns %s: %w", ns.name, err)}
			return
		}
		d := net.Dialer{Timeout: timeout}
		c, err := d.DialContext(ctx, "tcp", addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// namespaces lists the names of the host's named network namespaces.
func namespaces() []string {
	out, _ := exec.Command("ip", "netns", "list").Output()
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

// processesMentioning returns "pid argv" of live processes whose command
// line contains s.
func processesMentioning(s string) []string {
	var found []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid := e.Name()
		if pid[0] < '0' || pid[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + pid + "/cmdline")
		if err != nil || !bytes.Contains(b, []byte(s)) || !alive(atoi(pid)) {
			continue
		}
		found = append(found, pid+" "+strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " ")))
	}
	return found
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil && !strings.Contains(string(st), ") Z ")
}

// waitGone waits for a process that is not our child to disappear.
func waitGone(ctx context.Context, pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for alive(pid) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(20 * time.Millisecond) // polling a process we cannot wait for
	}
	return true
}

// hostKernel is the host's `uname -r`.
func hostKernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}
