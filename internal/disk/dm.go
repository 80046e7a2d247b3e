package disk

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// dmBackend is a device-mapper snapshot: the base is attached read-only to a
// loop device, a sparse per-VM COW file to another, and
// "snapshot <base> <cow> P 8" joins them into /dev/mapper/<DMName>.
//
// The COW file's apparent size encodes the virtual disk size v (see cowSize),
// so Activate needs nothing but the Root. When v exceeds the base, a second
// device <DMName>-origin (linear base + zero target) is the snapshot origin.
type dmBackend struct{}

const (
	mapperControl = "/dev/mapper/control"
	sector        = 512
	cowReserve    = 1 << 20
)

// dmMu serialises Activate/Deactivate so that detaching orphaned base loops
// never races another VM's activation in this process.
var dmMu sync.Mutex

func (dmBackend) Name() string { return "dm" }

func (dmBackend) Available(string) error {
	f, err := os.OpenFile(mapperControl, os.O_RDWR, 0)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		if errors.Is(err, fs.ErrPermission) {
			return unavailable("device-mapper needs root (%s: %v)", mapperControl, err)
		}
		return unavailable("device-mapper is not available in this kernel (%s: %v)", mapperControl, err)
	}
	f.Close()
	if err := needTool("dmsetup"); err != nil {
		return err
	}
	return needTool("losetup")
}

// cowSize is the COW file size for a virtual disk of v bytes (a multiple of
// 512): v for the data plus v/128 and 1 MiB for the exception table (which
// needs about v/256), so the snapshot cannot overflow. The file is sparse.
func cowSize(v int64) int64 { return v + v/128 + cowReserve }

// virtualSize inverts cowSize.
func virtualSize(cow int64) (int64, error) {
	n := (cow - cowReserve) * 128
	if cow <= cowReserve || n%129 != 0 || (n/129)%sector != 0 {
		return 0, fmt.Errorf("COW file size %d was not made by the dm backend", cow)
	}
	return n / 129, nil
}

// dmName derives a stable device-mapper name from the COW path.
func dmName(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = path
	}
	sum := sha256.Sum256([]byte(abs))
	label := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, filepath.Base(filepath.Dir(abs))+"-"+filepath.Base(abs))
	if len(label) > 48 {
		label = label[:48]
	}
	return "banger-" + label + "-" + hex.EncodeToString(sum[:6])
}

func (b dmBackend) Create(ctx context.Context, base, path string, sizeBytes int64) (Root, error) {
	absBase, baseSize, err := checkBase(base)
	if err != nil {
		return Root{}, err
	}
	cow, err := filepath.Abs(path + ".cow")
	if err != nil {
		return Root{}, err
	}
	v := roundUp(max(sizeBytes, baseSize), sector)
	f, err := os.OpenFile(cow, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return Root{}, err
	}
	err = f.Truncate(cowSize(v))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(cow)
		return Root{}, fmt.Errorf("size COW file: %w", err)
	}
	return Root{Backend: b.Name(), Path: cow, Format: "raw", Base: absBase, DMName: dmName(cow)}, nil
}

func roundUp(n, m int64) int64 { return (n + m - 1) / m * m }

// Activate attaches the loops and creates the snapshot; every step is undone
// in reverse if a later one fails. An existing device is reused.
func (dmBackend) Activate(ctx context.Context, r Root) (dev string, err error) {
	if r.DMName == "" {
		return "", errors.New("dm root has no device-mapper name")
	}
	dmMu.Lock()
	defer dmMu.Unlock()
	node := "/dev/mapper/" + r.DMName
	if _, ok := dmDevice(r.DMName); ok {
		if _, err := os.Stat(node); err != nil {
			if _, err := run(ctx, "dmsetup", "mknodes", r.DMName); err != nil {
				return "", err
			}
		}
		return node, nil
	}
	// Clear leftovers of an interrupted activation (stale origin, loops).
	if err := deactivate(ctx, r); err != nil {
		return "", fmt.Errorf("clean up before activation: %w", err)
	}
	baseSize, err := fileSize(r.Base)
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	cowBytes, err := fileSize(r.Path)
	if err != nil {
		return "", fmt.Errorf("COW file: %w", err)
	}
	v, err := virtualSize(cowBytes)
	if err != nil {
		return "", fmt.Errorf("%s: %w", r.Path, err)
	}

	var undo []func() error
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				if uerr := undo[i](); uerr != nil {
					err = fmt.Errorf("%w (rollback: %v)", err, uerr)
				}
			}
		}
	}()
	bg := context.WithoutCancel(ctx)
	attach := func(args ...string) (string, error) {
		out, err := run(ctx, "losetup", append([]string{"--find", "--show"}, args...)...)
		loop := strings.TrimSpace(out)
		if err == nil {
			undo = append(undo, func() error { _, err := run(bg, "losetup", "-d", loop); return err })
		}
		return loop, err
	}
	create := func(name, table string) error {
		_, err := runInput(ctx, strings.NewReader(table), "dmsetup", "create", name)
		if err == nil {
			undo = append(undo, func() error { return dmRemove(bg, name) })
		}
		return err
	}

	baseLoop, err := attach("--read-only", r.Base)
	if err != nil {
		return "", err
	}
	cowLoop, err := attach(r.Path)
	if err != nil {
		return "", err
	}
	origin, baseSectors, vSectors := baseLoop, baseSize/sector, v/sector
	if vSectors > baseSectors {
		origin = "/dev/mapper/" + r.DMName + "-origin"
		table := fmt.Sprintf("0 %d linear %s 0\n%d %d zero\n", baseSectors, baseLoop, baseSectors, vSectors-baseSectors)
		if err := create(r.DMName+"-origin", table); err != nil {
			return "", err
		}
	}
	table := fmt.Sprintf("0 %d snapshot %s %s P 8", vSectors, origin, cowLoop)
	if _, err := run(ctx, "dmsetup", "create", r.DMName, "--table", table); err != nil {
		return "", err
	}
	return node, nil
}

