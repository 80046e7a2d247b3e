package vm

import (
	"archive/tar"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/image"
	"banger/internal/rpc"
	"banger/internal/store"
	"banger/internal/testutil/ocitest"
)

// withPullKernel gives the service a kernel for pulled images.
func withPullKernel(t *testing.T, s *Service) string {
	t.Helper()
	k := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(k, []byte("\x7fELF bangertest kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Config.Image.Kernel = k
	return k
}

func needE2fsprogs(t *testing.T) {
	t.Helper()
	for _, n := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if _, err := exec.LookPath(n); err != nil {
			if _, err := os.Stat("/sbin/" + n); err != nil {
				t.Skipf("e2fsprogs missing: %s", n)
			}
		}
	}
}

// waitOp follows an operation to its end and returns its final state.
func waitOp(t *testing.T, s *Service, op api.Op) (api.Op, []api.Stage) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var events []api.Stage
	final, err := s.OpWait(ctx, op.ID, func(st api.Stage) { events = append(events, st) })
	if err != nil {
		t.Fatal(err)
	}
	return final, events
}

// waitHeld waits (bounded) until op reports its stage held for the test
// (BANGER_TEST_HOLD_STAGE).
func waitHeld(t *testing.T, s *Service, op api.Op) {
	t.Helper()
	held := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		once := false
		s.OpWait(ctx, op.ID, func(st api.Stage) {
			if st.Detail == HeldDetail && !once {
				once = true
				close(held)
			}
		})
	}()
	select {
	case <-held:
	case <-time.After(time.Minute):
		t.Fatal("the pull never reached the held stage")
	}
}

// imagesDirEntries lists the managed store directory.
func imagesDirEntries(t *testing.T, s *Service) []string {
	t.Helper()
	ents, err := os.ReadDir(s.Paths.ImagesDir())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func debugfsCat(t *testing.T, img, p string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+p, img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", p, err)
	}
	return string(out)
}

