package guest

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestShellJoin(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"nothing", nil, ""},
		{"one plain word", []string{"uname"}, "'uname'"},
		{"plain words", []string{"ls", "-la", "/var/log"}, "'ls' -la /var/log"},
		{"safe punctuation", []string{"echo", "a-b_c.d/e=f:g,h+i@j%k"}, "'echo' a-b_c.d/e=f:g,h+i@j%k"},
		{"empty string", []string{"printf", ""}, "'printf' ''"},
		{"spaces", []string{"echo", "hello world", "  lead"}, "'echo' 'hello world' '  lead'"},
		{"single quote", []string{"echo", "it's"}, `'echo' 'it'\''s'`},
		{"only quotes", []string{"echo", "''"}, `'echo' ''\'''\'''`},
		{"dollar", []string{"echo", "$HOME", "${PATH}"}, "'echo' '$HOME' '${PATH}'"},
		{"semicolon", []string{"echo", "a;rm -rf /"}, "'echo' 'a;rm -rf /'"},
		{"newline", []string{"echo", "line1\nline2"}, "'echo' 'line1\nline2'"},
		{"glob and tilde", []string{"ls", "*", "~", "a?b"}, "'ls' '*' '~' 'a?b'"},
		{"backquote and subshell", []string{"echo", "`id`", "$(id)"}, "'echo' '`id`' '$(id)'"},
		{"redirects and pipes", []string{"echo", ">x", "<y", "a|b", "a&b"}, "'echo' '>x' '<y' 'a|b' 'a&b'"},
		{"double quote and backslash", []string{"echo", `"`, `\`}, `'echo' '"' '\'`},
		{"comment", []string{"echo", "#not"}, "'echo' '#not'"},
		{"non-ascii", []string{"echo", "héllo"}, "'echo' 'héllo'"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := ShellJoin(tc.args); got != tc.want {
				t.Errorf("ShellJoin(%q) = %q, want %q", tc.args, got, tc.want)
			}
		})
	}
}

// shArgv runs script with /bin/sh -c and returns the NUL-separated fields it
// printed (printf '%s\0' prints each argument followed by NUL, so arguments
// containing newlines survive).
func shArgv(t *testing.T, script string) []string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("sh -c %q: %v\n%s", script, err, stderr.String())
	}
	out := stdout.String()
	if !strings.HasSuffix(out, "\x00") {
		t.Fatalf("sh -c %q printed %q, want NUL-terminated fields", script, out)
	}
	return strings.Split(strings.TrimSuffix(out, "\x00"), "\x00")
}

// tricky are arguments a shell would otherwise split, expand or interpret.
var tricky = []string{
	"", " ", "plain", "two words", "it's", "'", "''", `"`, `\`, `\\n`, "$HOME", "${PATH}", "$(id)", "`id`",
	"a;b", "a && b", "a|b", "a>b", "<", "*", "?", "[a]", "~", "~root", "#", "a#b", "!", "line1\nline2",
	"\n", "\t", "tab\there", "-n", "-e", "--", "%s", "%", "a=b", "{a,b}", "é", "\x01ctl",
}

// The real /bin/sh must see exactly the arguments ShellJoin was given.
func TestShellJoinRoundTripsThroughSh(t *testing.T) {
	check := func(args []string) {
		t.Helper()
		got := shArgv(t, `printf '%s\0' `+ShellJoin(args))
		if !reflect.DeepEqual(got, args) {
			t.Errorf("sh saw %q, want %q (joined: %q)", got, args, ShellJoin(args))
		}
	}
	for _, a := range tricky {
		check([]string{a})
	}
	check(tricky)

	// Random arguments built from tricky runes and fragments; seeded so a
	// failure is reproducible.
	alphabet := []rune("ab Z09-_./=:,+@%'\"\\$`;&|<>*?[]{}~#!()\n\t\r\x7fé漢")
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200; i++ {
		args := make([]string, 1+r.IntN(5))
		for j := range args {
			var b strings.Builder
			for k := r.IntN(12); k > 0; k-- {
				if r.IntN(8) == 0 {
					b.WriteString(tricky[r.IntN(len(tricky))])
				} else {
					b.WriteRune(alphabet[r.IntN(len(alphabet))])
				}
			}
			args[j] = b.String()
		}
		check(args)
	}
}

// The first argument is the command: sh must run it as a command name even
// when it looks like an assignment or a reserved word (the ssh help promises
// that arguments reach the guest exactly as given).
func TestShellJoinCommandWord(t *testing.T) {
	bin := t.TempDir()
	for _, name := range []string{"bangertest_var=1", "if", "while", "!"} {
		script := "#!/bin/sh\nprintf '%s\\0' \"ran $(basename \"$0\")\" \"$@\"\n"
		if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	for _, argv := range [][]string{
		{"bangertest_var=1", "x"},
		{"if", "a b"},
		{"while"},
		{"!", "$x"},
	} {
		got := shArgv(t, ShellJoin(argv))
		want := append([]string{"ran " + argv[0]}, argv[1:]...)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("sh -c %q printed %q, want %q", ShellJoin(argv), got, want)
		}
	}
}
