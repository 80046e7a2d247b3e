package guest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func newKeys(t *testing.T) *Keys {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state", "ssh") // does not exist yet
	k, err := LoadKeys(filepath.Join(dir, "id_ed25519"), filepath.Join(dir, "known_hosts"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newHostKey(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestLoadKeysGeneratesEd25519(t *testing.T) {
	k := newKeys(t)
	if m := mode(t, k.KeyFile); m != 0o600 {
		t.Errorf("private key mode %v, want 0600", m)
	}
	if m := mode(t, filepath.Dir(k.KeyFile)); m != 0o700 {
		t.Errorf("key directory mode %v, want 0700", m)
	}
	if m := mode(t, k.KeyFile+".pub"); m != 0o644 {
		t.Errorf("public key mode %v, want 0644", m)
	}
	if _, err := os.Stat(k.KnownHosts); !os.IsNotExist(err) {
		t.Errorf("known_hosts exists before any VM was contacted: %v", err)
	}

	b, err := os.ReadFile(k.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		t.Fatalf("private key is not an OpenSSH key: %v", err)
	}
	priv, ok := raw.(*ed25519.PrivateKey)
	if !ok {
		t.Fatalf("private key is %T, want ed25519", raw)
	}
	if k.signer.PublicKey().Type() != ssh.KeyAlgoED25519 {
		t.Fatalf("signer type %s", k.signer.PublicKey().Type())
	}

	// The public key file, AuthorizedKey and the private key agree.
	pubFile, err := os.ReadFile(k.KeyFile + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	fromPriv, err := ssh.NewPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	authorized, comment, _, rest, err := ssh.ParseAuthorizedKey([]byte(k.AuthorizedKey()))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pub.Marshal(), fromPriv.Marshal()) || !bytes.Equal(authorized.Marshal(), fromPriv.Marshal()) {
		t.Fatal("public key file, AuthorizedKey and private key disagree")
	}
	if comment != "banger" || len(rest) != 0 || !strings.HasSuffix(k.AuthorizedKey(), " banger\n") ||
		strings.Count(k.AuthorizedKey(), "\n") != 1 {
		t.Fatalf("AuthorizedKey() = %q: want one line ending in the comment banger", k.AuthorizedKey())
	}
}

// A second load uses the key on disk instead of replacing it.
func TestLoadKeysReusesExistingKey(t *testing.T) {
	k := newKeys(t)
	before, _ := os.ReadFile(k.KeyFile)
	k2, err := LoadKeys(k.KeyFile, k.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(k.KeyFile)
	if !bytes.Equal(before, after) {
		t.Fatal("LoadKeys rewrote an existing key")
	}
	if k2.AuthorizedKey() != k.AuthorizedKey() {
		t.Fatalf("reloaded key differs: %q vs %q", k2.AuthorizedKey(), k.AuthorizedKey())
	}
}

func TestLoadKeysRejectsGarbage(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(key, []byte("bangertest: not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadKeys(key, filepath.Join(dir, "known_hosts"))
	if err == nil || !strings.Contains(err.Error(), key) {
		t.Fatalf("LoadKeys of a garbage key = %v, want an error naming the file", err)
	}
}

func TestAlias(t *testing.T) {
	if got := Alias("bangertest-vm"); got != "bangertest-vm.vm" {
		t.Fatalf("Alias = %q", got)
	}
}

func knownHosts(t *testing.T, k *Keys) string {
	t.Helper()
	b, err := os.ReadFile(k.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func pinLine(name string, key ssh.PublicKey) string {
	return Alias(name) + " " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))) + "\n"
}

// The first host key a VM presents is pinned under <name>.vm; the same key
// is accepted again, any other is refused with ErrHostKeyChanged naming the
// VM and both fingerprints. VMs are pinned independently.
func TestHostKeyTOFU(t *testing.T) {
	k := newKeys(t)
	addr := &net.TCPAddr{IP: net.IPv4(10, 213, 0, 2), Port: 22}
	a1, a2, b1 := newHostKey(t).PublicKey(), newHostKey(t).PublicKey(), newHostKey(t).PublicKey()

	check := k.hostKeyCallback("bangertest-a")
	if err := check("10.213.0.2:22", addr, a1); err != nil {
		t.Fatalf("first key refused: %v", err)
	}
	if got, want := knownHosts(t, k), pinLine("bangertest-a", a1); got != want {
		t.Fatalf("known_hosts %q, want %q", got, want)
	}
	if m := mode(t, k.KnownHosts); m != 0o600 {
		t.Errorf("known_hosts mode %v, want 0600", m)
	}
	if err := check("10.213.0.2:22", addr, a1); err != nil {
		t.Fatalf("pinned key refused: %v", err)
	}
	err := check("10.213.0.2:22", addr, a2)
	if !errors.Is(err, ErrHostKeyChanged) {
		t.Fatalf("changed key: %v, want ErrHostKeyChanged", err)
	}
	for _, want := range []string{"vm bangertest-a", ssh.FingerprintSHA256(a1), ssh.FingerprintSHA256(a2), k.KnownHosts} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}

	// Another VM, even at the same address, has its own pin.
	if err := k.hostKeyCallback("bangertest-b")("10.213.0.2:22", addr, b1); err != nil {
		t.Fatalf("other VM's first key refused: %v", err)
	}
	// A name that merely contains the other is a different VM.
	if err := k.hostKeyCallback("bangertest")("10.213.0.2:22", addr, a2); err != nil {
		t.Fatalf("prefix name's first key refused: %v", err)
	}
	want := pinLine("bangertest-a", a1) + pinLine("bangertest-b", b1) + pinLine("bangertest", a2)
	if got := knownHosts(t, k); got != want {
		t.Fatalf("known_hosts %q, want %q", got, want)
	}
	if err := check("10.213.0.2:22", addr, a2); !errors.Is(err, ErrHostKeyChanged) {
		t.Fatalf("the first VM's pin changed: %v", err)
	}
}

// Forget removes exactly one VM's pin, after which a new key is accepted.
func TestForget(t *testing.T) {
	k := newKeys(t)
	if err := k.Forget("bangertest-a"); err != nil {
		t.Fatalf("Forget without known_hosts: %v", err)
	}
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22}
	a1, a2, b1, c1 := newHostKey(t).PublicKey(), newHostKey(t).PublicKey(), newHostKey(t).PublicKey(), newHostKey(t).PublicKey()
	for name, key := range map[string]ssh.PublicKey{"bangertest-a": a1, "bangertest-b": b1, "bangertest-a.vm": c1} {
		if err := k.hostKeyCallback(name)("x", addr, key); err != nil {
			t.Fatal(err)
		}
	}
	if err := k.Forget("bangertest-a"); err != nil {
		t.Fatal(err)
	}
	got := knownHosts(t, k)
	if strings.Contains(got, "bangertest-a.vm ") {
		t.Fatalf("known_hosts still pins bangertest-a: %q", got)
	}
	if !strings.Contains(got, pinLine("bangertest-b", b1)) || !strings.Contains(got, pinLine("bangertest-a.vm", c1)) ||
		strings.Count(got, "\n") != 2 {
		t.Fatalf("Forget removed other pins: %q", got)
	}
	if m := mode(t, k.KnownHosts); m != 0o600 {
		t.Errorf("known_hosts mode %v after Forget, want 0600", m)
	}
	if _, err := os.Stat(k.KnownHosts + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("temporary file left behind: %v", err)
	}
	// A recreated VM with the same name pins its new key.
	if err := k.hostKeyCallback("bangertest-a")("x", addr, a2); err != nil {
		t.Fatalf("new key after Forget refused: %v", err)
	}
	if err := k.hostKeyCallback("bangertest-a")("x", addr, a1); !errors.Is(err, ErrHostKeyChanged) {
		t.Fatalf("old key after re-pin: %v, want ErrHostKeyChanged", err)
	}
	// Forgetting the last pins leaves an empty file.
	for _, n := range []string{"bangertest-a", "bangertest-b", "bangertest-a.vm", "bangertest-never"} {
		if err := k.Forget(n); err != nil {
			t.Fatal(err)
		}
	}
	if got := knownHosts(t, k); got != "" {
		t.Fatalf("known_hosts %q, want empty", got)
	}
}

func TestCorruptKnownHostsEntry(t *testing.T) {
	k := newKeys(t)
	if err := os.WriteFile(k.KnownHosts, []byte("bangertest-a.vm ssh-ed25519 !!!notbase64\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := k.hostKeyCallback("bangertest-a")("x", &net.TCPAddr{}, newHostKey(t).PublicKey())
	if err == nil || errors.Is(err, ErrHostKeyChanged) || !strings.Contains(err.Error(), "bad entry for bangertest-a.vm") {
		t.Fatalf("corrupt entry: %v", err)
	}
	// Other VMs are unaffected by the bad line.
	if err := k.hostKeyCallback("bangertest-b")("x", &net.TCPAddr{}, newHostKey(t).PublicKey()); err != nil {
		t.Fatalf("other VM: %v", err)
	}
}

// fakeGuest is an SSH server on loopback standing in for a guest's sshd: it
// accepts only the daemon's key and runs a fixed table of commands.
type fakeGuest struct {
	addr     string
	hostKey  ssh.Signer
	signals  chan string // signal names received by sessions
	commands chan string // commands run
	ln       net.Listener
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
}

type reply struct {
	stdout, stderr string
	exit           uint32
	hang           bool // wait for a signal or the channel to close
}

var guestCommands = map[string]reply{
	"cat /proc/sys/kernel/random/boot_id": {stdout: "6f1c2a9e-0b8d-4a53-9d1e-bangertest01\n"},
	"bangertest-fail":                     {stdout: "partial\n", stderr: "bangertest: no such thing\n", exit: 3},
	"bangertest-hang":                     {hang: true},
}

func startFakeGuest(t *testing.T, k *Keys, hostKey ssh.Signer, commands map[string]reply) *fakeGuest {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &fakeGuest{addr: ln.Addr().String(), hostKey: hostKey, signals: make(chan string, 8), commands: make(chan string, 64), ln: ln}
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(c ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if c.User() == "root" && bytes.Equal(key.Marshal(), k.signer.PublicKey().Marshal()) {
				return nil, nil
			}
			return nil, errors.New("bangertest: unknown key")
		},
	}
	cfg.AddHostKey(hostKey)
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.conns = append(g.conns, c)
			g.mu.Unlock()
			g.wg.Add(1)
			go func() {
				defer g.wg.Done()
				g.serve(c, cfg, commands)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		g.mu.Lock()
		for _, c := range g.conns {
			c.Close()
		}
		g.mu.Unlock()
		g.wg.Wait()
	})
	return g
}

func (g *fakeGuest) serve(c net.Conn, cfg *ssh.ServerConfig, commands map[string]reply) {
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		c.Close()
		return
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "bangertest: session only")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			return
		}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.session(ch, creqs, commands)
		}()
	}
}

