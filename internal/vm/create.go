package vm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/disk"
	"banger/internal/hostnet"
	"banger/internal/store"
	"banger/internal/workspace"
)

// Stage names of create and start, in order.
const (
	StageResolveImage = "resolve image"
	StagePrepareDisks = "prepare disks"
	StageNetwork      = "network"
	StageLaunch       = "launch VMM"
	StageWaitGuest    = "wait for guest"
	StageSyncFiles    = "sync files"
)

func nowUTC() time.Time { return time.Now().UTC() }

func allocate(cidr netip.Prefix, used []netip.Addr) (netip.Addr, error) {
	return hostnet.Allocate(cidr, used)
}

func macFor(id string) string { return hostnet.MAC(id) }

// undoStack records what an operation created so a failure or cancel can
// remove it in reverse order. Every step runs; errors are logged.
type undoStack struct {
	steps []undoStep
}

type undoStep struct {
	what string
	fn   func(ctx context.Context) error
}

func (u *undoStack) push(what string, fn func(ctx context.Context) error) {
	u.steps = append(u.steps, undoStep{what, fn})
}

func (u *undoStack) run(log *slog.Logger, vm string) error {
	// Rollback must finish even when the operation's own context was canceled.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var errs []error
	for i := len(u.steps) - 1; i >= 0; i-- {
		st := u.steps[i]
		if err := st.fn(ctx); err != nil {
			log.Error("rollback step failed", "vm", vm, "step", st.what, "err", err)
			errs = append(errs, fmt.Errorf("%s: %w", st.what, err))
		} else {
			log.Info("rolled back", "vm", vm, "step", st.what)
		}
	}
	u.steps = nil
	return errors.Join(errs...)
}

// Create validates p, reserves the VM and begins the asynchronous create.
// Validation errors return before anything exists.
func (s *Service) Create(ctx context.Context, p api.VMCreateParams) (api.Op, error) {
	req, err := s.validateCreate(ctx, p)
	if err != nil {
		return api.Op{}, err
	}
	if err := s.preflight(ctx); err != nil {
		return api.Op{}, err
	}
	v, err := s.reserveVM(ctx, req)
	if err != nil {
		return api.Op{}, err
	}
	s.Log.Info("create begins", "vm", v.Name, "id", v.ID, "image", v.Image, "ip", v.IP)
	return s.ops.begin(api.MethodVMCreate, v.Name, func(ctx context.Context, report Reporter) error {
		unlock := s.mustLockVM(v.ID)
		defer unlock()
		return s.runCreate(ctx, v, req, report)
	}), nil
}

// preflight runs Deps.Preflight when set.
func (s *Service) preflight(ctx context.Context) error {
	if s.Preflight == nil {
		return nil
	}
	return s.Preflight(ctx)
}

func (s *Service) runCreate(ctx context.Context, v store.VM, req createRequest, report Reporter) (err error) {
	st := newStages(v.Name, s.Log, report)
	var undo undoStack
	undo.push("delete VM record", func(ctx context.Context) error { return s.Store.DeleteVM(ctx, v.ID) })
	booted := false
	defer func() {
		if err != nil && booted && req.keepFailed && ctx.Err() == nil {
			// boot already stopped the VMM and released the tap; the row,
			// disks and console log stay for `vm logs` (see KeepFailed).
			s.Log.Warn("create failed; keeping the stopped VM as asked", "vm", v.Name, "err", err)
			err = fmt.Errorf("%w (vm %s was kept, stopped: read `banger vm logs %s`, remove it with `banger vm delete %s`)", err, v.Name, v.Name, v.Name)
			return
		}
		if err != nil {
			s.Log.Warn("create failed; rolling back", "vm", v.Name, "err", err)
			if uerr := undo.run(s.Log, v.Name); uerr != nil {
				err = fmt.Errorf("%w (rollback incomplete: %v)", err, uerr)
			}
		}
	}()

	var im store.Image
	if err := st.run(ctx, StageResolveImage, func() error {
		var err error
		im, err = s.Store.GetImage(ctx, req.image.Name)
		if err != nil {
			return err
		}
		for _, f := range []string{im.RootFS, im.Kernel, im.Initrd} {
			if f == "" {
				continue
			}
			if err := fileExists(f); err != nil {
				return fmt.Errorf("image %s: %w", im.Name, err)
			}
		}
		return nil
	}); err != nil {
		return err
	}

	if err := st.run(ctx, StagePrepareDisks, func() error {
		if err := os.MkdirAll(v.Dir, 0o700); err != nil {
			return err
		}
		undo.push("remove VM directory", func(context.Context) error { return os.RemoveAll(v.Dir) })
		root, err := s.Disk.Create(ctx, im.RootFS, v.Dir+"/root", req.diskSize)
		if err != nil {
			return fmt.Errorf("root disk (%s): %w", s.Disk.Name(), err)
		}
		undo.push("remove root disk", func(ctx context.Context) error { return s.Disk.Remove(ctx, root) })
		v.Root = root
		if err := s.save(&v); err != nil {
			return err
		}
		return disk.CreateWorkDisk(ctx, v.WorkPath, req.workSize, "", s.guestFiles())
	}); err != nil {
		return err
	}

	if req.noStart {
		st.skip(StageNetwork, "--no-start")
		st.skip(StageLaunch, "--no-start")
		st.skip(StageWaitGuest, "--no-start")
		v.State = api.StateStopped
		v.Stages = st.list
		return s.save(&v)
	}
	booted = true
	if err := s.boot(ctx, &v, im, st); err != nil {
		return err
	}
	s.syncFiles(ctx, &v, st)
	return nil
}

// syncFiles copies the [[file_sync]] entries into a new, running VM. A
// failure is reported on the stage and logged but does not undo the create:
// the VM works, it only lacks some of the user's files.
func (s *Service) syncFiles(ctx context.Context, v *store.VM, st *stages) {
	if len(s.Config.FileSync) == 0 {
		return
	}
	var warnings []string
	_ = st.run(ctx, StageSyncFiles, func() error {
		c, err := s.dialGuest(ctx, v.Name)
		if err == nil {
			defer c.Close()
			entries := make([]workspace.SyncEntry, len(s.Config.FileSync))
			for i, e := range s.Config.FileSync {
				entries[i] = workspace.SyncEntry{Host: e.Host, Guest: e.Guest}
			}
			warnings, err = workspace.FileSync(ctx, sshGuest{c}, entries, workspace.SyncOptions{})
		}
		if err != nil {
			warnings = append(warnings, err.Error())
		}
		if len(warnings) > 0 {
			st.note(strings.Join(warnings, "; "))
			s.Log.Warn("file_sync incomplete", "vm", v.Name, "warnings", warnings)
		}
		return nil
	})
	v.Stages = st.list
	s.save(v)
}

// guestFiles are written into each work disk (/root in the guest) before boot.
func (s *Service) guestFiles() []disk.File {
	return []disk.File{
		{Path: ".ssh", Mode: os.ModeDir | 0o700},
		{Path: ".ssh/authorized_keys", Mode: 0o600, Data: []byte(s.Keys.AuthorizedKey())},
	}
}
