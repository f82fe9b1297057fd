package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]URL{
		"s3://bucket":              {Bucket: "bucket"},
		"s3://bucket/":             {Bucket: "bucket"},
		"s3://my.bucket-1/a/b.cr":  {Bucket: "my.bucket-1", Key: "a/b.cr"},
		"s3://bucket/prefix/":      {Bucket: "bucket", Key: "prefix/"},
		"s3://bucket/fleet/store1": {Bucket: "bucket", Key: "fleet/store1"},
	} {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "bucket/key", "s3://", "s3://B/x", "s3://ab/x", "s3://-bucket/x", "s3://bucket/a//b", "s3://bucket/../x", "s3://bucket/./x", "file:///x", "s3://b_b/x"} {
		if _, err := Parse(in); !errors.Is(err, ErrBadURL) {
			t.Errorf("Parse(%q): %v, want ErrBadURL", in, err)
		}
	}
	if u, _ := Parse("s3://bucket/a/b"); u.String() != "s3://bucket/a/b" {
		t.Errorf("String: %s", u)
	}
}

func setenv(t *testing.T, kv ...string) {
	for _, k := range []string{"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
		"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	for i := 0; i < len(kv); i += 2 {
		t.Setenv(kv[i], kv[i+1])
	}
}

// TestLoadConfig: the environment first, then the profile of ~/.aws/config
// and ~/.aws/credentials; path style for any endpoint but AWS's.
func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config")
	creds := filepath.Join(dir, "credentials")
	os.WriteFile(cfg, []byte("[default]\nregion = eu-west-1\n\n[profile lab]\nregion = us-west-2\nendpoint_url = https://minio.lab:9000\ns3 =\n  addressing_style = virtual\n"), 0o600)
	os.WriteFile(creds, []byte("[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = s1\n[lab]\naws_access_key_id = AKLAB\naws_secret_access_key = s2\n"), 0o600)

	setenv(t, "AWS_CONFIG_FILE", cfg, "AWS_SHARED_CREDENTIALS_FILE", creds)
	c, err := LoadConfig()
	if err != nil || c.Endpoint != "s3.eu-west-1.amazonaws.com" || !c.Secure || c.Region != "eu-west-1" || c.PathStyle || !c.HaveCreds {
		t.Errorf("default profile: %+v, %v", c, err)
	}
	if v, _ := c.creds.GetWithContext(nil); v.AccessKeyID != "AKDEFAULT" {
		t.Errorf("default profile's key %q", v.AccessKeyID)
	}

	setenv(t, "AWS_CONFIG_FILE", cfg, "AWS_SHARED_CREDENTIALS_FILE", creds, "AWS_PROFILE", "lab")
	c, err = LoadConfig()
	if err != nil || c.Endpoint != "minio.lab:9000" || !c.Secure || c.Region != "us-west-2" || c.PathStyle {
		t.Errorf("lab profile: %+v, %v", c, err)
	}
	if v, _ := c.creds.GetWithContext(nil); v.AccessKeyID != "AKLAB" {
		t.Errorf("lab profile's key %q", v.AccessKeyID)
	}

	// The environment wins over the files.
	setenv(t, "AWS_CONFIG_FILE", cfg, "AWS_SHARED_CREDENTIALS_FILE", creds,
		"AWS_ENDPOINT_URL", "http://127.0.0.1:8333", "AWS_REGION", "local", "AWS_ACCESS_KEY_ID", "AKENV", "AWS_SECRET_ACCESS_KEY", "s3")
	c, err = LoadConfig()
	if err != nil || c.Endpoint != "127.0.0.1:8333" || c.Secure || c.Region != "local" || !c.PathStyle {
		t.Errorf("environment: %+v, %v", c, err)
	}
	if v, _ := c.creds.GetWithContext(nil); v.AccessKeyID != "AKENV" {
		t.Errorf("environment's key %q", v.AccessKeyID)
	}

	setenv(t, "AWS_CONFIG_FILE", filepath.Join(dir, "none"), "AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "none"))
	c, err = LoadConfig()
	if err != nil || c.HaveCreds || c.Region != "us-east-1" || c.Endpoint != "s3.amazonaws.com" {
		t.Errorf("nothing configured: %+v, %v", c, err)
	}
	for _, bad := range []string{"127.0.0.1:8333", "ftp://x", "http://x/path"} {
		setenv(t, "AWS_ENDPOINT_URL", bad, "AWS_CONFIG_FILE", "/nonexistent")
		if _, err := LoadConfig(); err == nil || !strings.Contains(err.Error(), "want http://HOST[:PORT]") {
			t.Errorf("endpoint %q: %v", bad, err)
		}
	}
}

