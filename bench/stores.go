package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cr-dev/cr/internal/weed"
)

// The store rows: the same job snapshotted into, and restored from, a
// directory store (in the work dir) and an S3 store (SeaweedFS on
// namespace A's loopback, its data in the work dir too), in the same run.

// StoreResult is one cr snapshot and one cr restore --store of the job.
type StoreResult struct {
	SnapshotWallSeconds float64 `json:"snapshot_wall_seconds"`
	FrozenSeconds       float64 `json:"frozen_seconds"`
	AddedBytes          int64   `json:"added_bytes"`
	TotalBytes          int64   `json:"total_bytes"`
	RestoreWallSeconds  float64 `json:"restore_wall_seconds"`
	Verified            bool    `json:"verified"`
}

// StoresResult compares the two stores on one job.
type StoresResult struct {
	Dir *StoreResult `json:"dir,omitempty"`
	S3  *StoreResult `json:"s3,omitempty"`
	// S3Reason says why there is no S3 row (no SeaweedFS).
	S3Reason string `json:"s3_reason,omitempty"`
}

// The S3 server listens on namespace A's own loopback: fixed ports are
// private to it.
const (
	s3Port     = "8333"
	s3Master   = "127.0.0.1:9333"
	s3Filer    = "127.0.0.1:8888"
	s3KeyID    = "cr-bench"
	s3SecretKy = "cr-bench-secret-0123456789"
)

type s3Server struct {
	cmd    *exec.Cmd
	done   chan error
	weed   string
	env    []string // for cr: endpoint and credentials
	reason string   // why there is none
}

