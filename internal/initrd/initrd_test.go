package initrd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The appended archive is read back by the real cpio, after the base image.
func TestWithAgentRealCpio(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.img")
	os.WriteFile(base, []byte("not-aligned"), 0o644) // 11 bytes: forces padding
	agent := filepath.Join(dir, "agent")
	payload := []byte("#!/bin/sh\necho agent\n")
	os.WriteFile(agent, payload, 0o755)

	out, err := WithAgent(filepath.Join(dir, "cache"), base, agent)
	if err != nil {
		t.Fatal(err)
	}
	again, err := WithAgent(filepath.Join(dir, "cache"), base, agent)
	if err != nil || again != out {
		t.Fatalf("second call: %s %v, want the cached %s", again, err, out)
	}
	img, _ := os.ReadFile(out)
	if !bytes.HasPrefix(img, []byte("not-aligned\x00")) {
		t.Fatal("base image not kept at the start")
	}
	x := filepath.Join(dir, "x")
	os.Mkdir(x, 0o755)
	cmd := exec.Command("cpio", "-id", "--quiet")
	cmd.Dir = x
	cmd.Stdin = bytes.NewReader(img[12:])
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v %s", err, b)
	}
	got, err := os.ReadFile(filepath.Join(x, AgentPath))
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("extracted agent %q %v", got, err)
	}
	if st, _ := os.Stat(filepath.Join(x, AgentPath)); st.Mode().Perm() != 0o755 {
		t.Fatalf("agent mode %v", st.Mode())
	}

	os.WriteFile(agent, []byte("a new agent"), 0o755)
	if next, _ := WithAgent(filepath.Join(dir, "cache"), base, agent); next == out {
		t.Fatal("a new agent reused the old cached image")
	}
}