func TestPullImage(t *testing.T) {
	needE2fsprogs(t)
	s := newTestService(t)
	kernel := withPullKernel(t, s)
	reg := ocitest.Start(t)
	ref := reg.Push(t, "bangertest/tool:v1",
		ocitest.BytesLayer(t, ocitest.Tar(t, ocitest.Dir("etc", 0o755), ocitest.File("etc/gone", 0o644, "x"),
			ocitest.Dir("etc/ssh", 0o755), ocitest.File("etc/ssh/ssh_host_rsa_key", 0o600, "baked key"),
			ocitest.Dir("usr", 0o755), ocitest.File("usr/payload", 0o644, strings.Repeat("p", 100000)),
			ocitest.Dir("root", 0o700), ocitest.File("root/.bashrc", 0o644, "# image dotfile\n"))),
		ocitest.BytesLayer(t, ocitest.Tar(t, ocitest.File("etc/.wh.gone", 0, ""),
			ocitest.Entry{Name: "usr/su", Mode: 0o4755, Body: "setuid"})))
	ctx := context.Background()
	op, err := s.PullImage(ctx, api.ImagePullParams{Ref: ref})
	if err != nil {
		t.Fatal(err)
	}
	if op.Image != "tool-v1" || op.Kind != api.MethodImagePull {
		t.Fatalf("op = %+v, want image tool-v1 of kind %s", op, api.MethodImagePull)
	}
	final, events := waitOp(t, s, op)
	if final.State != api.OpSucceeded {
		t.Fatalf("pull: %s %s", final.State, final.Error)
	}
	var names []string
	sawBytes := false
	for _, st := range final.Stages {
		names = append(names, st.Name)
	}
	for _, ev := range events {
		if ev.Name == image.StagePull && ev.State == "running" && ev.Total > 0 && ev.Bytes == ev.Total {
			sawBytes = true
		}
	}
	if want := []string{image.StagePull, image.StageFlatten, image.StageInject, image.StageExt4, StageRegister}; strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("stages %v, want %v", names, want)
	}
	if !sawBytes {
		t.Errorf("no byte progress reaching the total among %+v", events)
	}
	im, err := s.ShowImage(ctx, "tool-v1")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(s.Paths.ImagesDir(), "tool-v1")
	if !im.Managed || im.Source != store.SourceOCI || im.Ref != ref || !strings.HasPrefix(im.Digest, "sha256:") ||
		im.Dir != dir || im.RootFS != filepath.Join(dir, image.RootFSFile) || im.Kernel != kernel {
		t.Fatalf("image = %+v", im)
	}
	if im.ContentBytes < 100000 || im.SizeBytes < im.ContentBytes {
		t.Errorf("content %d bytes, image %d bytes", im.ContentBytes, im.SizeBytes)
	}
	row, _ := s.Store.GetImage(ctx, "tool-v1")
	if row.WorkSeed != filepath.Join(dir, image.SeedDir) {
		t.Errorf("work seed %q, want the image's /root in %s", row.WorkSeed, image.SeedDir)
	}
	if fi, err := os.Stat(filepath.Join(row.WorkSeed, ".bashrc")); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("work seed .bashrc: %v %v", fi, err)
	}
	if got := debugfsCat(t, im.RootFS, "/etc/fstab"); !strings.Contains(got, "banger") {
		t.Errorf("/etc/fstab not injected: %q", got)
	}
	out, _ := exec.Command("debugfs", "-R", "ls -p /etc/ssh", im.RootFS).Output()
	if strings.Contains(string(out), "ssh_host_rsa_key") {
		t.Errorf("baked SSH host key kept: %s", out)
	}
	out, _ = exec.Command("debugfs", "-R", "stat /usr/su", im.RootFS).Output()
	if !strings.Contains(string(out), "Mode:  04755") {
		t.Errorf("setuid lost: %s", out)
	}
	if got := imagesDirEntries(t, s); strings.Join(got, ",") != "tool-v1" {
		t.Errorf("images dir holds %v, want only tool-v1", got)
	}

	// The same name again is refused before anything starts.
	_, err = s.PullImage(ctx, api.ImagePullParams{Ref: ref})
	wantCode(t, err, rpc.CodeConflict, "tool-v1", "already exists")

	// Cache prune: the blobs of the pull are there, a dry run keeps them.
	r, err := s.PruneImageCache(ctx, api.ImageCachePruneParams{DryRun: true})
	if err != nil || r.Files < 3 || r.Bytes == 0 {
		t.Fatalf("dry-run prune = %+v, %v; want the config and 2 layers", r, err)
	}
	r2, err := s.PruneImageCache(ctx, api.ImageCachePruneParams{})
	if err != nil || r2.Files != r.Files || r2.Bytes != r.Bytes {
		t.Fatalf("prune = %+v, %v; want what the dry run reported (%+v)", r2, err, r)
	}
	if r3, _ := s.PruneImageCache(ctx, api.ImageCachePruneParams{DryRun: true}); r3.Files != 0 {
		t.Errorf("after prune, %d files remain", r3.Files)
	}

	// Delete refuses while a VM uses the image, then removes the files.
	v := insertVM(t, s, "bangertest-user", api.StateStopped)
	v.Image = "tool-v1"
	if err := s.Store.UpdateVM(ctx, v); err != nil {
		t.Fatal(err)
	}
	wantCode(t, s.DeleteImage(ctx, "tool-v1"), rpc.CodeFailedPrecondition, "bangertest-user")
	if err := s.Store.DeleteVM(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteImage(ctx, "tool-v1"); err != nil {
		t.Fatal(err)
	}
	if got := imagesDirEntries(t, s); len(got) != 0 {
		t.Errorf("after delete the images dir holds %v", got)
	}
}