// Deactivate removes the snapshot (and origin) devices, then detaches the
// loops they used. It needs no state but the Root, so it works after a
// daemon restart: the COW loops are found with losetup -j, base loops by the
// device's slaves or, for orphans, as read-only loops of the base that
// nothing holds.
func (dmBackend) Deactivate(ctx context.Context, r Root) error {
	dmMu.Lock()
	defer dmMu.Unlock()
	return deactivate(ctx, r)
}

func deactivate(ctx context.Context, r Root) error {
	loops := map[string]bool{}
	var names []string
	if r.DMName != "" {
		names = []string{r.DMName, r.DMName + "-origin"}
	}
	for _, name := range names {
		blk, ok := dmDevice(name)
		if !ok {
			continue
		}
		for _, s := range slaves(blk) {
			if strings.HasPrefix(s, "loop") {
				loops["/dev/"+s] = true
			}
		}
		if err := dmRemove(ctx, name); err != nil {
			return err
		}
	}
	cowLoops, err := loopsOf(ctx, r.Path)
	if err != nil {
		return err
	}
	for _, l := range cowLoops {
		loops[l] = true
	}
	baseLoops, err := loopsOf(ctx, r.Base)
	if err != nil {
		return err
	}
	for _, l := range baseLoops {
		if orphanReadOnly(l) {
			loops[l] = true
		}
	}
	var errs []error
	for l := range loops {
		if _, err := run(ctx, "losetup", "-d", l); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (b dmBackend) Remove(ctx context.Context, r Root) error {
	if err := b.Deactivate(ctx, r); err != nil {
		return err
	}
	return removeFile(ctx, r.Path)
}

// dmRemove runs dmsetup remove, retrying (bounded) while the device is busy.
func dmRemove(ctx context.Context, name string) error {
	var err error
	for i := 0; i < busyRetries; i++ {
		if _, err = run(ctx, "dmsetup", "remove", name); err == nil {
			return nil
		}
		if _, ok := dmDevice(name); !ok {
			return nil
		}
		if !strings.Contains(err.Error(), "busy") {
			return err
		}
		if serr := sleepCtx(ctx, busyDelay); serr != nil {
			return err
		}
	}
	return err
}

// dmDevice finds the block device (e.g. "dm-3") of a device-mapper name.
func dmDevice(name string) (string, bool) {
	paths, _ := filepath.Glob("/sys/block/dm-*/dm/name")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil && strings.TrimSpace(string(b)) == name {
			return filepath.Base(filepath.Dir(filepath.Dir(p))), true
		}
	}
	return "", false
}

// slaves lists the block devices under blk, recursively (e.g. loop0, loop1).
func slaves(blk string) []string {
	ents, _ := os.ReadDir("/sys/block/" + blk + "/slaves")
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
		out = append(out, slaves(e.Name())...)
	}
	return out
}

// loopsOf lists the loop devices backed by file (losetup -j).
func loopsOf(ctx context.Context, file string) ([]string, error) {
	if file == "" {
		return nil, nil
	}
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	out, err := run(ctx, "losetup", "-j", file)
	if err != nil {
		return nil, err
	}
	var loops []string
	for _, line := range strings.Split(out, "\n") {
		if dev, _, ok := strings.Cut(line, ":"); ok && strings.HasPrefix(dev, "/dev/loop") {
			loops = append(loops, dev)
		}
	}
	return loops, nil
}

// orphanReadOnly reports a read-only loop device that no device holds.
func orphanReadOnly(loop string) bool {
	sys := "/sys/block/" + filepath.Base(loop)
	ro, err := os.ReadFile(sys + "/ro")
	if err != nil || strings.TrimSpace(string(ro)) != "1" {
		return false
	}
	holders, err := os.ReadDir(sys + "/holders")
	return err == nil && len(holders) == 0
}