// TestClassify: S3 error codes and network failures map to the errors cr
// tells apart.
func TestClassify(t *testing.T) {
	ctx := context.Background()
	for code, want := range map[string]error{
		"InvalidAccessKeyId":    ErrAuth,
		"SignatureDoesNotMatch": ErrAuth,
		"AccessDenied":          ErrAuth,
		"NoSuchBucket":          ErrNoBucket,
		"NoSuchKey":             fs.ErrNotExist,
	} {
		if got := classify(ctx, minio.ErrorResponse{Code: code, StatusCode: 400}); got != want {
			t.Errorf("%s: %v, want %v", code, got, want)
		}
	}
	if got := classify(ctx, minio.ErrorResponse{Code: "SlowDown", StatusCode: 503}); got != nil {
		t.Errorf("SlowDown: %v, want none (retried by the client, then reported as is)", got)
	}
	_, err := net.Dial("tcp", "127.0.0.1:1")
	if got := classify(ctx, err); got != ErrUnreachable {
		t.Errorf("connection refused (%v): %v", err, got)
	}
}

// TestDialUnreachable: a closed port on loopback is ErrUnreachable within
// seconds, naming the endpoint, despite the retries.
func TestDialUnreachable(t *testing.T) {
	setenv(t, "AWS_ENDPOINT_URL", "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID", "k", "AWS_SECRET_ACCESS_KEY", "s", "AWS_CONFIG_FILE", "/nonexistent")
	start := time.Now()
	_, err := Dial(context.Background(), "bucket")
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("Dial: %v, want ErrUnreachable naming 127.0.0.1:1", err)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("Dial took %v", d)
	}
}

// fakeS3 answers HEAD of the bucket, and PUTs with the statuses in order
// (then 200), counting the PUTs.
func fakeS3(t *testing.T, statuses ...int) (*httptest.Server, *atomic.Int32) {
	var puts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead && r.URL.Path == "/bucket" || r.URL.Path == "/bucket/" {
			w.WriteHeader(http.StatusOK)
			return
		}
		if r.Method == http.MethodPut {
			io.Copy(io.Discard, r.Body)
			n := int(puts.Add(1))
			if n <= len(statuses) {
				code := statuses[n-1]
				name := map[int]string{503: "SlowDown", 500: "InternalError", 403: "InvalidAccessKeyId"}[code]
				w.Header().Set("Content-Type", "application/xml")
				w.WriteHeader(code)
				fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s</Message><Resource>%s</Resource></Error>`, name, name, r.URL.Path)
				return
			}
			w.Header().Set("ETag", `"d41d8cd98f00b204e9800998ecf8427e"`)
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusNotImplemented)
	}))
	t.Cleanup(srv.Close)
	return srv, &puts
}

// TestRetries: throttling and server errors are retried with backoff and
// then succeed; refused credentials are not retried.
func TestRetries(t *testing.T) {
	srv, puts := fakeS3(t, 503, 500, 503)
	setenv(t, "AWS_ENDPOINT_URL", srv.URL, "AWS_ACCESS_KEY_ID", "k", "AWS_SECRET_ACCESS_KEY", "s", "AWS_CONFIG_FILE", "/nonexistent")
	c, err := Dial(context.Background(), "bucket")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := c.Put(context.Background(), "k", []byte("data")); err != nil {
		t.Fatalf("Put after 3 transient errors: %v", err)
	}
	if n := puts.Load(); n != 4 {
		t.Errorf("%d PUTs, want 4 (3 refused, then one that succeeds)", n)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("3 retries in %v: no backoff", d)
	}

	srv, puts = fakeS3(t, 403, 403, 403, 403, 403, 403, 403, 403)
	setenv(t, "AWS_ENDPOINT_URL", srv.URL, "AWS_ACCESS_KEY_ID", "k", "AWS_SECRET_ACCESS_KEY", "s", "AWS_CONFIG_FILE", "/nonexistent")
	c, err = Dial(context.Background(), "bucket")
	if err != nil {
		t.Fatal(err)
	}
	err = c.Put(context.Background(), "k", []byte("data"))
	if !errors.Is(err, ErrAuth) || puts.Load() != 1 {
		t.Errorf("Put refused: %v after %d PUTs, want ErrAuth after 1", err, puts.Load())
	}

	// Throttling that does not end is reported after the bounded retries.
	srv, puts = fakeS3(t, 503, 503, 503, 503, 503, 503, 503, 503, 503, 503, 503, 503)
	setenv(t, "AWS_ENDPOINT_URL", srv.URL, "AWS_ACCESS_KEY_ID", "k", "AWS_SECRET_ACCESS_KEY", "s", "AWS_CONFIG_FILE", "/nonexistent")
	c, err = Dial(context.Background(), "bucket")
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	err = c.Put(context.Background(), "k", []byte("data"))
	if err == nil || !strings.Contains(err.Error(), "SlowDown") || int(puts.Load()) != maxRetries {
		t.Errorf("Put throttled for good: %v after %d PUTs, want SlowDown after %d", err, puts.Load(), maxRetries)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("gave up after %v", d)
	}
}
