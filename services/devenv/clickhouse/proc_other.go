//go:build !linux

package clickhouse

import "syscall"

// sysProcAttr returns nil off Linux: there is no parent-death signal, so
// the server stays in the caller's process group, where at least a
// terminal's Ctrl-C reaches it and it does not outlive an interactive run.
func sysProcAttr() *syscall.SysProcAttr { return nil }
