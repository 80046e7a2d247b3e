package oci

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// benchTars builds about 50 MB of layers: many small text files, some
// larger half-compressible files, and incompressible binaries.
func benchTars(b *testing.B) [][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	words := []string{"alpha ", "beta ", "gamma ", "delta ", "lorem ", "ipsum ", "func ", "return ", "\n"}
	text := func(n int) string {
		buf := make([]byte, 0, n)
		for len(buf) < n {
			buf = append(buf, words[rng.IntN(len(words))]...)
		}
		return string(buf[:n])
	}
	random := func(n int) string {
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		return string(buf)
	}
	var small, mixed, bins []ent
	for i := range 2000 { // 8 MB in 2000 files
		if i%100 == 0 {
			small = append(small, dir(fmt.Sprintf("usr/share/doc/p%d/", i/100), 0o755))
		}
		small = append(small, file(fmt.Sprintf("usr/share/doc/p%d/f%d.txt", i/100, i), 0o644, text(4096)))
	}
	for i := range 10 { // 30 MB
		mixed = append(mixed, file(fmt.Sprintf("usr/lib/lib%d.so", i), 0o755, text(1500<<10)+random(1500<<10)))
	}
	for i := range 3 { // 12 MB
		bins = append(bins, file(fmt.Sprintf("usr/bin/tool%d", i), 0o755, random(4<<20)))
	}
	return [][]byte{tarBytes(b, small...), tarBytes(b, mixed...), tarBytes(b, bins...)}
}

// BenchmarkPipeline50MB measures pull (cold cache), flatten and ext4 build
// of a ~50 MB, 3-layer image from a registry on 127.0.0.1.
//
//	go test -run '^$' -bench Pipeline50MB -benchtime 3x ./internal/oci
func BenchmarkPipeline50MB(b *testing.B) {
	needE2fsprogs(b)
	reg := startRegistry(b)
	ref := pushLayers(b, reg, "bench/50mb:v1", benchTars(b)...)
	ctx := context.Background()
	var pull, flat, build time.Duration
	var compressed int64
	n := 0
	for b.Loop() {
		dir, err := os.MkdirTemp("", "banger-oci-bench-*")
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		img, err := Pull(ctx, ref, PullOptions{CacheDir: filepath.Join(dir, "cache")})
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		staging := filepath.Join(dir, "staging")
		m, err := Flatten(ctx, img, staging)
		if err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if err := BuildExt4(ctx, staging, m, filepath.Join(dir, "rootfs.ext4"), 0); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		pull, flat, build = pull+t1.Sub(t0), flat+t2.Sub(t1), build+t3.Sub(t2)
		compressed = img.Size()
		n++
		os.RemoveAll(dir)
	}
	b.ReportMetric(pull.Seconds()/float64(n), "pull-s")
	b.ReportMetric(flat.Seconds()/float64(n), "flatten-s")
	b.ReportMetric(build.Seconds()/float64(n), "ext4-s")
	b.ReportMetric(float64(compressed)/1e6, "compressed-MB")
}
