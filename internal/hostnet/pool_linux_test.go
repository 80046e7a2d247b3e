package hostnet

import (
	"errors"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// nsOps runs LinuxTapOps on a goroutine locked into the test namespace, so
// the pool's background worker (a goroutine of its own, in the host
// namespace) acts on the test namespace. failCreate makes Create fail.
type nsOps struct {
	calls      chan func()
	inner      LinuxTapOps
	mu         sync.Mutex
	failCreate error
	creates    int
}

func newNSOps(t *testing.T, tn *testNS) *nsOps {
	o := &nsOps{calls: make(chan func()), inner: LinuxTapOps{Bridge: testBridge, Owner: -1}}
	ready := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is discarded
		if err := netns.Set(tn.ns); err != nil {
			ready <- err
			return
		}
		ready <- nil
		for f := range o.calls {
			f()
		}
	}()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(o.calls) })
	return o
}

func (o *nsOps) do(f func() error) error {
	done := make(chan error)
	o.calls <- func() { done <- f() }
	return <-done
}

func (o *nsOps) Create(name string) error {
	o.mu.Lock()
	fail := o.failCreate
	o.creates++
	o.mu.Unlock()
	if fail != nil {
		return fail
	}
	return o.do(func() error { return o.inner.Create(name) })
}
func (o *nsOps) Rename(from, to string) error {
	return o.do(func() error { return o.inner.Rename(from, to) })
}
func (o *nsOps) Delete(name string) error { return o.do(func() error { return o.inner.Delete(name) }) }
func (o *nsOps) List(prefix string) (names []string, err error) {
	err = o.do(func() error { names, err = o.inner.List(prefix); return err })
	return names, err
}

// waitReady polls the pool until n taps are ready (the refill is
// asynchronous by design); it fails the test after 10 s.
func waitReady(t *testing.T, p *TapPool, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ready, _, err := p.Stats()
		if ready == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool has %d ready taps after 10 s, want %d (last error: %v)", ready, n, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPoolTapNames(t *testing.T) {
	c := Config{}
	if n := c.PoolTapName(3); n != "bgtap-pool3" {
		t.Fatalf("PoolTapName(3) = %q", n)
	}
	for name, want := range map[string]bool{
		"bgtap-pool0": true, "bgtap-pool12": true, "bgtap-pool": false, "bgtap-poolx": false,
		"bgtap0123456789": false, TapName("vm-id"): false, "vm-pool1": false,
	} {
		if got := c.IsPoolTap(name); got != want {
			t.Errorf("IsPoolTap(%q) = %v, want %v", name, got, want)
		}
	}
	if (Config{TapPrefix: "vm"}).IsPoolTap("bgtap-pool1") {
		t.Error("a pool tap of another prefix is recognised")
	}
	if _, err := NewTapPool(c, -1, nil, nil); err == nil {
		t.Error("negative pool size accepted")
	}
}

func TestRenameTap(t *testing.T) {
	enterTestNetns(t)
	if err := EnsureBridge(testConfig()); err != nil {
		t.Fatal(err)
	}
	if err := CreateTap("bgtap-pool0", testBridge, -1); err != nil {
		t.Fatal(err)
	}
	if err := RenameTap("bgtap-pool0", "bgtapaaaa"); err != nil {
		t.Fatal(err)
	}
	if linkExists(t, "bgtap-pool0") {
		t.Error("old name still exists")
	}
	l := mustLink(t, "bgtapaaaa")
	if !isTap(l) || l.Attrs().MasterIndex != mustLink(t, testBridge).Attrs().Index || l.Attrs().RawFlags&1 == 0 {
		t.Errorf("renamed tap: tap=%v master=%d up=%v", isTap(l), l.Attrs().MasterIndex, l.Attrs().RawFlags&1 != 0)
	}
	if err := RenameTap("nonexistent", "bgtapbbbb"); err == nil {
		t.Error("renaming a missing tap succeeded")
	}
	if err := RenameTap(testBridge, "bgtapbbbb"); err == nil {
		t.Error("renaming the bridge as a tap succeeded")
	}
	if err := RenameTap("bgtapaaaa", testBridge); err == nil || !linkExists(t, "bgtapaaaa") {
		t.Errorf("renaming onto the bridge: err=%v; the tap must keep its name", err)
	}
}

