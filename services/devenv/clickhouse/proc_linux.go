//go:build linux

package clickhouse

import "syscall"

// sysProcAttr makes the kernel SIGKILL the server when the thread that
// forked it dies, so a crashed or killed test binary never leaves a server
// behind in CI. Pdeathsig is tied to the forking OS thread, not the process;
// Start therefore forks from a goroutine locked to its thread for the whole
// life of the server (see run). Setpgid keeps a terminal's Ctrl-C away from
// the server so its owner decides the shutdown order (for example, drain
// writers first, then Stop ClickHouse); if the owner dies instead,
// Pdeathsig still cleans up.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
