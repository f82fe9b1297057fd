package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cr-dev/cr/internal/weed"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// The S3 tests run against a real SeaweedFS (weed server -s3) on loopback,
// started on first use with an identities file, so that credentials are
// checked, and stopped at the end of the run with its data removed.

const (
	s3Key    = "cr-e2e-access"
	s3Secret = "cr-e2e-secret-0123456789"
)

// checkWeed fails the run under CI when SeaweedFS is missing, as a missing
// CRIU does: the S3 tests would otherwise only skip.
func checkWeed() error {
	if _, err := weed.Find(); err != nil && os.Getenv("CI") == "true" {
		return err
	}
	return nil
}

type s3Server struct {
	endpoint string // http://127.0.0.1:PORT
	dir      string
	cmd      *exec.Cmd
	exited   chan struct{}
	log      *os.File
	admin    *minio.Client
	socks    []string // what it leaves in /tmp
}

var (
	s3Once sync.Once
	s3Srv  *s3Server
	s3Err  error
)

// needS3 returns the running server, starting it on first use; without
// SeaweedFS the test is skipped (the run fails under CI: checkWeed).
func needS3(t *testing.T) *s3Server {
	t.Helper()
	bin, err := weed.Find()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	s3Once.Do(func() { s3Srv, s3Err = startS3(bin) })
	if s3Err != nil {
		t.Fatalf("start SeaweedFS: %v", s3Err)
	}
	return s3Srv
}

// freePortPair returns a loopback port p such that p and p+10000 (the gRPC
// port SeaweedFS derives) are free.
func freePortPair(taken map[int]bool) (int, error) {
	for i := 0; i < 200; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if p+10000 > 65535 || taken[p] || taken[p+10000] {
			continue
		}
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+10000))
		if err != nil {
			continue
		}
		l2.Close()
		taken[p], taken[p+10000] = true, true
		return p, nil
	}
	return 0, errors.New("no free port pair on loopback")
}

