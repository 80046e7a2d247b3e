package hostnet

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"banger/internal/testutil/nsleak"
)

// testNetnsPrefix names every namespace these tests create (other packages
// use their own bgtest-* prefixes and may run at the same time).
const testNetnsPrefix = "bgtest-hostnet-"

func TestMain(m *testing.M) { nsleak.Main(m, testNetnsPrefix) }

// testNS is a fresh network namespace the calling test runs in.
type testNS struct {
	name  string
	orig  netns.NsHandle // the namespace the test started in
	ns    netns.NsHandle
	inode uint64
}

// enterTestNetns locks the test goroutine to its OS thread, creates a fresh
// named namespace bgtest-<pid>-<rand> and switches the thread into it. Only
// code running on this goroutine (not subtests, not other goroutines) is in
// the namespace. Cleanup switches the thread back, deletes the namespace
// (every link in it goes with it) and checks that it is gone: no bind mount,
// and no thread or process of this machine still in it.
//
// The goroutine is never unlocked: when the test goroutine ends its thread is
// discarded, so a thread that ever entered a test namespace is never reused.
func enterTestNetns(t testing.TB) *testNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("get current netns: %v", err)
	}
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("%s%d-%s", testNetnsPrefix, os.Getpid(), hex.EncodeToString(rnd[:]))
	ns, err := netns.NewNamed(name)
	if err != nil {
		// NewNamed may have switched the thread before failing; the thread
		// is discarded with the goroutine, but remove a half-made mount.
		_ = netns.Set(orig)
		_ = netns.DeleteNamed(name)
		orig.Close()
		t.Fatalf("create netns %s: %v", name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err != nil {
		t.Fatalf("stat netns %s: %v", name, err)
	}
	tn := &testNS{name: name, orig: orig, ns: ns, inode: st.Ino}
	t.Cleanup(func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("switch back to the original netns: %v", err)
		}
		orig.Close()
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
		if _, err := os.Stat(filepath.Join(nsleak.Dir, name)); !os.IsNotExist(err) {
			t.Errorf("netns %s still mounted after cleanup (stat: %v)", name, err)
		}
		if users := netnsUsers(st.Ino); len(users) > 0 {
			t.Errorf("netns %s still in use after cleanup by %s", name, strings.Join(users, ", "))
		}
	})
	return tn
}

// netnsUsers lists the /proc/<pid>/task/<tid> entries whose network
// namespace has the given inode.
func netnsUsers(inode uint64) []string {
	want := fmt.Sprintf("net:[%d]", inode)
	tasks, _ := filepath.Glob("/proc/[0-9]*/task/[0-9]*/ns/net")
	var out []string
	for _, p := range tasks {
		if l, err := os.Readlink(p); err == nil && l == want {
			out = append(out, filepath.Dir(filepath.Dir(p)))
		}
	}
	return out
}

// procNetnsInode returns the inode of the network namespace of process pid.
func procNetnsInode(pid int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

func TestNetnsHelperIsolates(t *testing.T) {
	tn := enterTestNetns(t)
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Ino != tn.inode {
		t.Fatalf("thread is in netns inode %d, want the test netns %d", st.Ino, tn.inode)
	}
	links, err := ListLinks("")
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0] != "lo" {
		t.Fatalf("fresh netns has links %v, want only lo", links)
	}
}
