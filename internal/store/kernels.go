package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Kernel is a kernels row: a kernel in banger's kernel store.
type Kernel struct {
	Name      string
	Release   string // uname -r of the kernel; its modules are in Dir/modules/Release
	Dir       string // store directory: vmlinuz, modules/
	Source    string // where it came from ("import ...", "pull PACKAGE VERSION")
	SizeBytes int64
	CreatedAt time.Time
}

const kernelCols = `name, release, dir, source, size_bytes, created_at`

func scanKernel(sc interface{ Scan(...any) error }) (Kernel, error) {
	var k Kernel
	var created string
	err := sc.Scan(&k.Name, &k.Release, &k.Dir, &k.Source, &k.SizeBytes, &created)
	k.CreatedAt, _ = time.Parse(time.RFC3339Nano, created)
	return k, err
}

// UpsertKernel adds a kernel or replaces the row of the same name.
func (s *Store) UpsertKernel(ctx context.Context, k Kernel) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO kernels(`+kernelCols+`) VALUES (?,?,?,?,?,?)
		ON CONFLICT(name) DO UPDATE SET release=excluded.release, dir=excluded.dir, source=excluded.source,
		size_bytes=excluded.size_bytes, created_at=excluded.created_at`,
		k.Name, k.Release, k.Dir, k.Source, k.SizeBytes, k.CreatedAt.UTC().Format(time.RFC3339Nano))
	return err
}

// GetKernel returns the named kernel or ErrNotFound.
func (s *Store) GetKernel(ctx context.Context, name string) (Kernel, error) {
	k, err := scanKernel(s.db.QueryRowContext(ctx, `SELECT `+kernelCols+` FROM kernels WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return k, fmt.Errorf("kernel %q: %w", name, ErrNotFound)
	}
	return k, err
}

// ListKernels returns all kernels by name.
func (s *Store) ListKernels(ctx context.Context) ([]Kernel, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+kernelCols+` FROM kernels ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Kernel
	for rows.Next() {
		k, err := scanKernel(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// DeleteKernel removes a kernel row; it fails while an image uses it.
func (s *Store) DeleteKernel(ctx context.Context, name string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM kernels WHERE name = ?`, name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("kernel %q: %w", name, ErrNotFound)
	}
	return nil
}

// SetImageKernel records that image boots with the store kernel.
func (s *Store) SetImageKernel(ctx context.Context, image, kernel string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO image_kernels(image, kernel) VALUES (?, ?)
		ON CONFLICT(image) DO UPDATE SET kernel=excluded.kernel`, image, kernel)
	return err
}

// ImageKernel returns the store kernel image boots with ("" for an image
// registered with a kernel file).
func (s *Store) ImageKernel(ctx context.Context, image string) (string, error) {
	var k string
	err := s.db.QueryRowContext(ctx, `SELECT kernel FROM image_kernels WHERE image = ?`, image).Scan(&k)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return k, err
}

// ImagesUsingKernel returns the images that boot with the store kernel.
func (s *Store) ImagesUsingKernel(ctx context.Context, kernel string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT image FROM image_kernels WHERE kernel = ? ORDER BY image`, kernel)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}
