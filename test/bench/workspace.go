package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"banger/internal/api"
)

// The generated repository: ~60 MB in 3000 tracked files, mostly small
// text files plus a few large incompressible ones, in one commit.
const (
	repoTextFiles    = 2992
	repoTextMinBytes = 512
	repoTextMaxBytes = 13000 // uniform sizes: ~6.7 KB on average, ~20 MB in all
	repoBinFiles     = 8
	repoBinBytes     = 5_000_000 // random: git cannot compress them, ssh neither
)

// benchRepo is the repository generated for the copy-in rows.
type benchRepo struct {
	dir                 string
	textFiles, binFiles int
	textBytes, binBytes int64
	files               int   // tracked files
	bytes               int64 // their content
	objectBytes         int64 // git's loose (compressed) objects
}

// gitEnv makes git ignore the host's configuration (no global or system
// file) and commit with a fixed identity and date.
func gitEnv() []string {
	return append(os.Environ(),
		"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=banger bench", "GIT_AUTHOR_EMAIL=bench@banger.invalid",
		"GIT_COMMITTER_NAME=banger bench", "GIT_COMMITTER_EMAIL=bench@banger.invalid",
		"GIT_AUTHOR_DATE=2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE=2026-01-01T00:00:00Z",
	)
}

// git runs git with gitEnv in dir.
func git(ctx context.Context, dir string, args ...string) (string, error) {
	c := command(ctx, append([]string{"git", "-C", dir}, args...)...)
	c.Env = gitEnv()
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Run(); err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// makeRepo writes the repository under the run's directory and commits it.
func (b *bench) makeRepo(ctx context.Context) error {
	t0 := time.Now()
	r := &benchRepo{dir: filepath.Join(b.dir, "repo")}
	var seed [32]byte // the same content on every run
	copy(seed[:], "banger bench repository")
	rng := rand.New(rand.NewChaCha8(seed))
	exts := []string{".go", ".md", ".txt", ".c", ".py"}
	for i := range repoTextFiles {
		name := filepath.Join(r.dir, "src", fmt.Sprintf("d%02d", i%32), fmt.Sprintf("f%04d%s", i, exts[i%len(exts)]))
		data := textFile(rng, repoTextMinBytes+rng.IntN(repoTextMaxBytes-repoTextMinBytes+1))
		if err := writeFile(name, data); err != nil {
			return err
		}
		r.textFiles++
		r.textBytes += int64(len(data))
	}
	buf := make([]byte, repoBinBytes)
	for i := range repoBinFiles {
		seed[31] = byte(i + 1) // a distinct stream per file, not the text one
		_, _ = rand.NewChaCha8(seed).Read(buf)
		if err := writeFile(filepath.Join(r.dir, "assets", fmt.Sprintf("blob%02d.bin", i)), buf); err != nil {
			return err
		}
		r.binFiles++
		r.binBytes += int64(len(buf))
	}
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"add", "-A"}, {"commit", "-q", "-m", "bench repository"}} {
		if _, err := git(ctx, r.dir, args...); err != nil {
			return err
		}
	}
	// What git tracks, as the copy-in rows count it.
	out, err := git(ctx, r.dir, "ls-tree", "-r", "-l", "-z", "HEAD")
	if err != nil {
		return err
	}
	for _, e := range strings.Split(strings.TrimSuffix(out, "\x00"), "\x00") {
		f := strings.Fields(e) // mode type object size\tpath
		if len(f) < 4 {
			return fmt.Errorf("git ls-tree: unexpected line %q", e)
		}
		n, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			return fmt.Errorf("git ls-tree: %q: %w", e, err)
		}
		r.files++
		r.bytes += n
	}
	if r.files != r.textFiles+r.binFiles || r.bytes != r.textBytes+r.binBytes {
		return fmt.Errorf("repository: git tracks %d files, %d bytes; wrote %d, %d", r.files, r.bytes, r.textFiles+r.binFiles, r.textBytes+r.binBytes)
	}
	if out, err = git(ctx, r.dir, "count-objects", "-v"); err != nil {
		return err
	}
	for _, line := range strings.Split(out, "\n") {
		if kib, ok := strings.CutPrefix(line, "size: "); ok {
			n, _ := strconv.ParseInt(kib, 10, 64)
			r.objectBytes = n << 10
		}
	}
	b.repo = r
	logf("generated %s: %d tracked files, %.1f MB (git objects %.1f MB), committed in %.1f s",
		r.dir, r.files, float64(r.bytes)/1e6, float64(r.objectBytes)/1e6, time.Since(t0).Seconds())
	return nil
}

