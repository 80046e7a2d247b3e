package vm

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/rpc"
)

func intp(n int) *int { return &n }

// Every invalid request is refused with a clear error before anything is
// created: no row, no VM directory, no operation.
func TestCreateRejectsInvalidRequests(t *testing.T) {
	hostMiB := hostMemMiB()
	if hostMiB <= 0 {
		t.Fatal("cannot read MemTotal from /proc/meminfo")
	}
	ncpu := runtime.NumCPU()
	ok := func(p api.VMCreateParams) api.VMCreateParams {
		if p.Image == "" {
			p.Image = testImage
		}
		return p
	}
	for _, tc := range []struct {
		name string
		p    api.VMCreateParams
		code int
		want []string
	}{
		{"bad name", ok(api.VMCreateParams{Name: "Bangertest_VM"}), rpc.CodeInvalidArgument,
			[]string{`"Bangertest_VM"`, "not a DNS label"}},
		{"name too long", ok(api.VMCreateParams{Name: "bangertest-" + strings.Repeat("a", 60)}), rpc.CodeInvalidArgument,
			[]string{"71 characters", "limit is 63"}},
		{"zero vcpu", ok(api.VMCreateParams{VCPU: intp(0)}), rpc.CodeInvalidArgument,
			[]string{"--vcpu 0", "at least 1"}},
		{"negative vcpu", ok(api.VMCreateParams{VCPU: intp(-2)}), rpc.CodeInvalidArgument,
			[]string{"--vcpu -2", "at least 1"}},
		{"more vcpus than host", ok(api.VMCreateParams{VCPU: intp(ncpu + 1)}), rpc.CodeInvalidArgument,
			[]string{fmt.Sprintf("--vcpu %d", ncpu+1), fmt.Sprintf("this host has %d CPUs", ncpu)}},
		{"memory over host RAM", ok(api.VMCreateParams{Memory: fmt.Sprintf("%dM", hostMiB+1024)}), rpc.CodeInvalidArgument,
			[]string{fmt.Sprintf("--memory \"%dM\"", hostMiB+1024), fmt.Sprintf("%d MiB of RAM", hostMiB)}},
		{"memory too small", ok(api.VMCreateParams{Memory: "64M"}), rpc.CodeInvalidArgument,
			[]string{`--memory "64M"`, "at least 128MiB"}},
		{"memory just under 128MiB", ok(api.VMCreateParams{Memory: fmt.Sprint(128<<20 - 1)}), rpc.CodeInvalidArgument,
			[]string{"at least 128MiB"}},
		{"memory malformed", ok(api.VMCreateParams{Memory: "lots"}), rpc.CodeInvalidArgument,
			[]string{`--memory "lots"`}},
		{"memory zero", ok(api.VMCreateParams{Memory: "0"}), rpc.CodeInvalidArgument,
			[]string{`--memory "0"`, "larger than zero"}},
		{"memory negative", ok(api.VMCreateParams{Memory: "-1G"}), rpc.CodeInvalidArgument,
			[]string{`--memory "-1G"`, "positive"}},
		{"disk size malformed", ok(api.VMCreateParams{DiskSize: "huge"}), rpc.CodeInvalidArgument,
			[]string{`--disk-size "huge"`}},
		{"disk smaller than image", ok(api.VMCreateParams{DiskSize: "32M"}), rpc.CodeInvalidArgument,
			[]string{"--disk-size 32M", "smaller than image " + testImage, fmt.Sprint(testImageSize), "only grow"}},
		{"work size malformed", ok(api.VMCreateParams{WorkSize: "4 gigs"}), rpc.CodeInvalidArgument,
			[]string{`work disk size "4 gigs"`}},
		{"work size too small", ok(api.VMCreateParams{WorkSize: "8M"}), rpc.CodeInvalidArgument,
			[]string{`work disk size "8M"`, "at least 16MiB"}},
		{"missing image", api.VMCreateParams{Image: "bangertest-nope"}, rpc.CodeNotFound,
			[]string{`no image named "bangertest-nope"`, "banger image list"}},
		{"no image and no default", api.VMCreateParams{}, rpc.CodeNotFound,
			[]string{"no --image given", `no image named "default"`, "banger image register"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestService(t)
			op, err := s.Create(context.Background(), tc.p)
			wantCode(t, err, tc.code, tc.want...)
			assertNothingCreated(t, s, op, 0)
		})
	}
}