// startS3 starts SeaweedFS in namespace A; without it the S3 rows say why.
func (e *env) startS3(ctx context.Context) {
	e.s3 = &s3Server{}
	bin, err := weed.Find()
	if err != nil {
		e.s3.reason = err.Error()
		logf("warning: %v: no S3 store rows", err)
		return
	}
	dir := filepath.Join(e.dir, "weed")
	ident := fmt.Sprintf(`{"identities":[{"name":"bench","credentials":[{"accessKey":%q,"secretKey":%q}],"actions":["Admin","Read","Write","List","Tagging"]}]}`, s3KeyID, s3SecretKy)
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err == nil {
		err = os.WriteFile(filepath.Join(dir, "s3.json"), []byte(ident), 0o600)
	}
	logF, err := os.Create(filepath.Join(dir, "weed.log"))
	if err != nil {
		e.s3.reason = err.Error()
		return
	}
	defer logF.Close()
	c := exec.Command(bin, "-logdir="+dir, "server", "-dir="+filepath.Join(dir, "data"), "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
		"-filer", "-s3", "-s3.port="+s3Port, "-s3.config="+filepath.Join(dir, "s3.json"),
		"-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=1024", "-volume.max=32",
		"-filer.localSocket="+filepath.Join(dir, "filer.sock"), "-s3.localSocket="+filepath.Join(dir, "s3.sock"))
	c.Dir = dir
	c.Stdout, c.Stderr = logF, logF
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := inNetns(netnsPath(e.nsA), c.Start); err != nil {
		e.s3.reason = "start SeaweedFS: " + err.Error()
		return
	}
	e.s3.cmd, e.s3.weed, e.s3.done = c, bin, make(chan error, 1)
	go func() { e.s3.done <- c.Wait() }()
	e.s3.env = []string{"AWS_ENDPOINT_URL=http://127.0.0.1:" + s3Port, "AWS_ACCESS_KEY_ID=" + s3KeyID,
		"AWS_SECRET_ACCESS_KEY=" + s3SecretKy, "AWS_REGION=us-east-1",
		"AWS_CONFIG_FILE=/nonexistent", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent"}
	// Up once the shell can create a bucket through the master and filer.
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := e.weedShell(ctx, "s3.bucket.create -name bench-probe"); err == nil {
			return
		} else if time.Now().After(deadline) || ctx.Err() != nil {
			e.stopS3()
			e.s3.reason = "SeaweedFS did not come up within 60 s: " + err.Error()
			logf("warning: %s", e.s3.reason)
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// weedShell runs one weed shell command in namespace A.
func (e *env) weedShell(ctx context.Context, command string) error {
	c := exec.CommandContext(ctx, e.s3.weed, "-logdir="+filepath.Join(e.dir, "weed"), "shell", "-master="+s3Master, "-filer="+s3Filer)
	c.Stdin = strings.NewReader(command + "\n")
	var out []byte
	err := inNetns(netnsPath(e.nsA), func() error {
		var err error
		out, err = c.CombinedOutput()
		return err
	})
	if err == nil && (strings.Contains(string(out), "error") || strings.Contains(string(out), "failed")) {
		err = errors.New(strings.TrimSpace(string(out)))
	}
	return err
}

func (e *env) stopS3() {
	if e.s3 == nil || e.s3.cmd == nil {
		return
	}
	_ = syscall.Kill(-e.s3.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-e.s3.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-e.s3.cmd.Process.Pid, syscall.SIGKILL)
		<-e.s3.done
	}
	e.s3.cmd = nil
	// It puts a unix socket per gRPC service (the default ports + 10000)
	// in /tmp, whatever it is told.
	for _, s := range []string{"master-grpc-19333", "volume-grpc-18080", "filer-grpc-18888", "s3-grpc-18333"} {
		_ = os.Remove("/tmp/seaweedfs-" + s + ".sock")
	}
}

// measureStores snapshots the running job into each store and restores
// it from there beside the original, checking the copy.
func (e *env) measureStores(ctx context.Context, j *job, r *Run) error {
	r.Stores = &StoresResult{}
	dir := filepath.Join(e.dir, "store-"+j.w.Name)
	var err error
	r.Stores.Dir, err = e.storeRound(ctx, j, dir, nil, "-dirstore")
	os.RemoveAll(dir) // its memory (tmpfs) is the S3 server's now
	if err != nil {
		return step("cr snapshot/restore --store DIR", err)
	}
	logf("  directory store: snapshot %s (frozen %s), restore %s (verified)", secs(r.Stores.Dir.SnapshotWallSeconds),
		secs(r.Stores.Dir.FrozenSeconds), secs(r.Stores.Dir.RestoreWallSeconds))
	if e.s3 == nil || e.s3.cmd == nil {
		r.Stores.S3Reason = "SeaweedFS did not start"
		if e.s3 != nil {
			r.Stores.S3Reason = e.s3.reason
		}
		return nil
	}
	bucket := "bench-" + strings.ToLower(strings.ReplaceAll(j.w.Name, "_", "-"))
	if err := e.weedShell(ctx, "s3.bucket.create -name "+bucket); err != nil {
		return step("create the bucket", err)
	}
	defer e.weedShell(context.Background(), "s3.bucket.delete -name "+bucket)
	if r.Stores.S3, err = e.storeRound(ctx, j, "s3://"+bucket+"/store", e.s3.env, "-s3store"); err != nil {
		return step("cr snapshot/restore --store s3://", err)
	}
	logf("  S3 store: snapshot %s (frozen %s), restore %s (verified)", secs(r.Stores.S3.SnapshotWallSeconds),
		secs(r.Stores.S3.FrozenSeconds), secs(r.Stores.S3.RestoreWallSeconds))
	return nil
}

func (e *env) storeRound(ctx context.Context, j *job, store string, extra []string, suffix string) (*StoreResult, error) {
	env := append(append([]string(nil), e.src.Env...), extra...)
	out, wall, err := e.run(ctx, e.cr, []string{"snapshot", "--json", j.path, "--store", store}, env)
	if err != nil {
		return nil, err
	}
	res := &StoreResult{SnapshotWallSeconds: wall.Seconds()}
	var rep struct {
		FrozenSeconds float64 `json:"frozen_seconds"`
		AddedBytes    int64   `json:"added_bytes"`
		TotalBytes    int64   `json:"total_bytes"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return nil, fmt.Errorf("read cr snapshot --json: %w", err)
	}
	res.FrozenSeconds, res.AddedBytes, res.TotalBytes = rep.FrozenSeconds, rep.AddedBytes, rep.TotalBytes
	as := j.path + suffix
	if _, wall, err = e.run(ctx, e.cr, []string{"restore", "--json", "--store", store, "--as", as, j.path}, env); err != nil {
		return nil, err
	}
	res.RestoreWallSeconds = wall.Seconds()
	defer e.crCmd(context.Background(), e.src, "kill", as)
	got, err := j.ask(ctx, time.Minute, func() error { return e.signal(ctx, e.src, as) })
	if err != nil {
		return nil, fmt.Errorf("restored copy: %w", err)
	}
	if err := j.verify(got); err != nil {
		return nil, fmt.Errorf("restored copy: %w", err)
	}
	res.Verified = true
	return res, nil
}
