// Package objstore owns cr's access to S3-compatible object storage: where
// an s3://BUCKET/KEY points, the endpoint, region and credentials from the
// environment and ~/.aws (never from a flag), one client with retries and
// bounded timeouts, errors a user can tell apart (unreachable endpoint,
// refused credentials, missing bucket), and streams of whole objects: a
// Writer whose multipart upload is completed only on Commit and aborted
// otherwise, and a Reader.
//
// The snapshot store (images/store) keeps its objects through it; cr
// checkpoint -o s3://... and cr restore s3://... stream images through it.
package objstore

import (
	"errors"
	"fmt"
	"strings"
)

// Errors callers branch on (cmd maps each to its exit status); they are
// returned wrapped, with the detail.
var (
	// ErrUnreachable: the endpoint did not answer (refused, timed out, no
	// such host).
	ErrUnreachable = errors.New("object storage unreachable")
	// ErrAuth: the endpoint refused the credentials (unknown key, wrong
	// secret, no credentials at all, access denied).
	ErrAuth = errors.New("object storage refused the credentials")
	// ErrNoBucket: the bucket does not exist.
	ErrNoBucket = errors.New("no such bucket")
	// ErrBadURL: not a valid s3://BUCKET/KEY.
	ErrBadURL = errors.New("bad s3 url")
)

// Scheme starts every object storage location.
const Scheme = "s3://"

// IsURL reports whether s names object storage (s3://...) rather than a
// local path.
func IsURL(s string) bool { return strings.HasPrefix(s, Scheme) }

// URL is a parsed s3://BUCKET/KEY.
type URL struct {
	Bucket string
	Key    string // no leading slash; may be "" (the whole bucket) or end in "/"
}

func (u URL) String() string {
	if u.Key == "" {
		return Scheme + u.Bucket
	}
	return Scheme + u.Bucket + "/" + u.Key
}

// Parse parses s3://BUCKET[/KEY].
func Parse(s string) (URL, error) {
	rest, ok := strings.CutPrefix(s, Scheme)
	if !ok {
		return URL{}, fmt.Errorf("%w: %q does not start with %s", ErrBadURL, s, Scheme)
	}
	bucket, key, _ := strings.Cut(rest, "/")
	if !validBucket(bucket) {
		return URL{}, fmt.Errorf("%w: %q: bucket name %q is not 3 to 63 lowercase letters, digits, dots and hyphens", ErrBadURL, s, bucket)
	}
	for _, part := range strings.Split(strings.TrimSuffix(key, "/"), "/") {
		if key != "" && (part == "" || part == "." || part == "..") {
			return URL{}, fmt.Errorf("%w: %q: empty, . or .. in the key", ErrBadURL, s)
		}
	}
	return URL{Bucket: bucket, Key: key}, nil
}

func validBucket(b string) bool {
	if len(b) < 3 || len(b) > 63 {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-') {
			return false
		}
	}
	return b[0] != '.' && b[0] != '-' && b[len(b)-1] != '.' && b[len(b)-1] != '-'
}
