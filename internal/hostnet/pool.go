package hostnet

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// poolInfix separates the tap prefix from a pool tap's index: pool taps are
// called e.g. "bgtap-pool0". VM taps are the prefix followed by hex digits
// only, so the two kinds can never be confused.
const poolInfix = "-pool"

// PoolTapName returns the name of pool tap i under this config's prefix.
func (c Config) PoolTapName(i int) string { return c.tapPrefix() + poolInfix + strconv.Itoa(i) }

// IsPoolTap reports whether name is a pool tap under this config's prefix:
// capacity kept ready for VM starts, not a leftover of a VM.
func (c Config) IsPoolTap(name string) bool {
	rest, ok := strings.CutPrefix(name, c.tapPrefix()+poolInfix)
	if !ok || rest == "" {
		return false
	}
	for i := 0; i < len(rest); i++ {
		if rest[i] < '0' || rest[i] > '9' {
			return false
		}
	}
	return true
}

// TapOps are the tap operations a TapPool needs. LinuxTapOps does them with
// netlink in the caller's network namespace; a privileged helper can supply
// its own.
type TapOps interface {
	// Create makes a persistent tap attached to the bridge and up,
	// replacing a stale tap of that name (see CreateTap).
	Create(name string) error
	// Rename gives an existing tap a new name, keeping it attached and up.
	Rename(from, to string) error
	Delete(name string) error
	// List returns the names of the links starting with prefix.
	List(prefix string) ([]string, error)
}

// LinuxTapOps does TapOps directly (the daemon runs as root).
type LinuxTapOps struct {
	Bridge string
	// Owner is the uid allowed to attach to the taps; -1 for none.
	Owner int
}

func (o LinuxTapOps) Create(name string) error             { return CreateTap(name, o.Bridge, o.Owner) }
func (o LinuxTapOps) Rename(from, to string) error         { return RenameTap(from, to) }
func (o LinuxTapOps) Delete(name string) error             { return DeleteTap(name) }
func (o LinuxTapOps) List(prefix string) ([]string, error) { return ListLinks(prefix) }

// TapPool keeps a few bridge-attached taps ready so that starting a VM only
// renames one (a single netlink call) instead of creating it. Pool taps are
// named PoolTapName(i); Take renames one to the VM's tap name and a
// background worker makes a new one. Pool taps are capacity, not leaks: they
// outlive a daemon stop and are removed by Teardown (`banger daemon stop
// --cleanup`).
//
// Lock order: TapPool.mu is a leaf lock, never held across a tap operation.
type TapPool struct {
	cfg  Config
	size int
	ops  TapOps
	log  *slog.Logger

	wake chan struct{} // a refill is wanted (buffered, 1)
	quit chan struct{} // closed by Close
	done chan struct{} // closed when the worker has returned

	mu      sync.Mutex
	ready   []int        // indices of pool taps that exist and are free
	busy    map[int]bool // indices being created or renamed away
	lastErr error        // the last refill failure (nil after a success)
	started bool
	closed  bool
}

