package criubin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"google.golang.org/protobuf/proto"
)

// NotifyFunc receives CRIU's notifications ("pre-dump", "post-dump",
// "post-restore" with the restored root pid, ...). Returning an error makes
// CRIU abort: a dump resumes the tasks, a restore kills the restored tree.
type NotifyFunc func(script string, pid int32) error

// Swrk runs one CRIU request over the swrk RPC protocol. CRIU runs in a
// process group of its own, so a Ctrl-C on the terminal reaches cr, which
// aborts through the notify callbacks, and never kills CRIU half-way with
// the job's tasks still seized. extra files are passed to CRIU as fds 4, 5,
// ... (for options that name fds, such as a status fd).
func Swrk(ctx context.Context, criu string, typ rpc.CriuReqType, opts *rpc.CriuOpts, nfy NotifyFunc, extra ...*os.File) (*rpc.CriuResp, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("criu swrk: %w", err)
	}
	cln := os.NewFile(uintptr(fds[0]), "criu-client")
	srv := os.NewFile(uintptr(fds[1]), "criu-server")
	defer cln.Close()
	cmd := exec.Command(criu, "swrk", "3")
	cmd.ExtraFiles = append([]*os.File{srv}, extra...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		srv.Close()
		return nil, fmt.Errorf("start criu: %w", err)
	}
	srv.Close()
	resp, err := swrkLoop(ctx, cln, typ, opts, nfy)
	cln.Close() // CRIU exits when the socket closes
	werr := cmd.Wait()
	if err == nil && werr != nil && resp == nil {
		err = fmt.Errorf("criu exited: %v: %s", werr, strings.TrimSpace(stderr.String()))
	}
	return resp, err
}

func swrkLoop(ctx context.Context, sk *os.File, typ rpc.CriuReqType, opts *rpc.CriuOpts, nfy NotifyFunc) (*rpc.CriuResp, error) {
	req := &rpc.CriuReq{Type: &typ, Opts: opts}
	if nfy != nil {
		opts.NotifyScripts = proto.Bool(true)
	}
	buf := make([]byte, 2*1024*1024)
	for {
		b, err := proto.Marshal(req)
		if err != nil {
			return nil, fmt.Errorf("criu request: %w", err)
		}
		if _, err := sk.Write(b); err != nil {
			return nil, fmt.Errorf("criu request: %w", err)
		}
		n, err := sk.Read(buf)
		if err != nil {
			return nil, fmt.Errorf("criu response: %w", err)
		}
		resp := &rpc.CriuResp{}
		if err := proto.Unmarshal(buf[:n], resp); err != nil {
			return nil, fmt.Errorf("criu response: %w", err)
		}
		if !resp.GetSuccess() {
			msg := resp.GetCrErrmsg()
			if msg == "" {
				msg = "see the log"
			}
			return resp, fmt.Errorf("%s (errno %d)", msg, resp.GetCrErrno())
		}
		rt := resp.GetType()
		if rt != rpc.CriuReqType_NOTIFY {
			return resp, nil
		}
		ok := true
		var nerr error
		if ctx.Err() != nil {
			ok, nerr = false, ctx.Err()
		} else if nfy != nil {
			if nerr = nfy(resp.GetNotify().GetScript(), resp.GetNotify().GetPid()); nerr != nil {
				ok = false
			}
		}
		if !ok {
			// Tell CRIU the script failed: it aborts cleanly (a dump
			// resumes the tasks, a restore kills what it created).
			b, _ := proto.Marshal(&rpc.CriuReq{Type: &rt, NotifySuccess: proto.Bool(false)})
			_, _ = sk.Write(b)
			if n, err := sk.Read(buf); err == nil {
				_ = proto.Unmarshal(buf[:n], &rpc.CriuResp{})
			}
			return nil, fmt.Errorf("aborted at %s: %w", resp.GetNotify().GetScript(), nerr)
		}
		req = &rpc.CriuReq{Type: &rt, NotifySuccess: proto.Bool(true)}
	}
}

// ErrAborted marks an operation cr aborted itself (interrupt, a failed hook).
var ErrAborted = errors.New("aborted")
