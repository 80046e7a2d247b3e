package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Image is an images row.
type Image struct {
	Name      string
	RootFS    string
	Kernel    string
	Initrd    string
	Managed   bool
	SizeBytes int64
	CreatedAt time.Time
}

const imageCols = `name, rootfs, kernel, initrd, managed, size_bytes, created_at`

func scanImage(sc interface{ Scan(...any) error }) (Image, error) {
	var im Image
	var created string
	err := sc.Scan(&im.Name, &im.RootFS, &im.Kernel, &im.Initrd, &im.Managed, &im.SizeBytes, &created)
	im.CreatedAt, _ = time.Parse(time.RFC3339Nano, created)
	return im, err
}

// InsertImage adds an image; a duplicate name is an error.
func (s *Store) InsertImage(ctx context.Context, im Image) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO images(`+imageCols+`) VALUES (?,?,?,?,?,?,?)`,
		im.Name, im.RootFS, im.Kernel, im.Initrd, im.Managed, im.SizeBytes, im.CreatedAt.UTC().Format(time.RFC3339Nano))
	return err
}

// GetImage returns the named image or ErrNotFound.
func (s *Store) GetImage(ctx context.Context, name string) (Image, error) {
	im, err := scanImage(s.db.QueryRowContext(ctx, `SELECT `+imageCols+` FROM images WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return im, fmt.Errorf("image %q: %w", name, ErrNotFound)
	}
	return im, err
}

// ListImages returns all images by name.
func (s *Store) ListImages(ctx context.Context) ([]Image, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+imageCols+` FROM images ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Image
	for rows.Next() {
		im, err := scanImage(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, im)
	}
	return out, rows.Err()
}

// DeleteImage removes an image row.
func (s *Store) DeleteImage(ctx context.Context, name string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM images WHERE name = ?`, name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("image %q: %w", name, ErrNotFound)
	}
	return nil
}
