package paths

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// userEnv clears every variable Resolve reads and sets HOME to a fresh
// directory, so the host's environment cannot leak into a test.
func userEnv(t *testing.T) (home string) {
	t.Helper()
	home = t.TempDir()
	t.Setenv("HOME", home)
	for _, k := range []string{"BANGER_SYSTEM", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR"} {
		t.Setenv(k, "") // restores the old value after the test
		os.Unsetenv(k)
	}
	return home
}

func resolveUser(t *testing.T) Layout {
	t.Helper()
	l, err := Resolve(false)
	if err != nil {
		t.Fatalf("Resolve(false): %v", err)
	}
	if l.System {
		t.Fatalf("Resolve(false) returned a system layout: %+v", l)
	}
	return l
}

func TestResolveUserFallbacks(t *testing.T) {
	home := userEnv(t)
	l := resolveUser(t)
	want := Layout{
		ConfigDir: filepath.Join(home, ".config", "banger"),
		StateDir:  filepath.Join(home, ".local", "state", "banger"),
		CacheDir:  filepath.Join(home, ".cache", "banger"),
		RunDir:    filepath.Join(home, ".local", "state", "banger", "run"),
	}
	if l != want {
		t.Errorf("Resolve(false) =\n%+v\nwant\n%+v", l, want)
	}
}

func TestResolveUserXDG(t *testing.T) {
	userEnv(t)
	base := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(base, "cfg"))
	t.Setenv("XDG_STATE_HOME", filepath.Join(base, "state"))
	t.Setenv("XDG_CACHE_HOME", filepath.Join(base, "cache"))
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(base, "run", "user", "1000"))
	l := resolveUser(t)
	want := Layout{
		ConfigDir: filepath.Join(base, "cfg", "banger"),
		StateDir:  filepath.Join(base, "state", "banger"),
		CacheDir:  filepath.Join(base, "cache", "banger"),
		RunDir:    filepath.Join(base, "run", "user", "1000", "banger"),
	}
	if l != want {
		t.Errorf("Resolve(false) =\n%+v\nwant\n%+v", l, want)
	}
	if got, want := l.Socket(), filepath.Join(base, "run", "user", "1000", "banger", "bangerd.sock"); got != want {
		t.Errorf("Socket() = %s, want %s", got, want)
	}
}

// The XDG spec says relative paths in these variables are invalid and must
// be ignored; an empty value means unset.
func TestResolveUserIgnoresRelativeAndEmptyXDG(t *testing.T) {
	for _, v := range []string{"relative/dir", "./here", ""} {
		t.Run(v, func(t *testing.T) {
			home := userEnv(t)
			for _, k := range []string{"XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR"} {
				t.Setenv(k, v)
			}
			l := resolveUser(t)
			if want := filepath.Join(home, ".config", "banger"); l.ConfigDir != want {
				t.Errorf("ConfigDir = %s, want %s", l.ConfigDir, want)
			}
			if want := filepath.Join(home, ".local", "state", "banger"); l.StateDir != want {
				t.Errorf("StateDir = %s, want %s", l.StateDir, want)
			}
			if want := filepath.Join(home, ".cache", "banger"); l.CacheDir != want {
				t.Errorf("CacheDir = %s, want %s", l.CacheDir, want)
			}
			if want := filepath.Join(l.StateDir, "run"); l.RunDir != want {
				t.Errorf("RunDir = %s, want %s", l.RunDir, want)
			}
		})
	}
}

// Each XDG variable only moves its own directory.
func TestResolveUserXDGIndependent(t *testing.T) {
	home := userEnv(t)
	state := t.TempDir()
	t.Setenv("XDG_STATE_HOME", state)
	l := resolveUser(t)
	if want := filepath.Join(state, "banger"); l.StateDir != want {
		t.Errorf("StateDir = %s, want %s", l.StateDir, want)
	}
	if want := filepath.Join(home, ".config", "banger"); l.ConfigDir != want {
		t.Errorf("ConfigDir = %s, want %s", l.ConfigDir, want)
	}
	// Without XDG_RUNTIME_DIR the run dir follows the (moved) state dir.
	if want := filepath.Join(state, "banger", "run"); l.RunDir != want {
		t.Errorf("RunDir = %s, want %s", l.RunDir, want)
	}
	if want := filepath.Join(state, "banger", "run", "bangerd.sock"); l.Socket() != want {
		t.Errorf("Socket() = %s, want %s", l.Socket(), want)
	}
}

func TestResolveUserWithoutHome(t *testing.T) {
	userEnv(t)
	os.Unsetenv("HOME") // userEnv's t.Setenv restores it
	_, err := Resolve(false)
	if err == nil {
		t.Fatal("Resolve(false) without HOME succeeded")
	}
	if !strings.Contains(err.Error(), "HOME") {
		t.Errorf("error %q does not tell the user to set HOME", err)
	}
}