// NewTapPool returns a pool of size taps (0 disables it: Take always
// misses). Start must be called to fill it.
func NewTapPool(cfg Config, size int, ops TapOps, log *slog.Logger) (*TapPool, error) {
	if size < 0 || size > 64 {
		return nil, fmt.Errorf("invalid tap pool size %d: use 0 (no pool) to 64", size)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &TapPool{cfg: cfg, size: size, ops: ops, log: log, busy: map[int]bool{},
		wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}, nil
}

// Start removes pool taps beyond the pool's size (left by a daemon with a
// larger pool) and starts the background worker that (re)creates the
// others. It does not wait for the pool to fill.
func (p *TapPool) Start() {
	if names, err := p.ops.List(p.cfg.tapPrefix() + poolInfix); err == nil {
		for _, n := range names {
			if i, ok := p.index(n); ok && i >= p.size {
				if err := p.ops.Delete(n); err != nil {
					p.log.Warn("tap pool: cannot remove surplus pool tap", "tap", n, "err", err)
				}
			}
		}
	}
	p.mu.Lock()
	p.started = true
	p.mu.Unlock()
	go p.worker()
	p.kick()
}

// index returns i for the pool tap name PoolTapName(i).
func (p *TapPool) index(name string) (int, bool) {
	if !p.cfg.IsPoolTap(name) {
		return 0, false
	}
	i, err := strconv.Atoi(strings.TrimPrefix(name, p.cfg.tapPrefix()+poolInfix))
	return i, err == nil
}

func (p *TapPool) kick() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// worker fills the pool whenever it is woken, until Close.
func (p *TapPool) worker() {
	defer close(p.done)
	for {
		select {
		case <-p.quit:
			return
		case <-p.wake:
		}
		for p.fillOne() {
		}
	}
}

// fillOne creates one missing pool tap; it reports whether it made progress
// and more may be needed. A failure is logged and kept for Stats; the next
// Take retries.
func (p *TapPool) fillOne() bool {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return false
	}
	i := -1
	for j := 0; j < p.size; j++ {
		if !p.busy[j] && !slices.Contains(p.ready, j) {
			i = j
			break
		}
	}
	if i < 0 {
		p.mu.Unlock()
		return false
	}
	p.busy[i] = true
	p.mu.Unlock()

	name := p.cfg.PoolTapName(i)
	err := p.ops.Create(name) // replaces a stale tap of that name
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.busy, i)
	p.lastErr = err
	if err != nil {
		p.log.Warn("tap pool: cannot create pool tap; VM starts will create their taps", "tap", name, "err", err)
		return false
	}
	if p.closed { // Teardown may have listed the taps before this one existed
		_ = p.ops.Delete(name)
		return false
	}
	p.ready = append(p.ready, i)
	return true
}

// Take renames a ready pool tap to name and reports whether it did. On a
// miss (empty pool, no pool (p is nil), or a rename failure, after which the
// pool tap is dropped) the caller creates the tap itself. Either way a
// background refill is started.
func (p *TapPool) Take(name string) bool {
	if p == nil {
		return false
	}
	if err := ValidateName("tap", name); err != nil {
		return false
	}
	p.mu.Lock()
	if p.closed || len(p.ready) == 0 {
		p.mu.Unlock()
		p.kick()
		return false
	}
	i := p.ready[len(p.ready)-1]
	p.ready = p.ready[:len(p.ready)-1]
	p.busy[i] = true
	p.mu.Unlock()

	from := p.cfg.PoolTapName(i)
	err := p.ops.Rename(from, name)
	if err != nil {
		p.log.Warn("tap pool: rename failed; creating the tap instead", "tap", from, "to", name, "err", err)
		_ = p.ops.Delete(from)
	}
	p.mu.Lock()
	delete(p.busy, i)
	p.mu.Unlock()
	p.kick()
	return err == nil
}

// Stats returns how many taps are ready, the pool size and the last refill
// error.
func (p *TapPool) Stats() (ready, size int, lastErr error) {
	if p == nil {
		return 0, 0, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ready), p.size, p.lastErr
}

// Close stops the background worker and waits for it; the pool taps stay
// (they are capacity for the next daemon). Close is idempotent.
func (p *TapPool) Close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	already, started := p.closed, p.started
	p.closed = true
	p.mu.Unlock()
	if !already {
		close(p.quit)
	}
	if started {
		<-p.done
	}
}

// Teardown closes the pool and deletes every pool tap under its prefix,
// including ones a previous daemon left.
func (p *TapPool) Teardown() error {
	if p == nil {
		return nil
	}
	p.Close()
	names, err := p.ops.List(p.cfg.tapPrefix() + poolInfix)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		if p.cfg.IsPoolTap(n) {
			errs = append(errs, p.ops.Delete(n))
		}
	}
	p.mu.Lock()
	p.ready = nil
	p.mu.Unlock()
	return errors.Join(errs...)
}