func TestTapPool(t *testing.T) {
	tn := enterTestNetns(t)
	cfg := testConfig()
	if err := EnsureBridge(cfg); err != nil {
		t.Fatal(err)
	}
	// A pool tap left by a daemon with a larger pool is removed at Start.
	if err := CreateTap(cfg.PoolTapName(5), testBridge, -1); err != nil {
		t.Fatal(err)
	}
	ops := newNSOps(t, tn)
	p, err := NewTapPool(cfg, 2, ops, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	defer p.Close()
	waitReady(t, p, 2)
	links, _ := ListLinks(DefaultTapPrefix)
	if want := []string{"bgtap-pool0", "bgtap-pool1"}; !slices.Equal(links, want) {
		t.Fatalf("after fill: links %v, want %v", links, want)
	}

	vmTap := cfg.TapName("vm-1")
	if !p.Take(vmTap) {
		t.Fatal("Take missed on a full pool")
	}
	l := mustLink(t, vmTap)
	if !isTap(l) || l.Attrs().MasterIndex != mustLink(t, testBridge).Attrs().Index {
		t.Fatalf("taken tap is not a tap on the bridge")
	}
	waitReady(t, p, 2) // refilled in the background
	links, _ = ListLinks(DefaultTapPrefix)
	if len(links) != 3 || !slices.Contains(links, vmTap) {
		t.Fatalf("after take + refill: links %v", links)
	}

	// When creation fails the pool drains and Take misses; the caller
	// creates the tap itself.
	ops.mu.Lock()
	ops.failCreate = errors.New("injected")
	ops.mu.Unlock()
	if !p.Take(cfg.TapName("vm-2")) || !p.Take(cfg.TapName("vm-3")) {
		t.Fatal("Take missed with ready taps")
	}
	if p.Take(cfg.TapName("vm-4")) {
		t.Fatal("Take hit on an empty pool")
	}
	if _, _, err := p.Stats(); err == nil {
		// The refill runs asynchronously; wait for it to record the failure.
		deadline := time.Now().Add(10 * time.Second)
		for err == nil && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
			_, _, err = p.Stats()
		}
		if err == nil {
			t.Fatal("refill failure not reported by Stats")
		}
	}
	ops.mu.Lock()
	ops.failCreate = nil
	ops.mu.Unlock()
	p.Take(cfg.TapName("vm-5")) // a miss that wakes the refill
	waitReady(t, p, 2)

	// Teardown removes every pool tap and nothing else.
	if err := p.Teardown(); err != nil {
		t.Fatal(err)
	}
	links, _ = ListLinks(DefaultTapPrefix)
	for _, l := range links {
		if cfg.IsPoolTap(l) {
			t.Errorf("pool tap %s left after Teardown", l)
		}
	}
	if !slices.Contains(links, vmTap) {
		t.Errorf("Teardown removed the VM tap %s", vmTap)
	}
	if p.Take(cfg.TapName("vm-6")) {
		t.Error("Take hit after Teardown")
	}
}

func TestTapPoolDisabled(t *testing.T) {
	p, err := NewTapPool(testConfig(), 0, LinuxTapOps{Bridge: testBridge, Owner: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Take("bgtapaaaa") {
		t.Fatal("a disabled pool handed out a tap")
	}
	p.Close()
}

// runInBenchNetns runs f in a fresh test namespace holding the test bridge.
func runInBenchNetns(b *testing.B, f func(Config)) {
	enterTestNetns(b)
	cfg := testConfig()
	if err := EnsureBridge(cfg); err != nil {
		b.Fatal(err)
	}
	f(cfg)
}

// BenchmarkTapStep compares what a VM start's tap step costs: creating a tap
// (TUNSETIFF + persist + enslave + up) against taking one from a warm pool
// (one rename). Run: sudo go test -run '^$' -bench TapStep ./internal/hostnet
func BenchmarkTapStep(b *testing.B) {
	b.Run("create", func(b *testing.B) {
		runInBenchNetns(b, func(cfg Config) {
			for i := 0; b.Loop(); i++ {
				name := cfg.TapName(strconv.Itoa(i))
				if err := CreateTap(name, testBridge, -1); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := DeleteTap(name); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	})
	b.Run("pool-take", func(b *testing.B) {
		runInBenchNetns(b, func(cfg Config) {
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				pool := cfg.PoolTapName(0)
				if err := CreateTap(pool, testBridge, -1); err != nil {
					b.Fatal(err)
				}
				name := cfg.TapName(strconv.Itoa(i))
				b.StartTimer()
				if err := RenameTap(pool, name); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := DeleteTap(name); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	})
}
