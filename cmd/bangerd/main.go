// Command bangerd is the banger daemon: it owns every VM, image, tap and disk
// and serves JSON-RPC on a Unix socket.
package main

import (
	"flag"
	"fmt"
	"os"

	"banger/internal/daemon"
)

func main() {
	system := flag.Bool("system", false, "run as the system service (/etc/banger, /var/lib/banger, /run/banger)")
	foreground := flag.Bool("log-stderr", false, "also write the log to stderr")
	flag.Parse()
	if err := daemon.Run(daemon.Options{System: *system, LogStderr: *foreground}); err != nil {
		fmt.Fprintln(os.Stderr, "bangerd:", err)
		os.Exit(1)
	}
}
