package criubin

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cr-dev/cr/criubin/streamer"
)

// HookCommand is the hidden cr command that a CRIU run on its command line
// (criu restore --stream, which the swrk RPC does not offer) runs as its
// action script at post-restore: it asks cr, over a socket, whether the
// restored tasks may resume, and fails (so that CRIU kills them) unless cr
// says yes. It is what swrk's post-restore notification is to a swrk run:
// the restored tree is held, created but not running, until cr decides.
// If cr is gone, the socket is too, and the tree is killed.
const HookCommand = "__criu-hook"

// Hook is cr's side of the action script of one CRIU run.
type Hook struct {
	ln     *net.UnixListener
	sock   string
	Script string // the action script's path, for --action-script
}

// ListenHook makes the action script in dir (CRIU's work directory) and
// listens for it. exe is cr's own binary (os.Executable). At CRIU's
// setup-namespaces, before CRIU creates the restored cgroup namespace
// (rooted at the root task's cgroups of that moment), the script moves
// the restored root task into the cgroup directories join, as swrk's
// setup-namespaces notification lets a swrk run do.
func ListenHook(dir, exe string, join []string) (*Hook, error) {
	const name = "cr-hook.sock"
	sock := filepath.Join(dir, name)
	ln, err := streamer.ListenIn(dir, name)
	if err != nil {
		return nil, fmt.Errorf("listen for criu's action script: %w", err)
	}
	script := filepath.Join(dir, "cr-hook.sh")
	body := "#!/bin/sh\n"
	if len(join) > 0 {
		var dirs []string
		for _, d := range join {
			dirs = append(dirs, shellQuote(d))
		}
		body += "# cr: the restored root task joins its cgroups before CRIU makes its cgroup namespace\n" +
			"if [ \"$CRTOOLS_SCRIPT_ACTION\" = setup-namespaces ]; then\n" +
			"\tfor d in " + strings.Join(dirs, " ") + "; do echo \"$CRTOOLS_INIT_PID\" > \"$d/cgroup.procs\" || exit 1; done\n" +
			"\texit 0\n" +
			"fi\n"
	}
	// The socket by its name in dir: its full path may be too long.
	body += "# cr: hold the restored tree at post-restore until cr says it may run\n" +
		"[ \"$CRTOOLS_SCRIPT_ACTION\" = post-restore ] || exit 0\n" +
		"cd " + shellQuote(dir) + " || exit 1\n" +
		"exec " + shellQuote(exe) + " " + HookCommand + " " + name + "\n"
	if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
		ln.Close()
		return nil, fmt.Errorf("write criu's action script: %w", err)
	}
	return &Hook{ln: ln, sock: sock, Script: script}, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// Close stops listening and removes the socket.
func (h *Hook) Close() {
	h.ln.Close()
	os.Remove(h.sock)
}

// Serve waits for CRIU's post-restore (until ctx ends or Close) and calls
// decide with the restored root task's pid: the tasks resume if it
// returns nil, and are killed by CRIU otherwise. It returns decide's
// error, or why there was no post-restore.
func (h *Hook) Serve(ctx context.Context, decide func(pid int32) error) error {
	stop := context.AfterFunc(ctx, func() { h.ln.Close() })
	defer stop()
	c, err := h.ln.AcceptUnix()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("wait for criu's post-restore: %w", err)
	}
	defer c.Close()
	h.ln.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("criu's post-restore: %w", err)
	}
	pid, err := strconv.ParseInt(strings.TrimSpace(line), 10, 32)
	if err != nil || pid <= 0 {
		return fmt.Errorf("criu's post-restore: bad pid %q", strings.TrimSpace(line))
	}
	derr := decide(int32(pid))
	answer := "ok\n"
	if derr != nil {
		answer = "abort\n"
	}
	if _, err := c.Write([]byte(answer)); err != nil && derr == nil {
		return fmt.Errorf("answer criu's post-restore: %w", err)
	}
	return derr
}

// RunHook is the action script's side (cr __criu-hook SOCK): it sends
// cr the restored root's pid (CRTOOLS_INIT_PID) and waits for the answer.
// It returns the exit status for CRIU: 0 to resume, 1 to kill the tree.
func RunHook(sock string) int {
	pid := os.Getenv("CRTOOLS_INIT_PID")
	if os.Getenv("CRTOOLS_SCRIPT_ACTION") != "post-restore" {
		return 0
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cr hook: %v\n", err)
		return 1
	}
	defer c.Close()
	if _, err := c.Write([]byte(pid + "\n")); err != nil {
		fmt.Fprintf(os.Stderr, "cr hook: %v\n", err)
		return 1
	}
	answer, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && !errors.Is(err, net.ErrClosed) {
		fmt.Fprintf(os.Stderr, "cr hook: no answer: %v\n", err)
		return 1
	}
	if answer != "ok\n" {
		return 1
	}
	return 0
}