func startS3(bin string) (*s3Server, error) {
	s := &s3Server{dir: filepath.Join(workDir, "weed"), exited: make(chan struct{})}
	if err := os.MkdirAll(filepath.Join(s.dir, "data"), 0o700); err != nil {
		return nil, err
	}
	ident := map[string]any{"identities": []any{map[string]any{
		"name":        "cr-e2e",
		"credentials": []any{map[string]string{"accessKey": s3Key, "secretKey": s3Secret}},
		"actions":     []string{"Admin", "Read", "Write", "List", "Tagging"},
	}}}
	b, _ := json.Marshal(ident)
	cfg := filepath.Join(s.dir, "s3.json")
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		return nil, err
	}
	taken := map[int]bool{}
	var ports [4]int
	for i := range ports {
		p, err := freePortPair(taken)
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	log, err := os.Create(filepath.Join(s.dir, "weed.log"))
	if err != nil {
		return nil, err
	}
	s.log = log
	// -logdir: its logs (glog) would go to /tmp otherwise.
	s.cmd = exec.Command(bin, "-logdir="+s.dir, "server", "-dir="+filepath.Join(s.dir, "data"),
		"-ip=127.0.0.1", "-ip.bind=127.0.0.1",
		"-master.port="+strconv.Itoa(ports[0]), "-volume.port="+strconv.Itoa(ports[1]),
		"-filer", "-filer.port="+strconv.Itoa(ports[2]),
		"-s3", "-s3.port="+strconv.Itoa(ports[3]), "-s3.config="+cfg,
		"-s3.port.iceberg=0", "-s3.port.lance=0",
		"-filer.localSocket="+filepath.Join(s.dir, "filer.sock"), "-s3.localSocket="+filepath.Join(s.dir, "s3.sock"),
		"-master.volumeSizeLimitMB=256", "-volume.max=16")
	// It also puts a unix socket per gRPC service in /tmp, whatever it is
	// told: stop removes them.
	for i, name := range []string{"master", "volume", "filer", "s3"} {
		s.socks = append(s.socks, fmt.Sprintf("/tmp/seaweedfs-%s-grpc-%d.sock", name, ports[i]+10000))
	}
	s.cmd.Stdout, s.cmd.Stderr = log, log
	s.cmd.Dir = s.dir
	// Its own process group: stopS3 ends everything it started.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	s.endpoint = "http://127.0.0.1:" + strconv.Itoa(ports[3])
	s.admin, err = minio.New("127.0.0.1:"+strconv.Itoa(ports[3]), &minio.Options{
		Creds: credentials.NewStaticV4(s3Key, s3Secret, ""), BucketLookup: minio.BucketLookupPath, Region: "us-east-1",
	})
	if err != nil {
		s.stop()
		return nil, err
	}
	// Up once an authenticated request gets an answer (the filer and the
	// volume server come up after the S3 port listens).
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := s.admin.MakeBucket(ctx, "cr-e2e-probe", minio.MakeBucketOptions{})
		cancel()
		if err == nil {
			break
		}
		select {
		case <-s.exited:
			b, _ := os.ReadFile(log.Name())
			return nil, fmt.Errorf("weed server exited: %s", tail(string(b), 2000))
		default:
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("weed server did not answer within 60 s: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return s, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// stopS3 ends the server started by needS3, if any; its data goes with
// workDir.
func stopS3() {
	if s3Srv != nil {
		s3Srv.stop()
	}
}

func (s *s3Server) stop() {
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
	}
	s.log.Close()
	os.RemoveAll(s.dir)
	for _, p := range s.socks {
		os.Remove(p)
	}
}

var bucketSeq struct {
	sync.Mutex
	n int
}

// bucket makes a new bucket for a test and removes it with its objects at
// cleanup.
func (s *s3Server) bucket(t *testing.T) string {
	t.Helper()
	bucketSeq.Lock()
	bucketSeq.n++
	name := fmt.Sprintf("cr-e2e-%d-%d", os.Getpid(), bucketSeq.n)
	bucketSeq.Unlock()
	ctx := context.Background()
	if err := s.admin.MakeBucket(ctx, name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("make bucket %s: %v", name, err)
	}
	t.Cleanup(func() {
		for o := range s.admin.ListObjects(ctx, name, minio.ListObjectsOptions{Recursive: true}) {
			if o.Err == nil {
				s.admin.RemoveObject(ctx, name, o.Key, minio.RemoveObjectOptions{})
			}
		}
		for u := range s.admin.ListIncompleteUploads(ctx, name, "", true) {
			s.admin.RemoveIncompleteUpload(ctx, name, u.Key)
		}
		s.admin.RemoveBucket(ctx, name)
	})
	return name
}

// env is what cr needs to reach the server, with the test's credentials,
// and no ~/.aws of the machine's.
func (s *s3Server) env(extra ...string) []string {
	return append([]string{
		"AWS_ENDPOINT_URL=" + s.endpoint,
		"AWS_ACCESS_KEY_ID=" + s3Key,
		"AWS_SECRET_ACCESS_KEY=" + s3Secret,
		"AWS_REGION=us-east-1",
		"AWS_CONFIG_FILE=/nonexistent",
		"AWS_SHARED_CREDENTIALS_FILE=/nonexistent",
		"AWS_PROFILE=",
	}, extra...)
}

// bytesUnder is the total size of the objects under prefix.
func (s *s3Server) bytesUnder(t *testing.T, bucket, prefix string) int64 {
	t.Helper()
	var n int64
	for o := range s.admin.ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			t.Fatalf("list %s/%s: %v", bucket, prefix, o.Err)
		}
		n += o.Size
	}
	return n
}

// keys lists the keys under prefix, and the keys of incomplete uploads.
func (s *s3Server) keys(t *testing.T, bucket, prefix string) (objects, uploads []string) {
	t.Helper()
	ctx := context.Background()
	for o := range s.admin.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			t.Fatalf("list %s: %v", bucket, o.Err)
		}
		objects = append(objects, o.Key)
	}
	for u := range s.admin.ListIncompleteUploads(ctx, bucket, prefix, true) {
		if u.Err != nil {
			t.Fatalf("list uploads %s: %v", bucket, u.Err)
		}
		uploads = append(uploads, u.Key)
	}
	return objects, uploads
}

// partsUploaded is how many parts the incomplete uploads of key have.
func (s *s3Server) partsUploaded(t *testing.T, bucket, key string) int {
	t.Helper()
	ctx := context.Background()
	core := minio.Core{Client: s.admin}
	n := 0
	for u := range s.admin.ListIncompleteUploads(ctx, bucket, key, true) {
		if u.Err != nil || u.Key != key {
			continue
		}
		res, err := core.ListObjectParts(ctx, bucket, key, u.UploadID, 0, 1000)
		if err == nil {
			n += len(res.ObjectParts)
		}
	}
	return n
}