func writeFile(name string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return err
	}
	return os.WriteFile(name, data, 0o644)
}

// words make text that compresses about like source code.
var words = strings.Fields(`func return if else for range var const type struct interface map chan go defer
	err nil ctx context string int int64 byte bool true false len append make new copy
	config server client request response handler buffer reader writer stream socket
	path file dir name value key index count size offset limit timeout retry close open
	// TODO: FIXME the a of to in is that for it with as on this be are by from at or
	= := == != { } ( ) [ ] , ; . + - * / < > && || ! 0 1 2 16 64 256 1024`)

// textFile returns size bytes of indented lines of words.
func textFile(rng *rand.Rand, size int) []byte {
	var b bytes.Buffer
	b.Grow(size + 100)
	for b.Len() < size {
		b.WriteString(strings.Repeat("\t", rng.IntN(4)))
		for n := 2 + rng.IntN(10); n > 0; n-- {
			b.WriteString(words[rng.IntN(len(words))])
			b.WriteByte(' ')
		}
		if rng.IntN(5) == 0 {
			b.WriteString(strconv.Itoa(rng.IntN(1 << 20)))
		}
		b.WriteByte('\n')
	}
	return b.Bytes()[:size]
}

// guestSSH is what the system ssh needs to reach a banger VM the way
// `banger vm ssh` does: banger's key, its known_hosts with the VM's key
// pinned as NAME.vm, and the VM's address.
type guestSSH struct {
	ns                   *netns
	name, ip, key, known string
}

// argv is ssh running remote (a shell command line) in the guest, from
// inside the namespace; no user or system ssh configuration is read.
func (g guestSSH) argv(remote string) []string {
	return g.ns.exec("ssh", "-F", "/dev/null", "-T", "-i", g.key,
		"-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
		"-o", "UserKnownHostsFile="+g.known, "-o", "StrictHostKeyChecking=yes",
		"-o", "HostKeyAlias="+g.name+".vm", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
		"root@"+g.ip, "--", remote)
}

// run runs remote in the guest and returns its stdout.
func (g guestSSH) run(ctx context.Context, remote string) (string, error) {
	return runCmd(ctx, g.argv(remote)...)
}

