package cli

import (
	"bytes"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"banger/internal/api"
)

func TestFmtMS(t *testing.T) {
	for _, tc := range []struct {
		ms   float64
		want string
	}{
		{0, "0ms"},
		{0.4, "0ms"},
		{12.6, "13ms"},
		{999, "999ms"},
		{999.6, "1.0s"},
		{1000, "1.0s"},
		{1549, "1.5s"},
		{61234, "61.2s"},
	} {
		if got := fmtMS(tc.ms); got != tc.want {
			t.Errorf("fmtMS(%v) = %q, want %q", tc.ms, got, tc.want)
		}
	}
}

// stages is one run through every state a stage can report.
var stages = []api.Stage{
	{Name: "image", State: "running"},
	{Name: "image", State: "done", DurationMS: 12},
	{Name: "network", State: "skipped", Detail: "already set up"},
	{Name: "boot", State: "running"},
	{Name: "boot", State: "failed", DurationMS: 2500},
}

// Not a terminal: one plain line per transition and no escape sequences.
func TestProgressPlain(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf)
	if p.tty {
		t.Fatal("a bytes.Buffer was taken for a terminal")
	}
	for _, st := range stages {
		p.stage(st)
	}
	p.close()
	want := "" +
		"image ...\n" +
		"image done (12ms)\n" +
		"network skipped (already set up)\n" +
		"boot ...\n" +
		"boot failed (2.5s)\n"
	if got := buf.String(); got != want {
		t.Errorf("plain progress:\n%q\nwant\n%q", got, want)
	}
}

// A regular file is not a terminal either.
func TestProgressPlainFile(t *testing.T) {
	f, err := os.Create(t.TempDir() + "/progress.log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := newProgress(f)
	if p.tty {
		t.Fatal("a regular file was taken for a terminal")
	}
	p.stage(api.Stage{Name: "boot", State: "done", DurationMS: 1500})
	p.close()
	b, _ := os.ReadFile(f.Name())
	if got, want := string(b), "boot done (1.5s)\n"; got != want {
		t.Errorf("progress in file = %q, want %q", got, want)
	}
}

// openPTY opens a pseudo-terminal pair in raw mode (no \n -> \r\n
// translation) and closes both ends at cleanup.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open slave: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := term.MakeRaw(int(s.Fd())); err != nil {
		t.Fatalf("raw mode: %v", err)
	}
	return m, s
}

// ptyReader collects everything written to the terminal.
type ptyReader struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *ptyReader) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.String()
}

func readPTY(master *os.File) *ptyReader {
	r := &ptyReader{}
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := master.Read(b)
			r.mu.Lock()
			r.buf.Write(b[:n])
			r.mu.Unlock()
			if err != nil && err != io.EOF || n == 0 {
				return
			}
		}
	}()
	return r
}

// waitFor polls until cond holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// redraw matches one timed redraw of the running stage.
var redraw = regexp.MustCompile(`\r\x1b\[K  … [a-z]+ \([0-9]+\.[0-9]s\)`)

// On a terminal the running stage is redrawn in place with its elapsed time,
// and each finished stage gets its own line with a mark.
func TestProgressTTY(t *testing.T) {
	master, slave := openPTY(t)
	out := readPTY(master)

	p := newProgress(slave)
	if !p.tty {
		t.Fatal("a pseudo-terminal was not detected as a terminal")
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			p.close()
		}
	})

	const clear = "\r\033[K"
	p.stage(api.Stage{Name: "image", State: "running"})
	// The ticker redraws the running stage with its elapsed time.
	waitFor(t, "the elapsed-time redraw", 5*time.Second, func() bool {
		return strings.Contains(out.String(), clear+"  … image (0.")
	})
	p.stage(api.Stage{Name: "image", State: "done", DurationMS: 12})
	p.stage(api.Stage{Name: "network", State: "skipped", Detail: "already set up"})
	p.stage(api.Stage{Name: "boot", State: "running"})
	p.stage(api.Stage{Name: "boot", State: "failed", DurationMS: 2500})
	p.stage(api.Stage{Name: "ssh", State: "running"})
	p.close()
	closed = true

	// The number and place of the timed redraws is not deterministic, so
	// strip them before comparing; everything else is.
	want := "" +
		clear + "  … image" +
		clear + "  ✓ image (12ms)\n" +
		clear + "  - network (skipped: already set up)\n" +
		clear + "  … boot" +
		clear + "  ✗ boot (2.5s)\n" +
		clear + "  … ssh" +
		clear
	// The reader may lag behind the writes: wait for the full text.
	got := ""
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if got = redraw.ReplaceAllString(out.String(), ""); got == want {
			break
		}
	}
	if got != want {
		t.Errorf("tty progress:\n%q\nwant\n%q\n(raw: %q)", got, want, out.String())
	}
}

// close on a terminal with no stage running leaves no stray clear sequence.
func TestProgressTTYCloseIdle(t *testing.T) {
	master, slave := openPTY(t)
	out := readPTY(master)
	p := newProgress(slave)
	p.stage(api.Stage{Name: "boot", State: "done", DurationMS: 3})
	p.close()
	want := "\r\033[K  ✓ boot (3ms)\n"
	waitFor(t, "the done line", 5*time.Second, func() bool { return len(out.String()) >= len(want) })
	if got := out.String(); got != want {
		t.Errorf("tty output %q, want %q", got, want)
	}
	select {
	case <-p.done: // close waited for the ticker goroutine to return
	default:
		t.Error("the ticker goroutine still runs after close")
	}
}

// redrawBytes matches the ticker's redraws of a stage with byte progress.
var redrawBytes = regexp.MustCompile(`\r\x1b\[K  … [a-z ]+ \([0-9]+\.[0-9]s\)[^\r]*`)

// Byte progress of a running stage: on a terminal each report redraws the
// line with the counts; plainly, the stage is printed once.
func TestProgressBytes(t *testing.T) {
	pull := []api.Stage{
		{Name: "pull layers", State: "running"},
		{Name: "pull layers", State: "running", Bytes: 1 << 20, Total: 4 << 20, Detail: "layer 1/2 sha256:abc"},
		{Name: "pull layers", State: "running", Bytes: 4 << 20, Total: 4 << 20, Detail: "layer 2/2 sha256:def"},
		{Name: "pull layers", State: "done", DurationMS: 30},
	}
	var buf bytes.Buffer
	p := newProgress(&buf)
	for _, st := range pull {
		p.stage(st)
	}
	p.close()
	if got, want := buf.String(), "pull layers ...\npull layers done (30ms)\n"; got != want {
		t.Errorf("plain byte progress %q, want %q", got, want)
	}

	master, slave := openPTY(t)
	out := readPTY(master)
	p = newProgress(slave)
	for _, st := range pull {
		p.stage(st)
	}
	p.close()
	const clear = "\r\033[K"
	want := clear + "  … pull layers" +
		clear + "  … pull layers " + humanBytes(1<<20) + " / " + humanBytes(4<<20) + " layer 1/2 sha256:abc" +
		clear + "  … pull layers " + humanBytes(4<<20) + " / " + humanBytes(4<<20) + " layer 2/2 sha256:def" +
		clear + "  ✓ pull layers (30ms)\n"
	got := ""
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if got = redrawBytes.ReplaceAllString(out.String(), ""); got == want {
			break
		}
	}
	if got != want {
		t.Errorf("tty byte progress:\n%q\nwant\n%q", got, want)
	}
}
