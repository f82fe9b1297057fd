package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
)

// Timeouts and retries. minio-go retries throttling (503 SlowDown, 429),
// server errors and dropped connections with exponential backoff and
// jitter (200 ms doubling, at most 1 s a wait); maxRetries bounds that so
// an endpoint that is down is reported within seconds, not minutes.
var (
	dialTimeout   = 3 * time.Second
	headerTimeout = time.Minute
	probeTimeout  = 10 * time.Second
	maxRetries    = 5
)

// Client talks to one bucket.
type Client struct {
	mc       *minio.Client
	bucket   string
	endpoint string
	cfg      Config
}

// Dial makes a client of the bucket with LoadConfig's configuration and
// checks, within seconds, that the endpoint answers, takes the
// credentials and has the bucket: ErrUnreachable, ErrAuth or ErrNoBucket
// otherwise.
func Dial(ctx context.Context, bucket string) (*Client, error) {
	cfg, err := LoadConfig()
	if err != nil {
		return nil, err
	}
	return DialConfig(ctx, cfg, bucket)
}

// DialConfig is Dial with a given configuration.
func DialConfig(ctx context.Context, cfg Config, bucket string) (*Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	tr.ResponseHeaderTimeout = headerTimeout
	tr.MaxIdleConnsPerHost = 64
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	mc, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:        cfg.creds,
		Secure:       cfg.Secure,
		Region:       cfg.Region,
		Transport:    tr,
		BucketLookup: lookup,
		MaxRetries:   maxRetries,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", cfg.Endpoint, err)
	}
	c := &Client{mc: mc, bucket: bucket, endpoint: cfg.Endpoint, cfg: cfg}
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	ok, err := mc.BucketExists(pctx, bucket)
	if err != nil {
		return nil, c.wrap(pctx, "open bucket", bucket, err)
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s at %s", ErrNoBucket, bucket, c.endpoint)
	}
	return c, nil
}

// Bucket returns the bucket's name.
func (c *Client) Bucket() string { return c.bucket }

// wrap names what failed and classifies err: fs.ErrNotExist for a missing
// key, ErrNoBucket, ErrAuth, ErrUnreachable, or err as it is.
func (c *Client) wrap(ctx context.Context, op, key string, err error) error {
	if err == nil {
		return nil
	}
	if kind := classify(ctx, err); kind != nil {
		detail := err.Error()
		if errors.Is(kind, ErrAuth) && !c.cfg.HaveCreds {
			detail = "no credentials found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials): " + detail
		}
		if errors.Is(kind, ErrUnreachable) {
			return fmt.Errorf("%s %s: %w: %s: %s", op, key, kind, c.endpoint, detail)
		}
		return fmt.Errorf("%s %s: %w: %s", op, key, kind, detail)
	}
	return fmt.Errorf("%s %s: %w", op, key, err)
}

// authCodes are the S3 error codes of refused credentials.
var authCodes = map[string]bool{
	"InvalidAccessKeyId": true, "SignatureDoesNotMatch": true, "AccessDenied": true,
	"InvalidToken": true, "ExpiredToken": true, "InvalidSecurity": true,
	"AuthorizationHeaderMalformed": true, "MissingSecurityHeader": true,
}

func classify(ctx context.Context, err error) error {
	resp := minio.ToErrorResponse(err)
	switch {
	case resp.Code == "NoSuchKey" || resp.Code == "NotFound" && resp.Key != "":
		return fs.ErrNotExist
	case resp.Code == "NoSuchBucket":
		return ErrNoBucket
	case authCodes[resp.Code] || resp.StatusCode == http.StatusForbidden:
		return ErrAuth
	}
	var ne net.Error
	var oe *net.OpError
	var de *net.DNSError
	switch {
	case errors.As(err, &oe), errors.As(err, &de), errors.As(err, &ne) && ne.Timeout():
		return ErrUnreachable
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		return ErrUnreachable
	case strings.Contains(err.Error(), "connection refused"), strings.Contains(err.Error(), "no such host"):
		return ErrUnreachable
	}
	return nil
}

// Get returns the whole object key, at most limit bytes of it (limit+1
// when it is larger, for the caller to refuse); fs.ErrNotExist when there
// is none.
func (c *Client) Get(ctx context.Context, key string, limit int64) ([]byte, error) {
	obj, err := c.mc.GetObject(ctx, c.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, c.wrap(ctx, "get", key, err)
	}
	defer obj.Close()
	b, err := io.ReadAll(io.LimitReader(obj, limit+1))
	if err != nil {
		return nil, c.wrap(ctx, "get", key, err)
	}
	return b, nil
}

// Put writes the object key: S3 makes it visible whole or not at all.
func (c *Client) Put(ctx context.Context, key string, data []byte) error {
	_, err := c.mc.PutObject(ctx, c.bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{
		ContentType: "application/octet-stream", DisableMultipart: true,
	})
	return c.wrap(ctx, "put", key, err)
}

// Stat returns the size of key, or fs.ErrNotExist.
func (c *Client) Stat(ctx context.Context, key string) (int64, error) {
	info, err := c.mc.StatObject(ctx, c.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		if minio.ToErrorResponse(err).StatusCode == http.StatusNotFound {
			return 0, fmt.Errorf("stat %s: %w", key, fs.ErrNotExist)
		}
		return 0, c.wrap(ctx, "stat", key, err)
	}
	return info.Size, nil
}

// Object is one entry of List.
type Object struct {
	Key      string
	Size     int64
	Modified time.Time
}

// List calls fn for every object whose key starts with prefix (all levels
// below it when recursive, else only the next one), in key order.
func (c *Client) List(ctx context.Context, prefix string, recursive bool, fn func(Object) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for o := range c.mc.ListObjects(ctx, c.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: recursive}) {
		if o.Err != nil {
			return c.wrap(ctx, "list", prefix, o.Err)
		}
		if strings.HasSuffix(o.Key, "/") {
			continue // a "directory"
		}
		if err := fn(Object{Key: o.Key, Size: o.Size, Modified: o.LastModified}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// Remove deletes key; a missing key is not an error.
func (c *Client) Remove(ctx context.Context, key string) error {
	err := c.mc.RemoveObject(ctx, c.bucket, key, minio.RemoveObjectOptions{})
	if err != nil && errors.Is(classify(ctx, err), fs.ErrNotExist) {
		return nil
	}
	return c.wrap(ctx, "remove", key, err)
}
