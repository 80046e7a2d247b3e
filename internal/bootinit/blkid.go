package bootinit

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ext2/3/4 superblock: 1024 bytes into the device.
const (
	sbOffset     = 1024
	sbMagicOff   = 0x38 // little-endian 0xEF53
	sbUUIDOff    = 0x68 // 16 bytes
	sbLabelOff   = 0x78 // 16 bytes, NUL padded
	sbReadLength = 0x88
)

// ext4Identity reads the UUID (canonical form) and label of an ext2/3/4
// filesystem on dev.
func ext4Identity(dev string) (uuid, label string, err error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	sb := make([]byte, sbReadLength)
	if _, err := f.ReadAt(sb, sbOffset); err != nil {
		return "", "", err
	}
	if sb[sbMagicOff] != 0x53 || sb[sbMagicOff+1] != 0xEF {
		return "", "", fmt.Errorf("%s: not ext2/3/4", dev)
	}
	u := hex.EncodeToString(sb[sbUUIDOff : sbUUIDOff+16])
	uuid = u[0:8] + "-" + u[8:12] + "-" + u[12:16] + "-" + u[16:20] + "-" + u[20:32]
	label = strings.TrimRight(string(sb[sbLabelOff:sbLabelOff+16]), "\x00")
	return uuid, label, nil
}

// findFS finds the block device holding the ext2/3/4 filesystem named by
// "UUID=..." or "LABEL=..." among /sys/class/block (nodes in /dev).
func findFS(spec string) (string, error) {
	key, want, _ := strings.Cut(spec, "=")
	ents, _ := filepath.Glob("/sys/class/block/*")
	for _, e := range ents {
		dev := "/dev/" + filepath.Base(e)
		uuid, label, err := ext4Identity(dev)
		if err != nil {
			continue
		}
		if (key == "UUID" && strings.EqualFold(uuid, want)) || (key == "LABEL" && label == want) {
			return dev, nil
		}
	}
	return "", fmt.Errorf("no ext4 filesystem with %s", spec)
}
