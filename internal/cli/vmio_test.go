package cli

import (
	"reflect"
	"testing"

	"banger/internal/api"
)

func TestSSHArgs(t *testing.T) {
	got := sshArgs(api.SSHInfo{
		User: "root", Host: "10.213.0.5", KeyFile: "/s/ssh/id_ed25519",
		KnownHosts: "/s/ssh/known_hosts", HostKeyAlias: "banger-dev",
	})
	want := []string{
		"-i", "/s/ssh/id_ed25519",
		"-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=/s/ssh/known_hosts",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "HostKeyAlias=banger-dev",
		"-o", "LogLevel=ERROR",
		"-o", "ConnectTimeout=10",
		"root@10.213.0.5",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("sshArgs =\n%q\nwant\n%q", got, want)
	}
}
