package doctor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
	"golang.org/x/crypto/ssh"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/recipe"
	"banger/internal/rpc"
)

// checkConfig loads config.toml exactly as the daemon does.
func checkConfig(_ context.Context, env Env) Result {
	path := env.ConfigPath
	cfg, err := env.config()
	if err != nil {
		if keys := unknownKeys(path); len(keys) > 0 {
			k := strings.Join(keys, ", ")
			return fail(fmt.Sprintf("%s: unknown key %s", path, k),
				fmt.Sprintf("remove or rename %s in %s (valid keys: the README's configuration section)", k, path))
		}
		return fail(err.Error(), "edit "+path+": "+strings.TrimPrefix(err.Error(), path+": "))
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return pass(fmt.Sprintf("no %s; the defaults apply (vmm = %q, qemu.accel = %q, disk.backend = %q, network.cidr = %q)",
			path, cfg.VMM, cfg.QEMU.Accel, cfg.Disk.Backend, cfg.Network.CIDR))
	}
	return pass(fmt.Sprintf("%s is valid (vmm = %q, qemu.accel = %q, disk.backend = %q, network.cidr = %q)",
		path, cfg.VMM, cfg.QEMU.Accel, cfg.Disk.Backend, cfg.Network.CIDR))
}

// unknownKeys decodes path like config.Load and returns the keys it does not
// know, sorted.
func unknownKeys(path string) []string {
	c := config.Defaults()
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		return nil
	}
	var keys []string
	for _, k := range md.Undecoded() {
		keys = append(keys, k.String())
	}
	sort.Strings(keys)
	return keys
}

// checkStore opens the database read-only: doctor never creates or migrates it.
func checkStore(_ context.Context, env Env) Result {
	db := env.Layout.Database()
	si := env.stateFacts()
	switch {
	case !si.exists:
		return warn("no state yet ("+db+" does not exist)", "none needed: bangerd creates it on first start (any banger command that needs the daemon starts it)")
	case si.err != nil:
		return fail(si.err.Error(), fmt.Sprintf("check that %s is a banger database readable by this user (move it aside to start over)", db))
	}
	return pass(fmt.Sprintf("%s: schema version %d, %d image(s), %d VM(s)", db, si.schema, len(si.images), si.vms))
}

// checkDefaultImage: `vm create` without --image uses the image "default".
func checkDefaultImage(ctx context.Context, env Env) Result {
	si := env.stateFacts()
	if si.err != nil {
		return warn("cannot read the images: "+si.err.Error(), "fix the store check first")
	}
	var names []string
	for _, im := range si.images {
		if im.Name != "default" {
			names = append(names, im.Name)
			continue
		}
		var missing []string
		for _, f := range []string{im.RootFS, im.Kernel, im.Initrd} {
			if f == "" {
				continue
			}
			if _, err := os.Stat(f); err != nil {
				missing = append(missing, f)
			}
		}
		if len(missing) > 0 {
			return fail("image \"default\" refers to missing files: "+strings.Join(missing, ", "),
				"banger image delete default && "+registerHint)
		}
		ev := fmt.Sprintf("image \"default\": rootfs %s, kernel %s", im.RootFS, im.Kernel)
		if im.Initrd != "" {
			ev += ", initrd " + im.Initrd
		} else {
			ev += ", no initrd (guests boot without the agent)"
		}
		return pass(ev)
	}
	ev := "no default image yet"
	if len(names) > 0 {
		ev += fmt.Sprintf(" (other images: %s)", strings.Join(names, ", "))
	}
	// vm create pulls it on first use: no catalog bundle is published, so
	// it is built from its recipe on this host.
	check := env.RecipeCheck
	if check == nil {
		check = func(ctx context.Context, name string) error { _, err := recipe.Check(ctx, name); return err }
	}
	if err := check(ctx, api.DefaultImageSource); err != nil {
		return warn(ev+"; vm create would build "+api.DefaultImageSource+" from this host's Debian packages, but: "+err.Error(),
			"fix that, or "+registerHint)
	}
	return pass(ev + "; vm create gets it on first use: " + api.DefaultImageSource +
		" built from this host's Debian packages (a few minutes, once) with the debian-cloud kernel through apt")
}

