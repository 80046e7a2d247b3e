// Command banger-agent is banger's guest agent: a static binary that runs in
// every guest as root and serves the host's requests (health, exec, file
// copy, listening ports) over a virtio-serial port (QEMU) or vsock
// (Firecracker). See package banger/internal/agent for the protocol.
//
// Build: CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=V" ./cmd/banger-agent
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"banger/internal/agent"
	"banger/internal/agent/guest"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	port := flag.String("port", agent.DefaultPortPath, "virtio-serial port to serve (QEMU)")
	vsockPort := flag.Uint("vsock", 0, fmt.Sprintf("serve vsock connections on this port instead of the virtio-serial port (Firecracker; banger uses %d)", agent.DefaultVsockPort))
	showVersion := flag.Bool("version", false, "print the version and protocol version, then exit")
	kmsg := flag.String("kmsg", "/dev/kmsg", `where to write "banger-agent: ready" (empty: stderr)`)
	flag.Parse()
	if *showVersion {
		fmt.Printf("banger-agent %s (protocol %s)\n", version, agent.ProtocolVersion)
		return
	}
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "banger-agent: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	log.SetFlags(0)
	log.SetPrefix("banger-agent: ")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// Survive a console hangup and a closed stderr. Caught (not ignored),
	// so that commands the agent runs get the default dispositions.
	survive := make(chan os.Signal, 1)
	signal.Notify(survive, syscall.SIGHUP, syscall.SIGPIPE)
	go func() {
		for range survive {
		}
	}()
	srv := &guest.Server{Version: version, OnReady: func() { announceReady(*kmsg) }}

	var err error
	if *vsockPort != 0 {
		l, lerr := listenVsock(ctx, uint32(*vsockPort))
		if lerr != nil {
			return // ctx ended
		}
		log.Printf("%s (protocol %s) listening on vsock port %d", version, agent.ProtocolVersion, *vsockPort)
		err = srv.ServeListener(ctx, l)
	} else {
		log.Printf("%s (protocol %s) serving %s", version, agent.ProtocolVersion, *port)
		err = srv.ServePort(ctx, *port)
	}
	if err != nil && ctx.Err() == nil {
		log.Fatal(err)
	}
}

// announceReady tells the console (and so `banger vm logs`) that the agent
// serves: "banger-agent: ready" in the kernel log (kmsg), or on stderr when
// kmsg is empty or cannot be written.
func announceReady(kmsg string) {
	const msg = "banger-agent: ready"
	if kmsg == "" {
		fmt.Fprintln(os.Stderr, msg)
		return
	}
	if f, err := os.OpenFile(kmsg, os.O_WRONLY, 0); err == nil {
		_, err = f.WriteString("<6>" + msg + "\n")
		f.Close()
		if err == nil {
			log.Printf("ready")
			return
		}
	}
	fmt.Fprintln(os.Stderr, msg)
}

// listenVsock listens on the vsock port, retrying while the vsock device or
// its module is not there yet, until ctx ends.
func listenVsock(ctx context.Context, port uint32) (net.Listener, error) {
	var last string
	for {
		l, err := vsock.ListenContextID(unix.VMADDR_CID_ANY, port, nil)
		if err == nil {
			return l, nil
		}
		if err.Error() != last {
			log.Printf("vsock port %d: %v (retrying)", port, err)
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}
