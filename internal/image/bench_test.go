package image

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"banger/internal/testutil/ocitest"
)

// fixtureRootfs finds the test guest's rootfs.ext4 (BANGER_TEST_GUEST, or
// the newest complete guest under /var/cache/banger-test).
func fixtureRootfs(b *testing.B) string {
	dir := os.Getenv("BANGER_TEST_GUEST")
	if dir == "" {
		ms, _ := filepath.Glob("/var/cache/banger-test/guest-*/.complete")
		var newest time.Time
		for _, m := range ms {
			if fi, err := os.Stat(m); err == nil && fi.ModTime().After(newest) {
				newest, dir = fi.ModTime(), filepath.Dir(m)
			}
		}
	}
	p := filepath.Join(dir, "rootfs.ext4")
	if _, err := os.Stat(p); dir == "" || err != nil {
		b.Skip("no test guest: build it with test/fixture/build-guest.sh or set BANGER_TEST_GUEST")
	}
	return p
}

// BenchmarkPullFixture measures a registry pull (cold blob cache), flatten,
// guest-file injection and ext4 build of the test guest's root filesystem
// (~400 MB of content, one layer) served as an OCI image from a registry
// on 127.0.0.1, and reports image size against content size.
//
//	go test -run '^$' -bench PullFixture -benchtime 1x ./internal/image
func BenchmarkPullFixture(b *testing.B) {
	rootfs := fixtureRootfs(b)
	tree := filepath.Join(b.TempDir(), "tree")
	os.Mkdir(tree, 0o755)
	attrs := ocitest.ExtractExt4(b, rootfs, tree)
	reg := ocitest.Start(b)
	t0 := time.Now()
	ref := reg.Push(b, "bench/fixture:v1", ocitest.TreeLayer(b, tree, attrs))
	push := time.Since(t0)
	os.RemoveAll(tree)
	ctx := context.Background()
	took := map[string]time.Duration{}
	var res OCIResult
	var alloc int64 // bytes the sparse image occupies
	n := 0
	for b.Loop() {
		dir := b.TempDir()
		staging := filepath.Join(dir, "staging")
		os.Mkdir(staging, 0o700)
		run := func(name string, fn func() error) error {
			t := time.Now()
			err := fn()
			took[name] += time.Since(t)
			return err
		}
		var err error
		res, err = BuildFromOCI(ctx, OCIRequest{Ref: ref, CacheDir: filepath.Join(dir, "cache")}, staging, run, nil)
		if err != nil {
			b.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(staging, RootFSFile), &st); err != nil {
			b.Fatal(err)
		}
		alloc = st.Blocks * 512
		n++
		os.RemoveAll(dir)
	}
	for _, st := range []struct{ stage, unit string }{{StagePull, "pull-s"}, {StageFlatten, "flatten-s"}, {StageInject, "inject-s"}, {StageExt4, "ext4-s"}} {
		b.ReportMetric(took[st.stage].Seconds()/float64(n), st.unit)
	}
	b.ReportMetric(float64(res.Downloaded)/1e6, "downloaded-MB")
	b.ReportMetric(float64(res.ContentBytes)/1e6, "content-MB")
	b.ReportMetric(float64(res.SizeBytes)/1e6, "image-MB")
	b.ReportMetric(float64(alloc)/1e6, "image-allocated-MB")
	b.ReportMetric(float64(res.SizeBytes)/float64(res.ContentBytes), "image/content")
	b.ReportMetric(push.Seconds(), "push-s")
}