// A failed pull (a hostile layer) or a canceled one leaves no row and no
// files; the refusal names the entry.
func TestPullImageFailureLeavesNothing(t *testing.T) {
	needE2fsprogs(t)
	s := newTestService(t)
	withPullKernel(t, s)
	reg := ocitest.Start(t)
	ctx := context.Background()
	hostile := map[string]ocitest.Entry{
		"dotdot":  ocitest.File("../bangertest-evil", 0o644, "x"),
		"symlink": ocitest.Symlink("bangertest-up", "../../outside"),
		"through": ocitest.Entry{Name: "bangertest-hard", Type: tar.TypeLink, Mode: 0o644, Link: "../../etc/passwd"},
	}
	for kind, e := range hostile {
		ref := reg.Push(t, "bangertest/hostile-"+kind+":1",
			ocitest.BytesLayer(t, ocitest.Tar(t, ocitest.Dir("etc", 0o755))), ocitest.BytesLayer(t, ocitest.Tar(t, e)))
		op, err := s.PullImage(ctx, api.ImagePullParams{Ref: ref})
		if err != nil {
			t.Fatal(err)
		}
		final, _ := waitOp(t, s, op)
		if final.State != api.OpFailed || !strings.Contains(final.Error, e.Name) {
			t.Errorf("%s: pull ended %s %q; want failed naming %q", kind, final.State, final.Error, e.Name)
		}
	}
	ims, _ := s.Store.ListImages(ctx)
	if len(ims) != 1 { // only newTestService's own
		t.Errorf("images after failed pulls: %+v", ims)
	}
	if got := imagesDirEntries(t, s); len(got) != 0 {
		t.Errorf("images dir after failed pulls holds %v", got)
	}

	// Cancel in the middle: held after the ext4 is built, then canceled.
	t.Setenv(testHoldEnv, image.StageExt4)
	ref := reg.Push(t, "bangertest/ok:1", ocitest.BytesLayer(t, ocitest.Tar(t, ocitest.Dir("etc", 0o755))))
	op, err := s.PullImage(ctx, api.ImagePullParams{Ref: ref, Name: "bangertest-cancel"})
	if err != nil {
		t.Fatal(err)
	}
	waitHeld(t, s, op)
	if staged := imagesDirEntries(t, s); len(staged) != 1 || !strings.HasPrefix(staged[0], ".staging-") {
		t.Fatalf("while held the store holds %v, want one staging directory", staged)
	}
	// The name is claimed while the pull runs.
	_, err = s.PullImage(ctx, api.ImagePullParams{Ref: ref, Name: "bangertest-cancel"})
	wantCode(t, err, rpc.CodeConflict, "being pulled")
	if _, err := s.OpCancel(op.ID); err != nil {
		t.Fatal(err)
	}
	final, _ := waitOp(t, s, op)
	if final.State != api.OpCanceled {
		t.Fatalf("canceled pull ended %s %s", final.State, final.Error)
	}
	if got := imagesDirEntries(t, s); len(got) != 0 {
		t.Errorf("images dir after cancel holds %v", got)
	}
	if _, err := s.Store.GetImage(ctx, "bangertest-cancel"); err == nil {
		t.Error("a canceled pull left its row")
	}
}

func TestPullImageBadInput(t *testing.T) {
	s := newTestService(t)
	ctx := context.Background()
	_, err := s.PullImage(ctx, api.ImagePullParams{Ref: "127.0.0.1:1/x:1"})
	wantCode(t, err, rpc.CodeFailedPrecondition, "[image] kernel")
	withPullKernel(t, s)
	for _, c := range []struct {
		p    api.ImagePullParams
		want string
	}{
		{api.ImagePullParams{}, "give a registry reference"},
		{api.ImagePullParams{Ref: "UPPER CASE!"}, "image reference"},
		{api.ImagePullParams{Ref: "127.0.0.1:1/x:1", Name: "Bad_Name"}, "image name"},
		{api.ImagePullParams{Ref: "127.0.0.1:1/x:1", Size: "lots"}, "--size"},
		{api.ImagePullParams{Ref: "127.0.0.1:1/x:1", Name: testImage}, "already exists"},
	} {
		_, err := s.PullImage(ctx, c.p)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("PullImage(%+v) = %v, want an error containing %q", c.p, err, c.want)
		}
	}
	if got := imagesDirEntries(t, s); len(got) != 0 {
		t.Errorf("refused pulls left %v", got)
	}
}

