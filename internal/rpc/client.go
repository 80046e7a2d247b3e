package rpc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
)

// ErrConnectionLost is returned (wrapped) by calls that fail because the
// connection to the daemon broke.
var ErrConnectionLost = errors.New("connection to daemon lost")

var errClientClosed = errors.New("rpc: client is closed")

// Client is a connection to the daemon. Its methods are safe for concurrent
// use; concurrent calls share the connection.
type Client struct {
	nc  net.Conn
	wmu sync.Mutex // serialises writes

	mu      sync.Mutex
	nextID  uint64
	pending map[string]*pendingCall // by id as sent
	err     error                   // set once the connection is unusable
}

// pendingCall collects what the read loop receives for one call, for the
// calling goroutine to consume.
type pendingCall struct {
	wake chan struct{} // capacity 1: "something changed"

	mu     sync.Mutex
	events []eventParams
	resp   *message
	err    error
}

func (p *pendingCall) update(f func()) {
	p.mu.Lock()
	f()
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Dial connects to the daemon's socket at path.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to daemon at %s: %w", path, err)
	}
	c := &Client{nc: nc, pending: make(map[string]*pendingCall)}
	go c.readLoop()
	return c, nil
}

// Close closes the connection. Pending calls fail; the server cancels their
// handlers.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.err == errClientClosed {
		c.mu.Unlock()
		return nil
	}
	c.err = errClientClosed
	c.mu.Unlock()
	return c.nc.Close()
}

// Call calls method with params (marshalled to JSON; nil sends none) and
// unmarshals the result into result (unless nil). A server error is returned
// as *Error. If ctx ends first, Call asks the server to cancel the call and
// returns ctx.Err() at once.
func (c *Client) Call(ctx context.Context, method string, params, result any) error {
	return c.CallStream(ctx, method, params, result, nil)
}

// CallStream is Call, and runs onEvent (if not nil) for every event the
// handler streams, in order, on the calling goroutine, before returning.
func (c *Client) CallStream(ctx context.Context, method string, params, result any, onEvent func(event string, data json.RawMessage)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	req := &message{Method: method}
	if params != nil {
		raw, err := json.Marshal(params)
		if err != nil {
			return fmt.Errorf("rpc: encoding params of %s: %w", method, err)
		}
		req.Params = raw
	}

	p := &pendingCall{wake: make(chan struct{}, 1)}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.nextID++
	id := strconv.FormatUint(c.nextID, 10)
	c.pending[id] = p
	c.mu.Unlock()

	req.ID = json.RawMessage(id)
	if err := c.send(req); err != nil {
		c.pendingFor(id, true)
		return fmt.Errorf("rpc: sending %s: %w", method, err)
	}

	for {
		select {
		case <-ctx.Done():
			c.pendingFor(id, true)
			cancel, _ := json.Marshal(cancelParams{ID: req.ID})
			go c.send(&message{Method: methodCancel, Params: cancel}) // don't wait for a slow peer
			return ctx.Err()
		case <-p.wake:
		}
		p.mu.Lock()
		events, resp, err := p.events, p.resp, p.err
		p.events = nil
		p.mu.Unlock()
		for _, ev := range events {
			if onEvent != nil {
				onEvent(ev.Event, ev.Data)
			}
		}
		switch {
		case resp != nil && resp.Error != nil:
			return resp.Error
		case resp != nil:
			if result == nil {
				return nil
			}
			if err := json.Unmarshal(resp.Result, result); err != nil {
				return fmt.Errorf("rpc: decoding result of %s: %w", method, err)
			}
			return nil
		case err != nil:
			return err
		}
	}
}

// pendingFor returns the call waiting for id, if any, and removes it if
// remove is set.
func (c *Client) pendingFor(id string, remove bool) *pendingCall {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.pending[id]
	if remove {
		delete(c.pending, id)
	}
	return p
}

// send writes one message. A write error breaks the connection, since a
// partial write leaves the stream unusable.
func (c *Client) send(m *message) error {
	b, err := encode(m)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.nc.Write(b); err != nil {
		c.nc.Close()
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.err != nil {
			return c.err
		}
		return fmt.Errorf("%w: %v", ErrConnectionLost, err)
	}
	return nil
}

// readLoop routes responses and events to pending calls until the
// connection ends, then fails the calls still pending.
func (c *Client) readLoop() {
	r := bufio.NewReaderSize(c.nc, 64<<10)
	var err error
	for {
		var line []byte
		if line, err = readLine(r); err != nil {
			break
		}
		var m message
		if json.Unmarshal(line, &m) != nil {
			continue // not ours to answer; skip the garbage
		}
		switch {
		case m.Method == methodEvent:
			var ev eventParams
			if json.Unmarshal(m.Params, &ev) == nil {
				if p := c.pendingFor(string(ev.ID), false); p != nil {
					p.update(func() { p.events = append(p.events, ev) })
				}
			}
		case m.Method == "" && m.ID != nil:
			if p := c.pendingFor(string(m.ID), true); p != nil {
				p.update(func() { p.resp = &m })
			}
		}
	}

	c.nc.Close()
	c.mu.Lock()
	switch {
	case c.err != nil: // closed by us
	case errors.Is(err, io.EOF):
		c.err = ErrConnectionLost
	default:
		c.err = fmt.Errorf("%w: %v", ErrConnectionLost, err)
	}
	pending := c.pending
	c.pending = nil
	cerr := c.err
	c.mu.Unlock()
	for _, p := range pending {
		p.update(func() { p.err = cerr })
	}
}
