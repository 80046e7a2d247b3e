package image

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"

	"banger/internal/oci"
)

// Stage names of an image pull from a registry, in order.
const (
	StagePull    = "pull layers"
	StageFlatten = "flatten layers"
	StageInject  = "inject guest files"
	StageExt4    = "build ext4"
)

// StageRunner runs fn as the named stage (timing and reporting it).
type StageRunner func(name string, fn func() error) error

// ByteProgress reports bytes of the running stage; detail says which part.
type ByteProgress func(done, total int64, detail string)

// OCIRequest is a validated registry pull.
type OCIRequest struct {
	Ref string
	// Size of the ext4 image in bytes; 0 sizes it from the content.
	Size int64
	// CacheDir holds the blob cache shared by all pulls.
	CacheDir string
	// Insecure allows plain HTTP to a non-local registry.
	Insecure bool
	// Hold, when set, is held (read-locked) while cached blobs are in use,
	// so a cache prune (write lock) never removes them under a pull.
	Hold *sync.RWMutex
}

// OCIResult describes a built image.
type OCIResult struct {
	Name         string // fully qualified reference
	Digest       string // manifest digest of the platform image
	Downloaded   int64  // blob bytes fetched (0 when all were cached)
	ContentBytes int64  // file content in the root filesystem
	SizeBytes    int64  // size of rootfs.ext4
	// WorkSeed says the image's /root was kept as staging/work-seed.
	WorkSeed bool
	Notes    []string
}

// Meta is what image.json in a managed image directory records.
type Meta struct {
	Source string     `json:"source"`
	Ref    string     `json:"ref"`
	Name   string     `json:"name,omitempty"`
	Digest string     `json:"digest"`
	Notes  []string   `json:"notes,omitempty"`
	Image  *oci.Image `json:"oci,omitempty"`
}

// BuildFromOCI pulls req.Ref and builds staging/rootfs.ext4 from it, with
// banger's guest files injected, and staging/image.json. The flattened tree
// (staging/tree) is removed before it returns. On error the caller removes
// staging.
func BuildFromOCI(ctx context.Context, req OCIRequest, staging string, run StageRunner, progress ByteProgress) (OCIResult, error) {
	var res OCIResult
	var img *oci.Image
	var m *oci.Manifest
	tree := filepath.Join(staging, "tree")
	defer os.RemoveAll(tree)
	if req.Hold != nil {
		req.Hold.RLock()
	}
	held := req.Hold != nil
	release := func() {
		if held {
			req.Hold.RUnlock()
			held = false
		}
	}
	defer release()
	if err := run(StagePull, func() error {
		agg := newLayerProgress(progress)
		var err error
		img, err = oci.Pull(ctx, req.Ref, oci.PullOptions{CacheDir: req.CacheDir, Insecure: req.Insecure, Progress: agg.update})
		if err != nil {
			return err
		}
		res.Name, res.Digest, res.Downloaded = img.Name, img.Digest, img.Downloaded
		return nil
	}); err != nil {
		return res, err
	}
	if err := run(StageFlatten, func() error {
		var err error
		m, err = oci.Flatten(ctx, img, tree)
		if err != nil {
			return err
		}
		for _, n := range m.Notes {
			res.Notes = append(res.Notes, n.String())
		}
		return nil
	}); err != nil {
		return res, err
	}
	release() // the blobs are no longer read
	if err := run(StageInject, func() error {
		files, err := GuestFiles()
		if err != nil {
			return err
		}
		if err := Inject(tree, m, files); err != nil {
			return err
		}
		seeded, why, err := SeedFromTree(tree, m, filepath.Join(staging, SeedDir))
		if err != nil {
			return fmt.Errorf("work seed from /root: %w", err)
		}
		if why != "" {
			res.Notes = append(res.Notes, why)
		}
		res.WorkSeed = seeded
		res.ContentBytes, err = oci.ContentBytes(tree)
		return err
	}); err != nil {
		return res, err
	}
	out := filepath.Join(staging, RootFSFile)
	if err := run(StageExt4, func() error {
		if err := oci.BuildExt4(ctx, tree, m, out, req.Size); err != nil {
			return err
		}
		fi, err := os.Stat(out)
		if err != nil {
			return err
		}
		res.SizeBytes = fi.Size()
		return nil
	}); err != nil {
		return res, err
	}
	return res, WriteMeta(staging, Meta{Source: "oci", Ref: req.Ref, Name: res.Name, Digest: res.Digest, Notes: res.Notes, Image: img})
}

// WriteMeta writes image.json into an image directory.
func WriteMeta(dir string, m Meta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, MetaFile), append(b, '\n'), 0o600)
}

// layerProgress sums per-layer download reports into one byte count.
type layerProgress struct {
	report ByteProgress
	done   map[int]int64
	total  map[int]int64
}

func newLayerProgress(report ByteProgress) *layerProgress {
	return &layerProgress{report: report, done: map[int]int64{}, total: map[int]int64{}}
}

func (l *layerProgress) update(p oci.Progress) {
	if l.report == nil {
		return
	}
	l.done[p.Index], l.total[p.Index] = p.Done, p.Total
	var done, total int64
	for i, t := range l.total {
		done, total = done+l.done[i], total+t
	}
	state := ""
	if p.Cached {
		state = " (cached)"
	}
	short := p.Digest
	if len(short) > 19 {
		short = short[:19]
	}
	l.report(done, total, fmt.Sprintf("layer %d/%d %s%s", p.Index+1, p.Layers, short, state))
}

// CheckRef validates a registry reference without contacting anything.
func CheckRef(ref string) error {
	if _, err := name.ParseReference(ref); err != nil {
		return fmt.Errorf("image reference %q: %w (want e.g. docker.io/library/debian:bookworm or 127.0.0.1:5000/img:tag)", ref, err)
	}
	return nil
}