func TestResolveSystem(t *testing.T) {
	want := Layout{System: true, ConfigDir: "/etc/banger", StateDir: "/var/lib/banger",
		CacheDir: "/var/cache/banger", RunDir: "/run/banger"}
	t.Run("flag", func(t *testing.T) {
		userEnv(t)
		// XDG variables must not move a system install.
		t.Setenv("XDG_STATE_HOME", t.TempDir())
		t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
		l, err := Resolve(true)
		if err != nil || l != want {
			t.Errorf("Resolve(true) = %+v, %v; want %+v", l, err, want)
		}
	})
	t.Run("BANGER_SYSTEM=1", func(t *testing.T) {
		userEnv(t)
		t.Setenv("BANGER_SYSTEM", "1")
		l, err := Resolve(false)
		if err != nil || l != want {
			t.Errorf("Resolve(false) with BANGER_SYSTEM=1 = %+v, %v; want %+v", l, err, want)
		}
	})
	t.Run("without HOME", func(t *testing.T) {
		userEnv(t)
		os.Unsetenv("HOME")
		if l, err := Resolve(true); err != nil || l != want {
			t.Errorf("Resolve(true) without HOME = %+v, %v; want %+v", l, err, want)
		}
	})
	for _, v := range []string{"0", "true", "yes"} {
		t.Run("BANGER_SYSTEM="+v, func(t *testing.T) {
			userEnv(t)
			t.Setenv("BANGER_SYSTEM", v)
			resolveUser(t) // only "1" selects the system layout
		})
	}
}

func TestLayoutFiles(t *testing.T) {
	l := Layout{ConfigDir: "/c/banger", StateDir: "/s/banger", CacheDir: "/k/banger", RunDir: "/r/banger"}
	for _, tc := range []struct{ name, got, want string }{
		{"ConfigFile", l.ConfigFile(), "/c/banger/config.toml"},
		{"Socket", l.Socket(), "/r/banger/bangerd.sock"},
		{"PIDFile", l.PIDFile(), "/r/banger/bangerd.pid"},
		{"Database", l.Database(), "/s/banger/banger.db"},
		{"DaemonLog", l.DaemonLog(), "/s/banger/bangerd.log"},
		{"VMsDir", l.VMsDir(), "/s/banger/vms"},
		{"VMDir", l.VMDir("0123abcd"), "/s/banger/vms/0123abcd"},
		{"ImagesDir", l.ImagesDir(), "/s/banger/images"},
		{"SSHDir", l.SSHDir(), "/s/banger/ssh"},
		{"SSHKey", l.SSHKey(), "/s/banger/ssh/id_ed25519"},
		{"KnownHosts", l.KnownHosts(), "/s/banger/ssh/known_hosts"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s() = %s, want %s", tc.name, tc.got, tc.want)
		}
	}
}

func TestSystemSocket(t *testing.T) {
	l, err := Resolve(true)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Socket(); got != "/run/banger/bangerd.sock" {
		t.Errorf("system Socket() = %s", got)
	}
	if got := l.ConfigFile(); got != "/etc/banger/config.toml" {
		t.Errorf("system ConfigFile() = %s", got)
	}
	if got := l.Database(); got != "/var/lib/banger/banger.db" {
		t.Errorf("system Database() = %s", got)
	}
}

func TestEnsureCreatesPrivateDirs(t *testing.T) {
	home := userEnv(t)
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(t.TempDir(), "xdg-run"))
	l := resolveUser(t)
	for i := 0; i < 2; i++ { // a second call on existing directories succeeds
		if err := l.Ensure(); err != nil {
			t.Fatalf("Ensure (call %d): %v", i+1, err)
		}
	}
	for _, d := range []string{l.ConfigDir, l.StateDir, l.CacheDir, l.RunDir, l.VMsDir(), l.ImagesDir(), l.SSHDir()} {
		st, err := os.Stat(d)
		if err != nil {
			t.Errorf("Ensure did not create %s: %v", d, err)
			continue
		}
		if !st.IsDir() {
			t.Errorf("%s is not a directory", d)
		}
		if perm := st.Mode().Perm(); perm != 0o700 {
			t.Errorf("%s has mode %o, want 700", d, perm)
		}
	}
	if !strings.HasPrefix(l.StateDir, home) {
		t.Errorf("StateDir %s outside HOME %s", l.StateDir, home)
	}
}

func TestEnsureReportsFailure(t *testing.T) {
	userEnv(t)
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A regular file where the state directory should be.
	t.Setenv("XDG_STATE_HOME", blocker)
	l := resolveUser(t)
	if err := l.Ensure(); err == nil {
		t.Fatalf("Ensure under a regular file %s succeeded", blocker)
	}
}

// TestInstalledOwnerGetsSystemLayout: the owner named in the install
// metadata resolves to the system layout (its CLI reaches the system
// daemon), another user does not, and BANGER_SYSTEM=0 opts out.
func TestInstalledOwnerGetsSystemLayout(t *testing.T) {
	userEnv(t)
	meta := filepath.Join(t.TempDir(), "install.json")
	old := installMetadata
	installMetadata = meta
	t.Cleanup(func() { installMetadata = old })

	if l := resolveUser(t); l.System {
		t.Fatal("no install: system layout")
	}
	write := func(uid int) {
		if err := os.WriteFile(meta, []byte(`{"owner":"x","owner_uid":`+strconv.Itoa(uid)+`}`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(os.Getuid() + 1)
	if l := resolveUser(t); l.System {
		t.Fatal("install for another uid: system layout")
	}
	write(os.Getuid())
	l, err := Resolve(false)
	if err != nil || !l.System || l.Socket() != "/run/banger/bangerd.sock" {
		t.Fatalf("installed owner: %+v %v", l, err)
	}
	t.Setenv("BANGER_SYSTEM", "0")
	if l := resolveUser(t); l.System {
		t.Fatal("BANGER_SYSTEM=0: system layout")
	}
}
