package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/paths"
	"banger/internal/resolved"
	"banger/internal/rpc"
	"banger/internal/store"
)

// tempLayout points HOME and every XDG directory at a fresh temporary tree
// and returns banger's user layout in it and the tree's root.
func tempLayout(t *testing.T) (paths.Layout, string) {
	t.Helper()
	root := t.TempDir()
	t.Setenv("BANGER_SYSTEM", "")
	t.Setenv("HOME", filepath.Join(root, "home"))
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(root, "config"))
	t.Setenv("XDG_STATE_HOME", filepath.Join(root, "state"))
	t.Setenv("XDG_CACHE_HOME", filepath.Join(root, "cache"))
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(root, "run"))
	if err := os.MkdirAll(filepath.Join(root, "home"), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := paths.Resolve(false)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(l.StateDir, root) || !strings.HasPrefix(l.RunDir, root) {
		t.Fatalf("layout %+v is not under %s", l, root)
	}
	return l, root
}

func byName(t *testing.T, rs []Result, name string) Result {
	t.Helper()
	for _, r := range rs {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no result named %q in %+v", name, rs)
	return Result{}
}

// snapshot lists every file under root with its size, mode and mtime.
func snapshot(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		size := st.Size()
		if st.IsDir() {
			size = 0
		}
		out = append(out, fmt.Sprintf("%s %v %d %d", rel, st.Mode(), size, st.ModTime().UnixNano()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func canOpen(path string) bool { return openDev(path) == nil }

// TestDoctorJSON runs every check against an empty temporary layout and
// checks the JSON shape and what this machine is known to report.
func TestDoctorJSON(t *testing.T) {
	l, _ := tempLayout(t)
	rs := Run(context.Background(), NewEnv(l), Checks())
	b, err := json.Marshal(rs)
	if err != nil {
		t.Fatal(err)
	}
	var objs []map[string]any
	if err := json.Unmarshal(b, &objs); err != nil {
		t.Fatalf("not valid JSON: %v\n%s", err, b)
	}
	checks := Checks()
	if len(objs) != len(checks) {
		t.Fatalf("%d objects for %d checks", len(objs), len(checks))
	}
	for i, o := range objs {
		var keys []string
		for k, v := range o {
			keys = append(keys, k)
			if _, ok := v.(string); !ok {
				t.Errorf("%v: field %s is %T, want a string", o, k, v)
			}
		}
		sort.Strings(keys)
		if !reflect.DeepEqual(keys, []string{"evidence", "name", "remedy", "status"}) {
			t.Errorf("object %d has fields %v, want exactly name, status, evidence, remedy", i, keys)
		}
		if o["name"] != checks[i].Name {
			t.Errorf("object %d is %v, want check %q (order must be kept)", i, o["name"], checks[i].Name)
		}
		st := o["status"]
		if st != "PASS" && st != "WARN" && st != "FAIL" {
			t.Errorf("%v: status %v", o["name"], st)
		}
		if st != "PASS" && o["remedy"] == "" {
			t.Errorf("%v is %v without a remedy", o["name"], st)
		}
		if o["evidence"] == "" || strings.ContainsAny(o["evidence"].(string), "\n\r") {
			t.Errorf("%v: evidence %q is not one non-empty line", o["name"], o["evidence"])
		}
	}
	for _, r := range rs {
		t.Logf("%-14s %s  %s", r.Name, r.Status, r.Evidence)
	}

	// What this class of machine reports (GUIDE §1), asserted against the
	// host's own facts so that another host fails only when doctor is wrong.
	acc := byName(t, rs, "accelerator")
	if acc.Status != Warn || !strings.Contains(acc.Evidence, "QEMU will use tcg") {
		t.Errorf("accelerator = %+v, want WARN for tcg (no kernel registered to probe with)", acc)
	}
	if canOpen("/dev/kvm") && !strings.Contains(acc.Evidence, "no kernel is registered") {
		t.Errorf("accelerator evidence %q should say why: no kernel to probe", acc.Evidence)
	}
	if _, err := exec.LookPath("firecracker"); err != nil {
		if fc := byName(t, rs, "firecracker"); fc.Status != Warn || !strings.Contains(fc.Evidence, "Firecracker not installed") ||
			!strings.Contains(fc.Evidence, "banger uses QEMU") {
			t.Errorf("firecracker = %+v, want WARN: not installed; banger uses QEMU", fc)
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err == nil {
		if q := byName(t, rs, "qemu"); q.Status != Pass || !strings.Contains(q.Evidence, "QEMU emulator version") {
			t.Errorf("qemu = %+v, want PASS with the version", q)
		}
		if v := byName(t, rs, "vmm"); v.Status != Pass || !strings.HasPrefix(v.Evidence, "qemu") {
			t.Errorf("vmm = %+v, want PASS qemu", v)
		}
	}
	if !canOpen(mapperControl) {
		if dm := byName(t, rs, "device-mapper"); dm.Status != Warn || !strings.Contains(dm.Evidence, "device-mapper unavailable") {
			t.Errorf("device-mapper = %+v, want WARN unavailable", dm)
		}
	}
	for name, want := range map[string]Status{
		"arch": Pass, "config": Pass, "store": Warn, "default-image": Pass, "ssh-key": Warn,
		"daemon": Warn, "ssh-config": Warn,
	} {
		if r := byName(t, rs, name); r.Status != want {
			t.Errorf("%s = %+v, want %s on an empty layout", name, r, want)
		}
	}
	if r := byName(t, rs, "store"); !strings.Contains(r.Evidence, "no state yet") {
		t.Errorf("store evidence %q", r.Evidence)
	}
	if r := byName(t, rs, "default-image"); !strings.Contains(r.Evidence, "vm create gets it on first use") {
		t.Errorf("default-image evidence %q", r.Evidence)
	}
	if r := byName(t, rs, "ssh-key"); !strings.Contains(r.Evidence, "created on first daemon start") {
		t.Errorf("ssh-key evidence %q", r.Evidence)
	}
	if r := byName(t, rs, "daemon"); !strings.Contains(r.Evidence, "starts on first use") {
		t.Errorf("daemon evidence %q", r.Evidence)
	}
}

// pathWithout builds a directory of symlinks to every program in $PATH
// except the excluded ones, and returns it as a PATH list.
func pathWithout(t *testing.T, exclude ...string) string {
	t.Helper()
	dir := t.TempDir()
	skip := map[string]bool{}
	for _, e := range exclude {
		skip[e] = true
	}
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		entries, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range entries {
			n := e.Name()
			if skip[n] {
				continue
			}
			if _, err := os.Lstat(filepath.Join(dir, n)); err == nil {
				continue // an earlier PATH entry wins
			}
			if executable(filepath.Join(d, n)) != nil {
				continue
			}
			if err := os.Symlink(filepath.Join(d, n), filepath.Join(dir, n)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func TestMissingMkfsFails(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 is not installed here at all")
	}
	l, _ := tempLayout(t)
	env := NewEnv(l)
	env.LookPath = LookPathIn(pathWithout(t, "mkfs.ext4"))
	rs := Run(context.Background(), env, Checks())
	m := byName(t, rs, "mkfs.ext4")
	if m.Status != Fail || !strings.Contains(m.Remedy, "e2fsprogs") || !strings.Contains(m.Evidence, "mkfs.ext4") {
		t.Fatalf("mkfs.ext4 = %+v, want FAIL naming mkfs.ext4 with a remedy naming e2fsprogs", m)
	}
	if err := Failed(rs); err == nil || !strings.Contains(err.Error(), "e2fsprogs") {
		t.Errorf("Failed = %v", err)
	}
	// The same PATH still finds everything else.
	if _, err := exec.LookPath("qemu-system-x86_64"); err == nil {
		if q := byName(t, rs, "qemu"); q.Status != Pass {
			t.Errorf("qemu = %+v with the symlinked PATH", q)
		}
	}
	// And with the full PATH the check passes.
	if r := Run(context.Background(), NewEnv(l), mustFind(t, "mkfs.ext4"))[0]; r.Status != Pass ||
		!strings.Contains(r.Evidence, "mke2fs") {
		t.Errorf("mkfs.ext4 with the full PATH = %+v", r)
	}
}

func mustFind(t *testing.T, names ...string) []Check {
	t.Helper()
	cs, err := Find(names...)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func TestMissingQEMUFails(t *testing.T) {
	l, _ := tempLayout(t)
	env := NewEnv(l)
	env.LookPath = LookPathIn(pathWithout(t, "qemu-system-x86_64"))
	rs := Run(context.Background(), env, mustFind(t, "qemu", "vmm"))
	if q := rs[0]; q.Status != Fail || !strings.Contains(q.Remedy, "apt-get install qemu-system-x86") {
		t.Errorf("qemu = %+v", q)
	}
	if _, err := exec.LookPath("firecracker"); err != nil {
		if v := rs[1]; v.Status != Fail || !strings.Contains(v.Evidence, "no usable VMM") {
			t.Errorf("vmm = %+v", v)
		}
	}
}

func writeConfig(t *testing.T, l paths.Layout, body string) {
	t.Helper()
	if err := os.MkdirAll(l.ConfigDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.ConfigFile(), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestUnknownConfigKeyFails(t *testing.T) {
	l, _ := tempLayout(t)
	writeConfig(t, l, "vmm = \"qemu\"\n[qemu]\nacel = \"kvm\"\n[network]\nbridges = \"x\"\n")
	rs, err := Preflight(context.Background(), NewEnv(l), "config", "arch")
	if len(rs) != 2 || rs[0].Name != "config" || rs[1].Name != "arch" {
		t.Fatalf("Preflight results %+v", rs)
	}
	c := rs[0]
	if c.Status != Fail || !strings.Contains(c.Evidence, "qemu.acel") || !strings.Contains(c.Evidence, "network.bridges") ||
		!strings.Contains(c.Remedy, "qemu.acel") || !strings.Contains(c.Remedy, l.ConfigFile()) {
		t.Errorf("config = %+v, want FAIL naming both unknown keys and the file", c)
	}
	if err == nil || !strings.Contains(err.Error(), "qemu.acel") {
		t.Errorf("Preflight error = %v", err)
	}

	writeConfig(t, l, "[vm]\nvcpu = 0\n")
	c = Run(context.Background(), NewEnv(l), mustFind(t, "config"))[0]
	if c.Status != Fail || !strings.Contains(c.Evidence, "vm.vcpu") || !strings.Contains(c.Remedy, "vm.vcpu") {
		t.Errorf("config with vcpu = 0: %+v", c)
	}

	writeConfig(t, l, "[qemu]\naccel = \"tcg\"\n[disk]\nbackend = \"dm\"\n")
	rs = Run(context.Background(), NewEnv(l), mustFind(t, "config", "accelerator", "device-mapper"))
	if rs[0].Status != Pass || !strings.Contains(rs[0].Evidence, `qemu.accel = "tcg"`) {
		t.Errorf("config = %+v", rs[0])
	}
	if rs[1].Status != Warn || !strings.Contains(rs[1].Evidence, `qemu.accel = "tcg" in config`) {
		t.Errorf("accelerator with accel = tcg: %+v", rs[1])
	}
	if !canOpen(mapperControl) && (rs[2].Status != Fail || !strings.Contains(rs[2].Remedy, `disk.backend = "auto"`)) {
		t.Errorf("device-mapper with disk.backend = dm: %+v", rs[2])
	}
}

func TestPreflightUnknownCheck(t *testing.T) {
	l, _ := tempLayout(t)
	if _, err := Preflight(context.Background(), NewEnv(l), "arch", "nope"); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("err = %v", err)
	}
}

// TestDoctorWritesNothing runs doctor over an empty layout and over one with
// a database, an image, a config and a probe cache, and compares the trees.
func TestDoctorWritesNothing(t *testing.T) {
	l, root := tempLayout(t)
	before := snapshot(t, root)
	Run(context.Background(), NewEnv(l), Checks())
	if after := snapshot(t, root); !reflect.DeepEqual(before, after) {
		t.Fatalf("doctor changed the tree:\nbefore %q\nafter  %q", before, after)
	}
	if _, err := os.Stat(l.Database()); err == nil {
		t.Fatal("doctor created the database")
	}

	// Now with state: a migrated database holding an image "default".
	img := registerImage(t, l, "default", fakeKernel(t))
	writeConfig(t, l, "log_level = \"debug\"\n")
	before = snapshot(t, root)
	rs := Run(context.Background(), NewEnv(l), Checks())
	if after := snapshot(t, root); !reflect.DeepEqual(before, after) {
		t.Fatalf("doctor changed the tree:\nbefore %q\nafter  %q", before, after)
	}
	if s := byName(t, rs, "store"); s.Status != Pass || !strings.Contains(s.Evidence, "schema version") ||
		!strings.Contains(s.Evidence, "1 image(s)") {
		t.Errorf("store = %+v", s)
	}
	if d := byName(t, rs, "default-image"); d.Status != Pass || !strings.Contains(d.Evidence, img.Kernel) {
		t.Errorf("default-image = %+v", d)
	}
	if _, err := os.Stat(filepath.Join(l.CacheDir, "kvm-probe.json")); err == nil {
		t.Error("doctor wrote the KVM probe cache")
	}

	// A default image whose kernel is gone is a FAIL.
	if err := os.Remove(img.Kernel); err != nil {
		t.Fatal(err)
	}
	if d := Run(context.Background(), NewEnv(l), mustFind(t, "default-image"))[0]; d.Status != Fail || !strings.Contains(d.Evidence, img.Kernel) {
		t.Errorf("default-image with its kernel gone = %+v", d)
	}
}

// fakeKernel is a file that is not a kernel: QEMU fails at once on it, so the
// KVM probe ends quickly (and says tcg).
func fakeKernel(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(p, []byte("not a kernel\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// registerImage creates the database (as the daemon would) with one image.
func registerImage(t *testing.T, l paths.Layout, name, kernel string) store.Image {
	t.Helper()
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s, err := store.Open(ctx, l.Database())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rootfs := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := os.WriteFile(rootfs, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	im := store.Image{Name: name, RootFS: rootfs, Kernel: kernel, CreatedAt: time.Now()}
	if err := s.InsertImage(ctx, im); err != nil {
		t.Fatal(err)
	}
	return im
}

// stockKernel is a guest kernel the test suite built earlier, if any.
func stockKernel(t *testing.T) string {
	t.Helper()
	ks, _ := filepath.Glob("/var/cache/banger-test/guest-*/vmlinuz")
	if len(ks) == 0 {
		t.Skip("no guest kernel under /var/cache/banger-test (built by scripts/test.sh)")
	}
	return ks[0]
}

// TestAcceleratorProbe boots a real stock kernel through the QEMU driver's
// KVM probe. On a PVM host (GUIDE §1) it hangs and the verdict is tcg; a
// cached verdict is then read without booting, and nothing is written.
func TestAcceleratorProbe(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a kernel")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("no QEMU")
	}
	if !canOpen("/dev/kvm") {
		t.Skip("no /dev/kvm: the probe does not run")
	}
	l, _ := tempLayout(t)
	kernel := stockKernel(t)
	registerImage(t, l, "default", kernel)
	start := time.Now()
	r := Run(context.Background(), NewEnv(l), mustFind(t, "accelerator"))[0]
	t.Logf("%s in %v: %s | %s", r.Status, time.Since(start).Round(time.Millisecond), r.Evidence, r.Remedy)
	switch {
	case strings.Contains(r.Evidence, "QEMU will use kvm"):
		if r.Status != Pass {
			t.Errorf("kvm verdict with status %s", r.Status)
		}
	case strings.Contains(r.Evidence, "QEMU will use tcg"):
		if r.Status != Warn || !strings.Contains(r.Evidence, "does not boot under it") || !strings.Contains(r.Remedy, `qemu.accel = "tcg"`) {
			t.Errorf("tcg verdict = %+v", r)
		}
	default:
		t.Errorf("accelerator = %+v", r)
	}
	cache := filepath.Join(l.CacheDir, "kvm-probe.json")
	if _, err := os.Stat(cache); err == nil {
		t.Fatal("doctor wrote the probe cache")
	}

	// A cached verdict for this kernel (as the daemon writes it) is used.
	st, err := os.Stat(kernel)
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(map[string]any{"kernel": kernel, "mod_time": st.ModTime(), "accel": "tcg", "reason": "recorded verdict"})
	if err := os.WriteFile(cache, rec, 0o600); err != nil {
		t.Fatal(err)
	}
	cst, _ := os.Stat(cache)
	start = time.Now()
	r = Run(context.Background(), NewEnv(l), mustFind(t, "accelerator"))[0]
	if r.Status != Warn || !strings.Contains(r.Evidence, "recorded verdict (cached probe)") || time.Since(start) > 3*time.Second {
		t.Errorf("with a cached verdict: %+v after %v", r, time.Since(start))
	}
	if cst2, _ := os.Stat(cache); !cst2.ModTime().Equal(cst.ModTime()) {
		t.Error("doctor rewrote the probe cache")
	}
}

// TestRunBoundsAndOrder: a check that ignores its context is abandoned at its
// timeout, a panic is a FAIL, and results keep the order of the checks.
func TestRunBoundsAndOrder(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	checks := []Check{
		{Name: "slow-ok", Run: func(context.Context, Env) Result { time.Sleep(50 * time.Millisecond); return pass("ok") }},
		{Name: "stuck", Timeout: 100 * time.Millisecond, Run: func(context.Context, Env) Result { <-block; return pass("late") }},
		{Name: "panics", Run: func(context.Context, Env) Result { panic("boom") }},
		{Name: "multi", Run: func(context.Context, Env) Result { return warn("a\nb\n", "fix\nit") }},
		{Name: "pass-remedy", Run: func(context.Context, Env) Result { return Result{Status: Pass, Evidence: "x", Remedy: "y"} }},
	}
	start := time.Now()
	rs := Run(context.Background(), Env{}, checks)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Run took %v", d)
	}
	want := []Result{
		{"slow-ok", Pass, "ok", ""},
		{"stuck", Fail, "", ""},
		{"panics", Fail, "the check panicked: boom", "report this as a banger bug"},
		{"multi", Warn, "a; b", "fix; it"},
		{"pass-remedy", Pass, "x", ""},
	}
	for i := range want {
		if rs[i].Name != want[i].Name || rs[i].Status != want[i].Status {
			t.Errorf("result %d = %+v, want %+v", i, rs[i], want[i])
		}
		if want[i].Evidence != "" && (rs[i].Evidence != want[i].Evidence || rs[i].Remedy != want[i].Remedy) {
			t.Errorf("result %d = %+v, want %+v", i, rs[i], want[i])
		}
	}
	if !strings.Contains(rs[1].Evidence, "did not finish within 100ms") {
		t.Errorf("stuck = %+v", rs[1])
	}
}

// TestNetworkConflict sets network.cidr to a route the host has and expects
// a FAIL naming it, with a free range as the fix.
func TestNetworkConflict(t *testing.T) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Skip(err)
	}
	var taken netip.Prefix
	for _, r := range routes {
		if p, ok := routePrefix(r); ok && r.LinkIndex > 0 && p.Bits() >= 16 && p.Bits() <= 29 && p.Addr().Is4() {
			taken = p
			break
		}
	}
	if !taken.IsValid() {
		t.Skip("no host route with an interface to collide with")
	}
	l, _ := tempLayout(t)
	writeConfig(t, l, fmt.Sprintf("[network]\ncidr = %q\nbridge = \"bgdoctest0\"\n", taken))
	r := Run(context.Background(), NewEnv(l), mustFind(t, "network"))[0]
	if r.Status != Fail || !strings.Contains(r.Evidence, taken.String()) || !strings.Contains(r.Remedy, "set network.cidr = ") {
		t.Fatalf("network = %+v", r)
	}
	t.Log(r.Evidence, "|", r.Remedy)
}

func TestLookPathIn(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "tool")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	lp := LookPathIn("relative:" + dir)
	if p, err := lp("tool"); err != nil || p != exe {
		t.Errorf("tool = %q, %v", p, err)
	}
	if _, err := lp("data"); err == nil {
		t.Error("a non-executable file was found")
	}
	if _, err := lp("missing"); err == nil {
		t.Error("a missing program was found")
	}
	if p, err := lp(exe); err != nil || p != exe {
		t.Errorf("absolute = %q, %v", p, err)
	}
}

// TestStoreWhileDaemonWrites reads a database whose latest write is still in
// the write-ahead log of an open writer, as with a running daemon.
func TestStoreWhileDaemonWrites(t *testing.T) {
	l, root := tempLayout(t)
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s, err := store.Open(ctx, l.Database())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.InsertImage(ctx, store.Image{Name: "default", RootFS: fakeKernel(t), Kernel: fakeKernel(t), CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(l.Database() + "-wal"); err != nil || st.Size() == 0 {
		t.Fatalf("expected a live write-ahead log: %v", err)
	}
	before := snapshot(t, root)
	rs := Run(ctx, NewEnv(l), mustFind(t, "store", "default-image"))
	if rs[0].Status != Pass || !strings.Contains(rs[0].Evidence, "1 image(s)") || rs[1].Status != Pass {
		t.Errorf("with a live writer: %+v", rs)
	}
	if after := snapshot(t, root); !reflect.DeepEqual(before, after) {
		t.Errorf("doctor changed the tree:\nbefore %q\nafter  %q", before, after)
	}
}

// TestDaemonAnswers serves daemon.status on the layout's socket.
func TestDaemonAnswers(t *testing.T) {
	l, _ := tempLayout(t)
	if err := os.MkdirAll(l.RunDir, 0o700); err != nil {
		t.Fatal(err)
	}
	srv := rpc.NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	var version atomic.Value
	version.Store(api.Version)
	srv.Handle(api.MethodDaemonStatus, func(context.Context, json.RawMessage, *rpc.Stream) (any, error) {
		return api.DaemonStatus{Version: version.Load().(string), PID: 4242, VMM: "qemu", Accel: "tcg", DiskBackend: "qcow2", VMsTotal: 3, VMsRunning: 1}, nil
	})
	ln, err := rpc.ListenUnix(l.Socket())
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())
	r := Run(context.Background(), NewEnv(l), mustFind(t, "daemon"))[0]
	if r.Status != Pass || !strings.Contains(r.Evidence, "pid 4242, version "+api.Version) || !strings.Contains(r.Evidence, "1/3 VMs running") {
		t.Errorf("daemon = %+v", r)
	}
	version.Store("0.0.0-old")
	r = Run(context.Background(), NewEnv(l), mustFind(t, "daemon"))[0]
	if r.Status != Warn || !strings.Contains(r.Remedy, "banger daemon stop") {
		t.Errorf("old daemon = %+v", r)
	}
}

// TestDNSRouting covers the three answers of the dns-routing check: not
// systemd-resolved (WARN with a recipe), systemd-resolved and the bridge not
// made yet (PASS), and systemd-resolved with the bridge present but not
// routed (WARN with the resolvectl commands). systemd-resolved cannot run
// here, so a stand-in resolvectl answers `resolvectl domain LINK`.
func TestDNSRouting(t *testing.T) {
	l, _ := tempLayout(t)
	writeConfig(t, l, "[network]\nbridge = \"lo\"\n")
	env := NewEnv(l)
	env.Resolver = resolved.Host{RunDir: filepath.Join(t.TempDir(), "absent")}
	r := Run(context.Background(), env, mustFind(t, "dns-routing"))[0]
	if r.Status != Warn || !strings.Contains(r.Remedy, "server=/vm/127.0.0.1#5354") || !strings.Contains(r.Remedy, "dig -p 5354 @127.0.0.1") {
		t.Fatalf("without systemd-resolved: %+v", r)
	}

	dir := t.TempDir()
	bin := filepath.Join(dir, "resolvectl")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho \"Link 1 ($2): ~example\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	env.Resolver = resolved.Host{RunDir: dir, Resolvectl: bin}
	// "lo" stands for a bridge that exists; it has no ~vm domain.
	r = Run(context.Background(), env, mustFind(t, "dns-routing"))[0]
	if r.Status != Warn || !strings.Contains(r.Remedy, "resolvectl domain lo ~vm") {
		t.Fatalf("systemd-resolved, link not routed: %+v", r)
	}
	writeConfig(t, l, "[network]\nbridge = \"bgdocnone0\"\n")
	env.facts = nil
	r = Run(context.Background(), env, mustFind(t, "dns-routing"))[0]
	if r.Status != Pass || !strings.Contains(r.Evidence, "when it starts") {
		t.Fatalf("systemd-resolved, no bridge yet: %+v", r)
	}
}

// When the recipe cannot be built here (recipe.Check's refusals are tested
// in internal/recipe) the check warns with the reason.
func TestDefaultImageNotBuildable(t *testing.T) {
	l, _ := tempLayout(t)
	env := NewEnv(l)
	env.RecipeCheck = func(context.Context, string) error {
		return errors.New("debootstrap not found in PATH or the sbin directories (on Debian: apt-get install debootstrap)")
	}
	r := Run(context.Background(), env, mustFind(t, "default-image"))[0]
	if r.Status != Warn || !strings.Contains(r.Evidence, "debootstrap") {
		t.Fatalf("default-image without debootstrap = %+v", r)
	}
}
