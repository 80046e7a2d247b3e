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
	// Source is how the image came to be: SourceRegistered, SourceOCI,
	// SourceCatalog or SourcePromoted.
	Source string
	// Ref and Digest identify what was pulled (registry reference and
	// manifest digest, or catalog name and bundle sha256).
	Ref    string
	Digest string
	// Dir is the image's directory in banger's store ("" when unmanaged).
	Dir string
	// ContentBytes is the size of the file content in the root filesystem.
	ContentBytes int64
	// WorkSeed is a tar applied to each new work disk ("" for none).
	WorkSeed string
}

// Image sources.
const (
	SourceRegistered = "registered"
	SourceOCI        = "oci"
	SourceCatalog    = "catalog"
	SourcePromoted   = "promoted"
	SourceRecipe     = "recipe" // built from a recipe of Debian packages
)

const imageCols = `name, rootfs, kernel, initrd, managed, size_bytes, created_at, source, ref, digest, dir, content_bytes, work_seed`

func scanImage(sc interface{ Scan(...any) error }) (Image, error) {
	var im Image
	var created string
	err := sc.Scan(&im.Name, &im.RootFS, &im.Kernel, &im.Initrd, &im.Managed, &im.SizeBytes, &created,
		&im.Source, &im.Ref, &im.Digest, &im.Dir, &im.ContentBytes, &im.WorkSeed)
	im.CreatedAt, _ = time.Parse(time.RFC3339Nano, created)
	return im, err
}

// InsertImage adds an image; a duplicate name is an error.
func (s *Store) InsertImage(ctx context.Context, im Image) error {
	if im.Source == "" {
		im.Source = SourceRegistered
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO images(`+imageCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		im.Name, im.RootFS, im.Kernel, im.Initrd, im.Managed, im.SizeBytes, im.CreatedAt.UTC().Format(time.RFC3339Nano),
		im.Source, im.Ref, im.Digest, im.Dir, im.ContentBytes, im.WorkSeed)
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

// UpdateImage rewrites an existing image row (matched by name).
func (s *Store) UpdateImage(ctx context.Context, im Image) error {
	res, err := s.db.ExecContext(ctx, `UPDATE images SET rootfs=?, kernel=?, initrd=?, managed=?, size_bytes=?,
		source=?, ref=?, digest=?, dir=?, content_bytes=?, work_seed=? WHERE name = ?`,
		im.RootFS, im.Kernel, im.Initrd, im.Managed, im.SizeBytes, im.Source, im.Ref, im.Digest, im.Dir,
		im.ContentBytes, im.WorkSeed, im.Name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("image %q: %w", im.Name, ErrNotFound)
	}
	return nil
}
