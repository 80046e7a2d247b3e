//go:build !linux

package dnsserver

import (
	"errors"
	"syscall"
)

func controlFreeBind(string, string, syscall.RawConn) error {
	return errors.New("FreeBind is supported on Linux only")
}
