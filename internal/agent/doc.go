// Package agent is the protocol between bangerd and banger-agent, the small
// static program that runs inside every guest, and the host side of it: the
// Client the daemon uses and the dialers that reach a guest over QEMU's
// virtio-serial port or Firecracker's vsock. The guest side (the server) is
// package agent/guest; cmd/banger-agent is its binary.
//
// # Transport
//
// The protocol runs over any reliable, ordered byte stream
// (io.ReadWriteCloser). Two are used:
//
//   - QEMU: a virtio-serial port named "banger.agent". The guest opens
//     /dev/virtio-ports/banger.agent (or finds its /dev/vportNpM through
//     /sys/class/virtio-ports/*/name); the host connects to the Unix socket
//     of QEMU's `-chardev socket,server=on,wait=off`. The guest's side of
//     this stream outlives host connections (a daemon restart) and may hold
//     stale bytes from an earlier connection, and a host connect succeeds
//     even when no agent is running yet, so a connection proves nothing until
//     the handshake below completes.
//   - Firecracker: vsock. The guest listens on vsock port 1024
//     (DefaultVsockPort); the host connects to Firecracker's vsock Unix
//     socket and sends "CONNECT 1024\n", Firecracker answers "OK <n>\n" and
//     the socket then carries the stream (DialFirecrackerVsock).
//
// # Handshake (resync)
//
// Lines are ASCII, end in "\n", and at most MaxLineLength bytes. Each side
// discards whatever it reads that is not the line it waits for, and looks for
// the "BANGER-AGENT-" marker anywhere in a line, so junk before a line
// (stale bytes, a half-written yamux frame) does not hide it.
//
//	host  → guest  "\nBANGER-AGENT-SYNC <nonce>\n"       repeated every SyncInterval until answered
//	guest → host   "BANGER-AGENT-OK <nonce> <major>.<minor>\n"   for every SYNC it reads
//	host  → guest  "BANGER-AGENT-START <nonce>\n"        once the OK's nonce matches and the major version is ours
//	guest → host   "BANGER-AGENT-STARTED <nonce>\n"      for a START whose nonce is the last SYNC's
//
// The nonce is 32 random hex digits chosen by the host per connection. After
// STARTED both sides run a hashicorp/yamux session on the rest of the stream:
// the host is the yamux client, the guest the server. The extra START/STARTED
// exchange is what makes the handshake safe with retransmitted and stale
// SYNC lines: the guest only switches to yamux on a START carrying the nonce
// of the last SYNC it answered, and the host only switches after STARTED, so
// no OK line answering a duplicate SYNC can land inside the yamux stream.
//
// The SYNC/OK lines are frozen forever: a future agent must answer them in
// this format, so that any banger can tell which protocol an image's agent
// speaks. The host refuses an agent whose major version differs from
// ProtocolMajor (see *VersionError); minor versions only add operations, and
// an agent answers an operation it does not know with an error.
//
// When the session fails (EOF, a read error, a yamux protocol error such as
// stale bytes read as a frame), the guest goes back to scanning for a SYNC:
// on the same stream after a protocol error, after reopening the device (with
// backoff) after EOF or a read error. A virtio-serial read returns EOF when
// no host is connected, which is how the guest notices a daemon restart.
//
// # Requests
//
// Every request is one yamux stream opened by the host. The host writes one
// JSON line (Request), then the operation's framing below; the guest answers
// with one JSON line (Response, whose "error" is set if the request failed),
// then the operation's framing. Frames are
//
//	[1 byte type][4 bytes big-endian payload length][payload]
//
// with payloads of at most MaxFramePayload bytes (data is sent in chunks of
// at most DataChunk bytes).
//
//   - health: request → response {"health": Health}.
//   - ports: request → response {"ports": [ListeningPort...]}.
//   - exec (ExecRequest): request → response {"pid": N, "stdin_window": W}
//     once the command started (or an error: bad argv or environment,
//     command not found, bad directory). Then, host → guest:
//     'I' stdin bytes (in all at most W plus the credit granted so far),
//     'C' close stdin (with a PTY the terminal's EOF character, ^D, is
//     written instead), 'W' window size (4 bytes: rows, cols, each uint16
//     big-endian), 'S' signal (payload: a name such as "SIGTERM").
//     Guest → host: 'O' stdout bytes (with a PTY: the terminal's output),
//     'E' stderr bytes (never with a PTY), 'G' stdin credit (uint32
//     big-endian: the agent wrote that many stdin bytes to the command, the
//     host may send as many more), and last 'X' exit (JSON ExitStatus),
//     after which the guest closes the stream. The credit keeps the agent
//     reading the stream even when the command does not read its stdin, so
//     signal and resize frames are never stuck behind stdin. Signals go to
//     the process group (the command is a group leader; with a PTY a
//     session leader). If the stream ends before 'X' (the host went away),
//     the guest SIGKILLs the process group. After the command exits the
//     guest still forwards output until its pipes close, for at most
//     OutputGrace, so a background child that keeps stdout open cannot hold
//     the exec open.
//   - put (dest): request, then host → guest 'D' tar bytes ... and 'Z' end
//     (or 'A' abort with a reason); the guest extracts while reading and
//     answers the response line after the end, or as soon as extraction
//     fails (the host stops sending then). Extraction refuses any entry whose
//     name is absolute or contains "..", a symlink whose target leaves dest,
//     a hard link whose target is outside dest, and any write that would
//     pass through a symlink leading outside dest (openat2 RESOLVE_BENEATH);
//     the error names the entry. Modes (with setuid/setgid/sticky),
//     ownership (numeric uid/gid) and mtimes are kept. A "./" entry does not
//     change dest itself.
//   - get (paths): request → response (an error if a path is not absolute or
//     does not exist), then guest → host 'D' tar bytes ... and 'X' end
//     (JSON {"error": ""}; a non-empty error means the archive is
//     incomplete). Each path is archived under its base name, as
//     `tar -C $(dirname p) $(basename p)` would; symlinks are archived, not
//     followed; sockets are skipped.
package agent
