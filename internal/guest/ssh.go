// Package guest reaches a VM's guest over SSH: the daemon's ed25519 key,
// host keys pinned on first use in banger's own known_hosts (a changed key is
// a hard error naming the VM), readiness by a real SSH handshake, and running
// commands.
package guest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// ErrHostKeyChanged is returned when a VM presents a host key other than the pinned one.
var ErrHostKeyChanged = errors.New("guest host key changed")

// Keys holds the daemon's client key and the pinned host keys.
type Keys struct {
	KeyFile    string // OpenSSH private key; KeyFile+".pub" is the public key
	KnownHosts string

	mu     sync.Mutex // guards the known_hosts file
	signer ssh.Signer
	pub    string
}

// LoadKeys loads the daemon's key, creating it on first use.
func LoadKeys(keyFile, knownHosts string) (*Keys, error) {
	k := &Keys{KeyFile: keyFile, KnownHosts: knownHosts}
	b, err := os.ReadFile(keyFile)
	if errors.Is(err, os.ErrNotExist) {
		b, err = generateKey(keyFile)
	}
	if err != nil {
		return nil, err
	}
	k.signer, err = ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", keyFile, err)
	}
	k.pub = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.signer.PublicKey()))) + " banger"
	return k, nil
}

func generateKey(keyFile string) ([]byte, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	blk, err := ssh.MarshalPrivateKey(priv, "banger")
	if err != nil {
		return nil, err
	}
	b := pem.EncodeToMemory(blk)
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(keyFile), 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyFile, b, 0o600); err != nil {
		return nil, err
	}
	pub := ssh.MarshalAuthorizedKey(signer.PublicKey())
	if err := os.WriteFile(keyFile+".pub", pub, 0o644); err != nil {
		return nil, err
	}
	return b, nil
}

// AuthorizedKey is the public key line to install in a guest's authorized_keys.
func (k *Keys) AuthorizedKey() string { return k.pub + "\n" }

// Alias is the name a VM's host key is pinned under (also its DNS name).
func Alias(vmName string) string { return vmName + ".vm" }

// hostKeyCallback pins the first key a VM presents and rejects any other.
func (k *Keys) hostKeyCallback(vmName string) ssh.HostKeyCallback {
	alias := Alias(vmName)
	return func(_ string, _ net.Addr, key ssh.PublicKey) error {
		k.mu.Lock()
		defer k.mu.Unlock()
		pinned, err := k.lookup(alias)
		if err != nil {
			return err
		}
		if pinned == nil {
			line := alias + " " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))) + "\n"
			f, err := os.OpenFile(k.KnownHosts, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteString(line)
			return err
		}
		if !bytes.Equal(pinned.Marshal(), key.Marshal()) {
			return fmt.Errorf("%w for vm %s: it presented %s %s but %s pins %s; if the VM was rebuilt on purpose, delete and recreate it",
				ErrHostKeyChanged, vmName, key.Type(), ssh.FingerprintSHA256(key), k.KnownHosts, ssh.FingerprintSHA256(pinned))
		}
		return nil
	}
}

// Pinned reports whether a host key is pinned for the VM.
func (k *Keys) Pinned(vmName string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	key, err := k.lookup(Alias(vmName))
	return err == nil && key != nil
}

// lookup returns the pinned key for alias, or nil. Caller holds k.mu.
func (k *Keys) lookup(alias string) (ssh.PublicKey, error) {
	b, err := os.ReadFile(k.KnownHosts)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		host, rest, ok := strings.Cut(line, " ")
		if !ok || host != alias {
			continue
		}
		key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(rest))
		if err != nil {
			return nil, fmt.Errorf("%s: bad entry for %s: %w", k.KnownHosts, alias, err)
		}
		return key, nil
	}
	return nil, nil
}

// Forget removes a VM's pinned host key (on delete).
func (k *Keys) Forget(vmName string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	b, err := os.ReadFile(k.KnownHosts)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	alias := Alias(vmName)
	var keep []string
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if host, _, _ := strings.Cut(line, " "); host != alias && line != "" {
			keep = append(keep, line)
		}
	}
	out := strings.Join(keep, "\n")
	if out != "" {
		out += "\n"
	}
	tmp := k.KnownHosts + ".tmp"
	if err := os.WriteFile(tmp, []byte(out), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, k.KnownHosts)
}

// Client is an SSH connection to one guest.
type Client struct {
	*ssh.Client
}

// Dial opens an SSH connection as root to the VM at addr (ip:22).
func (k *Keys) Dial(ctx context.Context, vmName, addr string, timeout time.Duration) (*Client, error) {
	cfg := &ssh.ClientConfig{
		User:            "root",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(k.signer)},
		HostKeyCallback: k.hostKeyCallback(vmName),
		Timeout:         timeout,
	}
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	// Bound the handshake by ctx as well as the timeout.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	conn.SetDeadline(time.Now().Add(timeout))
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return &Client{ssh.NewClient(c, chans, reqs)}, nil
}

// WaitReady polls until the guest completes an SSH handshake and
// authentication, or ctx ends. A changed host key ends the wait at once.
func (k *Keys) WaitReady(ctx context.Context, vmName, addr string) (*Client, error) {
	var last error
	for {
		c, err := k.Dial(ctx, vmName, addr, 5*time.Second)
		if err == nil {
			return c, nil
		}
		if errors.Is(err, ErrHostKeyChanged) {
			return nil, err
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("guest %s did not answer SSH at %s: %w (last error: %v)", vmName, addr, ctx.Err(), last)
		case <-time.After(250 * time.Millisecond): // retry interval between connection attempts
		}
	}
}

// Result is the outcome of a command.
type Result struct {
	Stdout, Stderr []byte
	ExitCode       int
}

// Run runs cmd (a shell command line for the guest's sh) and collects output.
func (c *Client) Run(ctx context.Context, cmd string) (Result, error) {
	sess, err := c.NewSession()
	if err != nil {
		return Result{}, err
	}
	defer sess.Close()
	var out, errb bytes.Buffer
	sess.Stdout, sess.Stderr = &out, &errb
	done := make(chan error, 1)
	go func() { done <- sess.Run(cmd) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		sess.Signal(ssh.SIGKILL)
		return Result{}, ctx.Err()
	}
	res := Result{Stdout: out.Bytes(), Stderr: errb.Bytes()}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		res.ExitCode = ee.ExitStatus()
		return res, nil
	}
	return res, err
}

// Exec runs argv in the guest exactly as given (no re-splitting), streaming
// stdin (nil: none), stdout and stderr, and returns the exit status. When ctx
// ends the command is killed.
func (c *Client) Exec(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if len(argv) == 0 {
		return 0, errors.New("exec: empty argv")
	}
	sess, err := c.NewSession()
	if err != nil {
		return 0, err
	}
	defer sess.Close()
	sess.Stdin, sess.Stdout, sess.Stderr = stdin, stdout, stderr
	done := make(chan error, 1)
	go func() { done <- sess.Run(ShellJoin(argv)) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		sess.Signal(ssh.SIGKILL)
		sess.Close()
		return 0, ctx.Err()
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return ee.ExitStatus(), nil
	}
	return 0, err
}

// BootID reads the guest kernel's boot_id.
func (c *Client) BootID(ctx context.Context) (string, error) {
	r, err := c.Run(ctx, "cat /proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", err
	}
	if r.ExitCode != 0 {
		return "", fmt.Errorf("read boot_id: exit %d: %s", r.ExitCode, r.Stderr)
	}
	return strings.TrimSpace(string(r.Stdout)), nil
}
