package cli

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"

	"banger/internal/api"
)

// progress draws stage events: on a TTY the running stage is redrawn in
// place with its elapsed time; otherwise each transition is one plain line.
type progress struct {
	w    io.Writer
	tty  bool
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex // guards current, since, bytes and writes to w (the ticker draws too)
	current string
	since   time.Time
	bytes   string // byte progress of the running stage, e.g. " 12.0 MiB / 40.0 MiB layer 1/3 ..."
	printed string // non-TTY: the running stage last printed (repeats carry only progress)
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
		p.stop, p.done = make(chan struct{}), make(chan struct{})
		go p.tick()
	}
	return p
}

// tick refreshes the running stage's elapsed time on a TTY.
func (p *progress) tick() {
	defer close(p.done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.mu.Lock()
			if p.current != "" {
				fmt.Fprintf(p.w, "\r\033[K  … %s (%.1fs)%s", p.current, time.Since(p.since).Seconds(), p.bytes)
			}
			p.mu.Unlock()
		}
	}
}

func (p *progress) stage(st api.Stage) {
	if !p.tty {
		switch st.State {
		case "running":
			if p.printed == st.Name {
				return // progress of a stage already shown: one line per stage
			}
			p.printed = st.Name
			fmt.Fprintf(p.w, "%s ...\n", st.Name)
		case "skipped":
			fmt.Fprintf(p.w, "%s skipped (%s)\n", st.Name, st.Detail)
		default:
			fmt.Fprintf(p.w, "%s %s (%s)%s\n", st.Name, st.State, fmtMS(st.DurationMS), detailSuffix(st))
		}
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch st.State {
	case "running":
		if p.current != st.Name {
			p.since = time.Now()
		}
		p.current, p.bytes = st.Name, bytesSuffix(st)
		fmt.Fprintf(p.w, "\r\033[K  … %s%s", st.Name, p.bytes)
	case "skipped":
		p.current = ""
		fmt.Fprintf(p.w, "\r\033[K  - %s (skipped: %s)\n", st.Name, st.Detail)
	case "failed":
		p.current = ""
		fmt.Fprintf(p.w, "\r\033[K  ✗ %s (%s)\n", st.Name, fmtMS(st.DurationMS))
	default:
		p.current = ""
		fmt.Fprintf(p.w, "\r\033[K  ✓ %s (%s)%s\n", st.Name, fmtMS(st.DurationMS), detailSuffix(st))
	}
}

func (p *progress) close() {
	if p.tty {
		close(p.stop)
		<-p.done
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.current != "" {
			fmt.Fprint(p.w, "\r\033[K")
		}
	}
}

// bytesSuffix shows a running stage's byte progress.
func bytesSuffix(st api.Stage) string {
	if st.Total <= 0 && st.Bytes <= 0 {
		return ""
	}
	s := " " + humanBytes(st.Bytes)
	if st.Total > 0 {
		s += " / " + humanBytes(st.Total)
	}
	if st.Detail != "" {
		s += " " + st.Detail
	}
	return s
}

// detailSuffix shows what a finished stage has to say (e.g. warnings).
func detailSuffix(st api.Stage) string {
	if st.Detail == "" || st.State != "done" {
		return ""
	}
	return ": " + st.Detail
}

func fmtMS(ms float64) string {
	if ms < 999.5 { // what rounds to 1000ms prints as 1.0s
		return fmt.Sprintf("%.0fms", ms)
	}
	return fmt.Sprintf("%.1fs", ms/1000)
}

// byteProgress draws byte counts of a long copy: redrawn in place on a TTY,
// one line per phase otherwise.
type byteProgress struct {
	w     io.Writer
	tty   bool
	phase string
	drawn bool
}

func newByteProgress(w io.Writer) *byteProgress {
	f, ok := w.(*os.File)
	return &byteProgress{w: w, tty: ok && term.IsTerminal(int(f.Fd()))}
}

func (p *byteProgress) update(pr api.Progress) {
	total := ""
	if pr.Total > 0 {
		total = " / " + humanBytes(pr.Total)
	}
	switch {
	case p.tty:
		fmt.Fprintf(p.w, "\r\033[K  … sending %s: %s%s", pr.Phase, humanBytes(pr.Bytes), total)
		p.drawn = true
	case pr.Phase != p.phase:
		fmt.Fprintf(p.w, "sending %s%s\n", pr.Phase, total)
	}
	p.phase = pr.Phase
}

func (p *byteProgress) close() {
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