// checkSSHKey: the daemon's key for guests, created on its first start.
func checkSSHKey(_ context.Context, env Env) Result {
	key := env.Layout.SSHKey()
	st, err := os.Stat(key)
	if errors.Is(err, os.ErrNotExist) {
		return warn("no SSH key at "+key+": created on first daemon start", "none needed: bangerd creates it on first start")
	}
	if err != nil {
		return fail(err.Error(), "make "+key+" readable by this user")
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fail(fmt.Sprintf("%s has mode %v: ssh refuses a private key others can read", key, st.Mode().Perm()), "chmod 600 "+key)
	}
	b, err := os.ReadFile(key)
	if err != nil {
		return fail(err.Error(), "make "+key+" readable by this user")
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return fail(fmt.Sprintf("%s is not a usable private key: %v", key, err),
			"rm "+key+" "+env.Layout.KnownHosts()+" and restart the daemon (`banger daemon stop`) to get a new key (running VMs keep the old one)")
	}
	return pass(fmt.Sprintf("%s (%s, %s)", key, signer.PublicKey().Type(), ssh.FingerprintSHA256(signer.PublicKey())))
}

// checkDaemon dials the daemon's socket; it never starts a daemon.
func checkDaemon(ctx context.Context, env Env) Result {
	sock := env.Layout.Socket()
	remedy := "none needed: the first banger command that needs the daemon starts it (e.g. `banger ps`)"
	if env.Layout.System {
		remedy = "systemctl start bangerd"
	}
	c, err := rpc.Dial(ctx, sock)
	if err != nil {
		why := "not running"
		if _, serr := os.Stat(sock); serr == nil {
			why = "not answering (stale socket)"
		}
		return warn(fmt.Sprintf("daemon %s (no answer on %s): starts on first use", why, sock), remedy)
	}
	defer c.Close()
	var st api.DaemonStatus
	if err := c.Call(ctx, api.MethodDaemonStatus, nil, &st); err != nil {
		return fail(fmt.Sprintf("daemon on %s does not answer %s: %v", sock, api.MethodDaemonStatus, err),
			"banger daemon stop (VMs keep running); the next banger command starts a new daemon (see "+env.Layout.DaemonLog()+")")
	}
	ev := fmt.Sprintf("running: pid %d, version %s, vmm %s, accel %s, disk %s, %d/%d VMs running",
		st.PID, st.Version, st.VMM, st.Accel, st.DiskBackend, st.VMsRunning, st.VMsTotal)
	if st.Version != api.Version {
		return warn(ev+fmt.Sprintf(" (this banger is %s)", api.Version),
			"banger daemon stop (VMs keep running); the next banger command starts the daemon of this version")
	}
	return pass(ev)
}

// sshConfigMarker fences banger's Include in ~/.ssh/config (internal/sshconfig).
const sshConfigMarker = "# >>> banger ssh-config >>>"

// checkSSHConfig: `ssh NAME.vm` needs banger's Include in ~/.ssh/config.
func checkSSHConfig(_ context.Context, env Env) Result {
	if env.Home == "" {
		return warn("no home directory: cannot look for ~/.ssh/config", "set HOME, then run banger ssh-config --install")
	}
	userConfig := filepath.Join(env.Home, ".ssh", "config")
	b, err := os.ReadFile(userConfig)
	if errors.Is(err, os.ErrNotExist) {
		return warn("no "+userConfig+": `ssh NAME.vm` is not set up (banger vm ssh NAME works without it)", "banger ssh-config --install")
	}
	if err != nil {
		return warn(err.Error(), "make "+userConfig+" readable, then banger ssh-config --install")
	}
	if !bytes.Contains(b, []byte(sshConfigMarker)) {
		return warn("banger's Include is not in "+userConfig+": `ssh NAME.vm` is not set up (banger vm ssh NAME works without it)", "banger ssh-config --install")
	}
	include := filepath.Join(env.Layout.ConfigDir, "ssh_config")
	if _, err := os.Stat(include); err != nil {
		return warn(userConfig+" includes "+include+", which is missing", "banger ssh-config --install")
	}
	return pass(userConfig + " includes " + include)
}