func TestCreateRejectsDuplicateName(t *testing.T) {
	s := newTestService(t)
	existing := insertVM(t, s, "bangertest-dup", api.StateStopped)

	op, err := s.Create(context.Background(), api.VMCreateParams{Name: "bangertest-dup", Image: testImage})
	wantCode(t, err, rpc.CodeConflict, `a VM named "bangertest-dup" already exists`)
	assertNothingCreated(t, s, op, 1)
	got, err := s.Store.GetVM(context.Background(), "bangertest-dup")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != existing.ID || got.State != api.StateStopped || got.IP != existing.IP {
		t.Fatalf("existing row changed: %+v, was %+v", got, existing)
	}
}

// assertNothingCreated checks that a refused create left the store with
// wantRows rows (those inserted by the test), made no VM directory and began
// no operation.
func assertNothingCreated(t *testing.T, s *Service, op api.Op, wantRows int) {
	t.Helper()
	if op.ID != "" {
		t.Errorf("refused create returned op %+v", op)
	}
	if vms := listVMs(t, s); len(vms) != wantRows {
		t.Errorf("store has %d rows after a refused create, want %d: %+v", len(vms), wantRows, vms)
	}
	ents, err := os.ReadDir(s.Paths.VMsDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("VMs directory has %d entries after a refused create", len(ents))
	}
	s.ops.mu.Lock()
	n := len(s.ops.ops)
	s.ops.mu.Unlock()
	if n != 0 {
		t.Errorf("%d operations exist after a refused create", n)
	}
}

// A valid request gets the config defaults (newTestService sets vm.vcpu = 1) and the image's size as the
// minimum root disk size; validation itself writes nothing.
func TestValidateCreateAppliesDefaults(t *testing.T) {
	s := newTestService(t)
	ctx := context.Background()
	r, err := s.validateCreate(ctx, api.VMCreateParams{Image: testImage})
	if err != nil {
		t.Fatal(err)
	}
	if r.name != "" || r.image.Name != testImage || r.vcpu != 1 ||
		r.memoryMiB != 1024 || r.diskSize != testImageSize || r.workSize != 4<<30 || r.noStart {
		t.Fatalf("defaults: got %+v", r)
	}

	r, err = s.validateCreate(ctx, api.VMCreateParams{Name: "bangertest-ok", Image: testImage, VCPU: intp(1),
		Memory: "1.5G", DiskSize: "1GiB", WorkSize: "16M", NoStart: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.name != "bangertest-ok" || r.vcpu != 1 || r.memoryMiB != 1536 || r.diskSize != 1<<30 ||
		r.workSize != 16<<20 || !r.noStart {
		t.Fatalf("explicit values: got %+v", r)
	}
	if n := len(listVMs(t, s)); n != 0 {
		t.Fatalf("validation wrote %d rows", n)
	}
}

func TestHostMemMiBMatchesMeminfo(t *testing.T) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Skip("no /proc/meminfo")
	}
	var kb int
	if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err != nil {
		t.Fatalf("parse meminfo: %v", err)
	}
	if got := hostMemMiB(); got != kb/1024 {
		t.Fatalf("hostMemMiB() = %d, want %d", got, kb/1024)
	}
}

// TestCreateAndStartRunPreflight: a host that fails preflight refuses create
// and start with the check's error, and nothing is made.
func TestCreateAndStartRunPreflight(t *testing.T) {
	s := newTestService(t)
	stopped := insertVM(t, s, "bangertest-pf", api.StateStopped)
	s.Preflight = func(context.Context) error {
		return rpc.Errorf(rpc.CodeFailedPrecondition, "mkfs.ext4: not found (fix: apt-get install e2fsprogs)")
	}
	op, err := s.Create(context.Background(), api.VMCreateParams{Name: "bangertest-new", Image: testImage})
	wantCode(t, err, rpc.CodeFailedPrecondition, "apt-get install e2fsprogs")
	assertNothingCreated(t, s, op, 1)
	_, err = s.Start(context.Background(), stopped.Name, nil)
	wantCode(t, err, rpc.CodeFailedPrecondition, "apt-get install e2fsprogs")
	if got, _ := s.Store.GetVM(context.Background(), stopped.Name); got.State != api.StateStopped {
		t.Fatalf("refused start changed the VM: %+v", got)
	}
}