func (g *fakeGuest) session(ch ssh.Channel, reqs <-chan *ssh.Request, commands map[string]reply) {
	defer ch.Close()
	for req := range reqs {
		switch req.Type {
		case "exec":
			var p struct{ Command string }
			if err := ssh.Unmarshal(req.Payload, &p); err != nil {
				req.Reply(false, nil)
				return
			}
			req.Reply(true, nil)
			g.commands <- p.Command
			r, ok := commands[p.Command]
			if !ok {
				r = reply{stderr: "sh: " + p.Command + ": not found\n", exit: 127}
			}
			if r.hang {
				for req := range reqs {
					if req.Type == "signal" {
						var s struct{ Signal string }
						ssh.Unmarshal(req.Payload, &s)
						g.signals <- s.Signal
						return
					}
				}
				return
			}
			ch.Write([]byte(r.stdout))
			ch.Stderr().Write([]byte(r.stderr))
			status := make([]byte, 4)
			binary.BigEndian.PutUint32(status, r.exit)
			ch.SendRequest("exit-status", false, status)
			return
		default:
			if req.WantReply {
				req.Reply(false, nil)
			}
		}
	}
}

func TestDialRunAndBootID(t *testing.T) {
	k := newKeys(t)
	hk := newHostKey(t)
	g := startFakeGuest(t, k, hk, guestCommands)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c, err := k.WaitReady(ctx, "bangertest-vm", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The guest's host key is now pinned under the VM's alias.
	if got, want := knownHosts(t, k), pinLine("bangertest-vm", hk.PublicKey()); got != want {
		t.Fatalf("known_hosts %q, want %q", got, want)
	}

	id, err := c.BootID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if id != "6f1c2a9e-0b8d-4a53-9d1e-bangertest01" {
		t.Fatalf("BootID = %q, want the trimmed boot_id", id)
	}
	if cmd := <-g.commands; cmd != "cat /proc/sys/kernel/random/boot_id" {
		t.Fatalf("BootID ran %q", cmd)
	}

	r, err := c.Run(ctx, "bangertest-fail")
	if err != nil {
		t.Fatalf("a non-zero exit is a result, not an error: %v", err)
	}
	if r.ExitCode != 3 || string(r.Stdout) != "partial\n" || string(r.Stderr) != "bangertest: no such thing\n" {
		t.Fatalf("Run = exit %d, stdout %q, stderr %q", r.ExitCode, r.Stdout, r.Stderr)
	}
}

func TestBootIDFailure(t *testing.T) {
	k := newKeys(t)
	g := startFakeGuest(t, k, newHostKey(t), map[string]reply{
		"cat /proc/sys/kernel/random/boot_id": {stderr: "cat: bangertest: Permission denied\n", exit: 1},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := k.Dial(ctx, "bangertest-vm", g.addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.BootID(ctx)
	if err == nil || !strings.Contains(err.Error(), "exit 1") || !strings.Contains(err.Error(), "Permission denied") {
		t.Fatalf("BootID = %v, want the exit code and stderr", err)
	}
}

// Canceling a running command signals it and returns at once.
func TestRunCanceled(t *testing.T) {
	k := newKeys(t)
	g := startFakeGuest(t, k, newHostKey(t), guestCommands)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := k.Dial(ctx, "bangertest-vm", g.addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := c.Run(rctx, "bangertest-hang")
		done <- err
	}()
	if cmd := <-g.commands; cmd != "bangertest-hang" {
		t.Fatalf("ran %q", cmd)
	}
	rcancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
	select {
	case sig := <-g.signals:
		if sig != string(ssh.SIGKILL) {
			t.Fatalf("guest got signal %q, want KILL", sig)
		}
	case <-ctx.Done():
		t.Fatal("guest never got the kill signal")
	}
}

// A guest presenting a different host key than the pinned one stops the wait
// at once instead of retrying until the timeout.
func TestWaitReadyHostKeyChanged(t *testing.T) {
	k := newKeys(t)
	old := newHostKey(t)
	if err := k.hostKeyCallback("bangertest-vm")("x", &net.TCPAddr{}, old.PublicKey()); err != nil {
		t.Fatal(err)
	}
	g := startFakeGuest(t, k, newHostKey(t), guestCommands)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := k.WaitReady(ctx, "bangertest-vm", g.addr)
	if !errors.Is(err, ErrHostKeyChanged) {
		t.Fatalf("WaitReady = %v, want ErrHostKeyChanged", err)
	}
	if ctx.Err() != nil {
		t.Fatal("WaitReady ran until its deadline instead of failing at once")
	}
	// The pin is unchanged.
	if got, want := knownHosts(t, k), pinLine("bangertest-vm", old.PublicKey()); got != want {
		t.Fatalf("known_hosts %q, want %q", got, want)
	}
}

// A guest that refuses the daemon's key fails the handshake.
func TestDialRejectedKey(t *testing.T) {
	k := newKeys(t)
	other := newKeys(t) // the server accepts only this one
	g := startFakeGuest(t, other, newHostKey(t), guestCommands)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if c, err := k.Dial(ctx, "bangertest-vm", g.addr, 10*time.Second); err == nil {
		c.Close()
		t.Fatal("Dial with an unauthorized key succeeded")
	} else if !strings.Contains(err.Error(), "unable to authenticate") {
		t.Fatalf("Dial = %v, want an authentication failure", err)
	}
}

// With nothing listening, WaitReady keeps trying until its context ends and
// then says so, with the last connection error.
func TestWaitReadyGivesUp(t *testing.T) {
	k := newKeys(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // connections to addr are now refused
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	_, err = k.WaitReady(ctx, "bangertest-vm", addr)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitReady = %v, want context.DeadlineExceeded", err)
	}
	for _, want := range []string{"guest bangertest-vm did not answer SSH at " + addr, "last error", "refused"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// A listener that accepts but never speaks SSH: the ctx bounds the handshake.
func TestDialHandshakeBoundedByContext(t *testing.T) {
	k := newKeys(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		c, err := ln.Accept()
		if err == nil {
			conns = append(conns, c) // hold it open, say nothing
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-accepted
		for _, c := range conns {
			c.Close()
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		c, err := k.Dial(ctx, "bangertest-vm", ln.Addr().String(), time.Minute)
		if c != nil {
			c.Close()
		}
		done <- err
	}()
	<-accepted
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial = %v, want context.Canceled", err)
	}
}
