package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// qemuProc is a QEMU this program started; it is only ever signalled through
// the process handle it was started with (a pidfd), never looked up by name.
type qemuProc struct {
	dir     string
	started time.Time
	done    chan struct{} // closed when QEMU has exited and been reaped
	waitErr error

	killOnce sync.Once
	killErr  error
	p        *os.Process
}

// startQEMU launches argv inside the namespace; the clock starts just
// before the process does.
func startQEMU(ns *netns, argv []string, dir string) (*qemuProc, error) {
	log, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	// Not tied to the run's context: kill stops it, in order, on every path.
	c := command(context.Background(), ns.exec(argv...)...)
	c.Stdout, c.Stderr = log, log
	q := &qemuProc{dir: dir, done: make(chan struct{})}
	q.started = time.Now()
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	q.p = c.Process
	go func() {
		q.waitErr = c.Wait()
		close(q.done)
	}()
	return q, nil
}

func (q *qemuProc) pid() int { return q.p.Pid }

// kill stops QEMU with SIGKILL (the guest is thrown away) and reaps it. It is
// safe to call more than once, and waits for the exit even when the caller's
// context is already canceled.
func (q *qemuProc) kill(context.Context) error {
	q.killOnce.Do(func() {
		select {
		case <-q.done:
			return
		default:
		}
		_ = q.p.Kill()
		select {
		case <-q.done:
		case <-time.After(15 * time.Second):
			q.killErr = fmt.Errorf("qemu pid %d did not exit after SIGKILL", q.p.Pid)
		}
	})
	return q.killErr
}

// tails returns the end of QEMU's own output and of the guest console.
func (q *qemuProc) tails() string {
	return "qemu.log ends with:\n" + tail(filepath.Join(q.dir, "qemu.log"), 10) +
		"\nconsole ends with:\n" + tail(filepath.Join(q.dir, "console.log"), 20)
}

func tail(path string, lines int) string {
	b, _ := os.ReadFile(path)
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}