func TestPromoteImage(t *testing.T) {
	s := newTestService(t)
	ctx := context.Background()
	before, _ := s.Store.GetImage(ctx, testImage)
	im, err := s.PromoteImage(ctx, testImage)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(s.Paths.ImagesDir(), testImage)
	if !im.Managed || im.Source != store.SourcePromoted || im.Dir != dir || im.RootFS != filepath.Join(dir, image.RootFSFile) ||
		im.Kernel != filepath.Join(dir, "kernel") || im.Ref != before.RootFS {
		t.Fatalf("promoted = %+v", im)
	}
	fi, err := os.Stat(im.RootFS)
	if err != nil || fi.Size() != testImageSize {
		t.Fatalf("promoted rootfs: %v %v", fi, err)
	}
	if _, err := os.Stat(before.RootFS); err != nil {
		t.Errorf("the registered file was touched: %v", err)
	}
	_, err = s.PromoteImage(ctx, testImage)
	wantCode(t, err, rpc.CodeFailedPrecondition, "already in banger's store")
	_, err = s.PromoteImage(ctx, "bangertest-missing")
	wantCode(t, err, rpc.CodeNotFound, "bangertest-missing")
	if err := s.DeleteImage(ctx, testImage); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("delete left %s: %v", dir, err)
	}
	if _, err := os.Stat(before.RootFS); err != nil {
		t.Errorf("delete of the promoted image removed the original file: %v", err)
	}
}

// A cache prune never removes blobs under a running pull: it is refused
// while a pull reads the cache, and works once the pull is gone.
func TestPruneRefusedDuringPull(t *testing.T) {
	needE2fsprogs(t)
	s := newTestService(t)
	withPullKernel(t, s)
	reg := ocitest.Start(t)
	ref := reg.Push(t, "bangertest/prune:1", ocitest.BytesLayer(t, ocitest.Tar(t, ocitest.Dir("etc", 0o755))))
	t.Setenv(testHoldEnv, image.StageFlatten)
	ctx := context.Background()
	op, err := s.PullImage(ctx, api.ImagePullParams{Ref: ref})
	if err != nil {
		t.Fatal(err)
	}
	waitHeld(t, s, op)
	_, err = s.PruneImageCache(ctx, api.ImageCachePruneParams{})
	wantCode(t, err, rpc.CodeFailedPrecondition, "pull is using the blob cache")
	s.OpCancel(op.ID)
	if final, _ := waitOp(t, s, op); final.State != api.OpCanceled {
		t.Fatalf("pull ended %s", final.State)
	}
	r, err := s.PruneImageCache(ctx, api.ImageCachePruneParams{})
	if err != nil || r.Files == 0 {
		t.Fatalf("prune after the pull: %+v %v", r, err)
	}
}

// Reconcile removes what an interrupted pull left: staging directories and
// an image directory without a row; a managed image's directory stays.
func TestReconcileImageStore(t *testing.T) {
	s := newTestService(t)
	ctx := context.Background()
	if _, err := s.PromoteImage(ctx, testImage); err != nil {
		t.Fatal(err)
	}
	is := s.imageStore()
	st, _ := is.Stage()
	os.WriteFile(filepath.Join(st, image.RootFSFile), []byte("half"), 0o600)
	orphan, _ := is.Stage()
	if _, err := is.Commit(orphan, "bangertest-orphan"); err != nil {
		t.Fatal(err)
	}
	if err := s.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := imagesDirEntries(t, s); strings.Join(got, ",") != testImage {
		t.Errorf("after reconcile the store holds %v, want only %s", got, testImage)
	}
}