// workspaceRuns copies the repository into one running VM n times each
// way, alternating, and records seconds and MB/s: `banger vm workspace
// prepare` (tracked files plus a shallow history pack, over the daemon's
// SSH connection) and `git archive HEAD | ssh ... tar -x` (tracked files
// only, the system ssh with banger's options). Between copies, untimed, the
// copy's file count is checked and it is removed, and the guest syncs.
func (b *bench) workspaceRuns(ctx context.Context, rep *report) error {
	bg, r := b.bg, b.repo
	name := "benchws"
	logf("workspace: creating %s (untimed)", name)
	if _, err := bg.run(ctx, "vm", "create", "--name", name); err != nil {
		return err
	}
	// The daemon waits for sshd and pins the guest's host key here, so
	// neither way's first copy includes that.
	if _, err := bg.run(ctx, "vm", "ssh", name, "--", "true"); err != nil {
		return err
	}
	v, err := bg.show(ctx, name)
	if err != nil {
		return err
	}
	st := bg.status
	if st.SSHKey == "" || st.KnownHosts == "" || v.IP == "" {
		return fmt.Errorf("daemon status (ssh_key %q, known_hosts %q) or vm show (ip %q) lacks what ssh needs", st.SSHKey, st.KnownHosts, v.IP)
	}
	g := guestSSH{ns: b.ns, name: name, ip: v.IP, key: st.SSHKey, known: st.KnownHosts}
	if _, err := g.run(ctx, "true"); err != nil {
		return fmt.Errorf("ssh with banger's options: %w", err)
	}
	rep.Workspace = &workspaceInfo{VM: name, Files: r.files, Bytes: r.bytes,
		TextFiles: r.textFiles, TextBytes: r.textBytes, BinaryFiles: r.binFiles, BinaryBytes: r.binBytes, ObjectBytes: r.objectBytes,
		Method: fmt.Sprintf("one running VM (%s), copies each way: %d, alternating (the order flips each run); "+
			"prepare sends the tracked files + a shallow history pack over the daemon's SSH, archive only the tracked files over the system ssh; "+
			"between copies (untimed) the copy's files are counted, it is removed, the guest syncs; MB/s = tracked bytes / 10^6 / s", name, b.o.n)}

	type way struct {
		row, dest string // dest: the guest directory's name before -N
		copy      func(dest string) (time.Duration, error)
	}
	var warned string
	ws := way{measureWorkspace, "ws", func(dest string) (time.Duration, error) {
		t := time.Now()
		out, err := bg.run(ctx, "vm", "workspace", "prepare", "--json", name, r.dir, "--dest", dest)
		d := time.Since(t)
		if err != nil {
			return d, err
		}
		var res api.WorkspacePrepareResult
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			return d, err
		}
		if res.Workspace.Files != r.files {
			return d, fmt.Errorf("workspace prepare reports %d files, the repository tracks %d", res.Workspace.Files, r.files)
		}
		if w := strings.Join(res.Warnings, "; "); w != "" && w != warned {
			logf("workspace prepare warnings: %s", w)
			warned = w
		}
		return d, nil
	}}
	arch := way{measureArchive, "arch", func(dest string) (time.Duration, error) {
		return b.archiveCopy(ctx, g, dest)
	}}
	for i := 1; i <= b.o.n; i++ {
		order := []way{ws, arch}
		if i%2 == 0 {
			order = []way{arch, ws}
		}
		got := map[string]time.Duration{}
		for _, w := range order {
			dest := fmt.Sprintf("/root/%s-%d", w.dest, i)
			d, err := w.copy(dest)
			if err != nil {
				return fmt.Errorf("%s → %s: %w", w.row, dest, err)
			}
			got[w.row] = d
			// Count the copied files (outside .git), then free the work disk
			// and flush, so the next copy starts from the same state.
			out, err := g.run(ctx, fmt.Sprintf("n=$(find %[1]s -path %[1]s/.git -prune -o -type f -print | wc -l) && rm -rf %[1]s && sync && echo $n", dest))
			if err != nil {
				return fmt.Errorf("check and remove %s: %w", dest, err)
			}
			if n, _ := strconv.Atoi(strings.TrimSpace(out)); n != r.files {
				return fmt.Errorf("%s: %s holds %s files, the repository tracks %d", w.row, dest, strings.TrimSpace(out), r.files)
			}
		}
		rep.addCopy(measureWorkspace, r.bytes, got[measureWorkspace])
		rep.addCopy(measureArchive, r.bytes, got[measureArchive])
		logf("workspace %d/%d: vm workspace prepare %.2f s (%.2f MB/s), git archive | ssh tar %.2f s (%.2f MB/s)", i, b.o.n,
			got[measureWorkspace].Seconds(), float64(r.bytes)/1e6/got[measureWorkspace].Seconds(),
			got[measureArchive].Seconds(), float64(r.bytes)/1e6/got[measureArchive].Seconds())
	}
	_, err = bg.run(ctx, "vm", "delete", "--force", name)
	return err
}

// archiveCopy times `git archive HEAD | ssh ... 'mkdir DEST && tar -x'`:
// from starting both processes to both having exited.
func (b *bench) archiveCopy(ctx context.Context, g guestSSH, dest string) (time.Duration, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	gitc := command(ctx, "git", "-C", b.repo.dir, "archive", "--format=tar", "HEAD")
	gitc.Env = gitEnv()
	var gitErr, sshOut, sshErr bytes.Buffer
	gitc.Stdout, gitc.Stderr = pw, &gitErr
	sshc := command(ctx, g.argv(fmt.Sprintf("mkdir %[1]s && tar -x -f - -C %[1]s", dest))...)
	sshc.Stdin, sshc.Stdout, sshc.Stderr = pr, &sshOut, &sshErr
	t := time.Now()
	err = gitc.Start()
	if err == nil {
		if err = sshc.Start(); err != nil {
			_ = gitc.Process.Kill()
			_ = gitc.Wait()
		}
	}
	pw.Close() // the children hold their own ends now
	pr.Close()
	if err != nil {
		return 0, err
	}
	gerr := gitc.Wait()
	serr := sshc.Wait()
	d := time.Since(t)
	switch {
	case ctx.Err() != nil:
		return d, ctx.Err()
	case serr != nil:
		return d, fmt.Errorf("ssh tar: %w: %s", serr, strings.TrimSpace(sshErr.String()+sshOut.String()))
	case gerr != nil:
		return d, fmt.Errorf("git archive: %w: %s", gerr, strings.TrimSpace(gitErr.String()))
	}
	return d, nil
}
