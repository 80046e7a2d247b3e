package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"banger/internal/api"
	"banger/internal/disk"
	"banger/internal/vmm"
)

// VM is a vms row. Root, Tap, WorkPath and Dir are teardown identity: they are
// written before the things they name are created.
type VM struct {
	ID        string
	Name      string
	Image     string
	State     string
	VCPU      int
	MemoryMiB int
	DiskSize  int64
	WorkSize  int64
	IP        string
	MAC       string
	Tap       string
	Driver    string
	Root      disk.Root
	WorkPath  string
	Dir       string
	Handle    *vmm.Handle // nil when no VMM runs
	BootID    string
	Stages    []api.Stage
	LastError string
	CreatedAt time.Time
	StartedAt time.Time
	Workspace *api.Workspace // nil until a workspace is prepared
	NAT       bool           // masquerade the guest's traffic outward
	Publish   []string       // published ports, "[hostip:]hostport:guestport[/proto]"
}

const vmCols = `id, name, image, state, vcpu, memory_mib, disk_size, work_size, ip, mac, tap, driver,
	root_json, work_path, dir, handle_json, boot_id, stages_json, last_error, created_at, started_at, workspace_json, nat, publish_json`

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func scanVM(sc interface{ Scan(...any) error }) (VM, error) {
	var v VM
	var root, handle, stages, created, started, workspace, publish string
	err := sc.Scan(&v.ID, &v.Name, &v.Image, &v.State, &v.VCPU, &v.MemoryMiB, &v.DiskSize, &v.WorkSize,
		&v.IP, &v.MAC, &v.Tap, &v.Driver, &root, &v.WorkPath, &v.Dir, &handle, &v.BootID, &stages,
		&v.LastError, &created, &started, &workspace, &v.NAT, &publish)
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal([]byte(root), &v.Root); err != nil {
		return v, fmt.Errorf("vm %s: root_json: %w", v.Name, err)
	}
	if handle != "" {
		v.Handle = new(vmm.Handle)
		if err := json.Unmarshal([]byte(handle), v.Handle); err != nil {
			return v, fmt.Errorf("vm %s: handle_json: %w", v.Name, err)
		}
	}
	_ = json.Unmarshal([]byte(stages), &v.Stages)
	if err := json.Unmarshal([]byte(publish), &v.Publish); err != nil {
		return v, fmt.Errorf("vm %s: publish_json: %w", v.Name, err)
	}
	if workspace != "" {
		v.Workspace = new(api.Workspace)
		if err := json.Unmarshal([]byte(workspace), v.Workspace); err != nil {
			return v, fmt.Errorf("vm %s: workspace_json: %w", v.Name, err)
		}
	}
	v.CreatedAt, _ = time.Parse(time.RFC3339Nano, created)
	v.StartedAt, _ = time.Parse(time.RFC3339Nano, started)
	return v, nil
}

func vmArgs(v VM) []any {
	root, _ := json.Marshal(v.Root)
	handle := ""
	if v.Handle != nil {
		b, _ := json.Marshal(v.Handle)
		handle = string(b)
	}
	stages, _ := json.Marshal(v.Stages)
	if v.Stages == nil {
		stages = []byte("[]")
	}
	publish, _ := json.Marshal(v.Publish)
	if v.Publish == nil {
		publish = []byte("[]")
	}
	workspace := ""
	if v.Workspace != nil {
		b, _ := json.Marshal(v.Workspace)
		workspace = string(b)
	}
	return []any{v.ID, v.Name, v.Image, v.State, v.VCPU, v.MemoryMiB, v.DiskSize, v.WorkSize, v.IP, v.MAC,
		v.Tap, v.Driver, string(root), v.WorkPath, v.Dir, handle, v.BootID, string(stages), v.LastError,
		fmtTime(v.CreatedAt), fmtTime(v.StartedAt), workspace, v.NAT, string(publish)}
}

// InsertVM adds a VM row. Name and IP uniqueness are enforced by the schema.
func (s *Store) InsertVM(ctx context.Context, v VM) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO vms(`+vmCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`, vmArgs(v)...)
	return err
}

// UpdateVM rewrites every column of the row with v.ID.
func (s *Store) UpdateVM(ctx context.Context, v VM) error {
	a := vmArgs(v)
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET name=?, image=?, state=?, vcpu=?, memory_mib=?, disk_size=?,
		work_size=?, ip=?, mac=?, tap=?, driver=?, root_json=?, work_path=?, dir=?, handle_json=?, boot_id=?,
		stages_json=?, last_error=?, created_at=?, started_at=?, workspace_json=?, nat=?, publish_json=? WHERE id=?`, append(a[1:], a[0])...)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("vm %s: %w", v.Name, ErrNotFound)
	}
	return nil
}

// GetVM returns the VM with this name or ErrNotFound.
func (s *Store) GetVM(ctx context.Context, name string) (VM, error) {
	v, err := scanVM(s.db.QueryRowContext(ctx, `SELECT `+vmCols+` FROM vms WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return v, fmt.Errorf("vm %q: %w", name, ErrNotFound)
	}
	return v, err
}

// ListVMs returns all VMs by creation time.
func (s *Store) ListVMs(ctx context.Context) ([]VM, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+vmCols+` FROM vms ORDER BY created_at, name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []VM
	for rows.Next() {
		v, err := scanVM(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// DeleteVM removes the row with this id (idempotent).
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM vms WHERE id = ?`, id)
	return err
}

// GetVMByID returns the VM with this id or ErrNotFound.
func (s *Store) GetVMByID(ctx context.Context, id string) (VM, error) {
	v, err := scanVM(s.db.QueryRowContext(ctx, `SELECT `+vmCols+` FROM vms WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return v, fmt.Errorf("vm id %s: %w", id, ErrNotFound)
	}
	return v, err
}
