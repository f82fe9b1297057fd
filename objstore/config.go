package objstore

import (
	"bufio"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Config is where and as whom cr talks to object storage.
type Config struct {
	Endpoint  string // host[:port]
	Secure    bool   // https
	Region    string
	PathStyle bool // bucket in the path, not the host name (every endpoint but AWS's)
	Profile   string
	creds     *credentials.Credentials
	// HaveCreds says whether any credentials were found (for the error
	// message when the endpoint refuses anonymous requests).
	HaveCreds bool
}

// LoadConfig reads the configuration as the AWS tools do, without flags
// (a secret in a flag would show in ps):
//
//   - endpoint: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, then endpoint_url in
//     the profile of ~/.aws/config; AWS's own (s3.amazonaws.com) without;
//   - region: AWS_REGION, AWS_DEFAULT_REGION, then region in the profile;
//     us-east-1 without;
//   - credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and
//     AWS_SESSION_TOKEN), then the profile in ~/.aws/credentials;
//   - the profile: AWS_PROFILE, else "default"; the files:
//     AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/config
//     and ~/.aws/credentials;
//   - addressing: path style for any endpoint but AWS's, or as
//     addressing_style says in the profile's s3 section.
func LoadConfig() (Config, error) {
	c := Config{Profile: os.Getenv("AWS_PROFILE")}
	if c.Profile == "" {
		c.Profile = "default"
	}
	home, _ := os.UserHomeDir()
	cfgFile := os.Getenv("AWS_CONFIG_FILE")
	if cfgFile == "" && home != "" {
		cfgFile = filepath.Join(home, ".aws", "config")
	}
	credFile := os.Getenv("AWS_SHARED_CREDENTIALS_FILE")
	if credFile == "" && home != "" {
		credFile = filepath.Join(home, ".aws", "credentials")
	}
	section := "profile " + c.Profile
	if c.Profile == "default" {
		section = "default"
	}
	prof, err := readINISection(cfgFile, section)
	if err != nil {
		return c, err
	}

	endpoint := firstNonEmpty(os.Getenv("AWS_ENDPOINT_URL_S3"), os.Getenv("AWS_ENDPOINT_URL"), prof["s3.endpoint_url"], prof["endpoint_url"])
	c.Region = firstNonEmpty(os.Getenv("AWS_REGION"), os.Getenv("AWS_DEFAULT_REGION"), prof["region"], "us-east-1")
	if endpoint == "" {
		c.Endpoint, c.Secure = "s3."+c.Region+".amazonaws.com", true
		if c.Region == "us-east-1" {
			c.Endpoint = "s3.amazonaws.com"
		}
	} else {
		u, err := url.Parse(endpoint)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || (u.Path != "" && u.Path != "/") {
			return c, fmt.Errorf("endpoint %q (AWS_ENDPOINT_URL or endpoint_url): want http://HOST[:PORT] or https://HOST[:PORT]", endpoint)
		}
		c.Endpoint, c.Secure, c.PathStyle = u.Host, u.Scheme == "https", true
	}
	switch prof["s3.addressing_style"] {
	case "path":
		c.PathStyle = true
	case "virtual":
		c.PathStyle = false
	}

	c.creds = credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{Filename: credFile, Profile: c.Profile},
	})
	if v, err := c.creds.GetWithContext(nil); err == nil && v.AccessKeyID != "" {
		c.HaveCreds = true
	}
	return c, nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// readINISection returns the keys of one [section] of an AWS config file;
// keys of a nested block ("s3 =" followed by indented lines) are prefixed
// with its name ("s3.addressing_style"). A missing file is empty.
func readINISection(path, section string) (map[string]string, error) {
	kv := map[string]string{}
	if path == "" {
		return kv, nil
	}
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return kv, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	in, nested := false, ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		raw := sc.Text()
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' && strings.HasSuffix(line, "]") {
			in, nested = strings.TrimSpace(line[1:len(line)-1]) == section, ""
			continue
		}
		if !in {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		indented := raw != "" && (raw[0] == ' ' || raw[0] == '\t')
		switch {
		case indented && nested != "":
			kv[nested+"."+k] = v
		case v == "":
			nested = k
		default:
			nested = ""
			kv[k] = v
		}
	}
	return kv, sc.Err()
}
