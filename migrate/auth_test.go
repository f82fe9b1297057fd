package migrate

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAuthValidate(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t)
	write := func(name, content string, mode os.FileMode) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(path, mode)
		return path
	}
	good := write("good", "  0123456789abcdef\n", 0o600) // 16 bytes once trimmed
	short := write("short", "0123456789abcde\n", 0o600)
	open := write("open", "0123456789abcdef0123", 0o644)
	notPEM := write("ca-garbage", "not a certificate", 0o644)

	for _, tc := range []struct {
		name string
		auth Auth
		want string // "" for valid
	}{
		{"token", Auth{TokenFile: good}, ""},
		{"mtls", p.client, ""},
		{"mtls with server name", Auth{CertFile: p.client.CertFile, KeyFile: p.client.KeyFile, CAFile: p.client.CAFile, ServerName: "x"}, ""},
		{"nothing", Auth{}, "no authentication configured"},
		{"short token", Auth{TokenFile: short}, "need at least 16"},
		{"readable token", Auth{TokenFile: open}, "chmod 600"},
		{"missing token", Auth{TokenFile: filepath.Join(dir, "nope")}, "no such file"},
		{"both modes", Auth{TokenFile: good, CertFile: p.client.CertFile, KeyFile: p.client.KeyFile, CAFile: p.client.CAFile}, "not both"},
		{"no CA", Auth{CertFile: p.client.CertFile, KeyFile: p.client.KeyFile}, "missing [CA]"},
		{"only CA", Auth{CAFile: p.client.CAFile}, "missing [certificate key]"},
		{"CA not PEM", Auth{CertFile: p.client.CertFile, KeyFile: p.client.KeyFile, CAFile: notPEM}, "no certificate"},
		{"key of another cert", Auth{CertFile: p.client.CertFile, KeyFile: p.server.KeyFile, CAFile: p.client.CAFile}, "load certificate"},
	} {
		err := tc.auth.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
	if err := (Auth{}).Validate(); !errors.Is(err, ErrNoAuth) {
		t.Errorf("empty Auth: %v, want ErrNoAuth", err)
	}
}

func TestWriteToken(t *testing.T) {
	p := filepath.Join(t.TempDir(), "token")
	if err := WriteToken(p); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	tok, err := readToken(p)
	if err != nil || len(tok) != 64 {
		t.Errorf("token %q, %v", tok, err)
	}
	if err := WriteToken(p); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second WriteToken: %v, want fs.ErrExist", err)
	}
}

// TestTokenMAC: the proofs depend on every input, and the two directions
// differ.
func TestTokenMAC(t *testing.T) {
	tok, ekm, nc, ns := []byte("0123456789abcdef"), make([]byte, 32), make([]byte, 32), make([]byte, 32)
	base := tokenMAC(tok, macClient, ekm, nc, ns)
	if len(base) != 32 {
		t.Fatalf("MAC of %d bytes", len(base))
	}
	flip := func(b []byte) []byte { c := append([]byte(nil), b...); c[0] ^= 1; return c }
	for name, mac := range map[string][]byte{
		"server label": tokenMAC(tok, macServer, ekm, nc, ns),
		"token":        tokenMAC(flip(tok), macClient, ekm, nc, ns),
		"exporter":     tokenMAC(tok, macClient, flip(ekm), nc, ns),
		"client nonce": tokenMAC(tok, macClient, ekm, flip(nc), ns),
		"server nonce": tokenMAC(tok, macClient, ekm, nc, flip(ns)),
	} {
		if string(mac) == string(base) {
			t.Errorf("MAC does not depend on the %s", name)
		}
	}
}

func TestGenerateCerts(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	if err := GenerateCA(ca); err != nil {
		t.Fatal(err)
	}
	if err := GenerateCA(ca); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second GenerateCA: %v, want fs.ErrExist", err)
	}
	if err := GenerateCert(ca, "host1", dir, true, []string{"192.0.2.1", "host1.example"}); err != nil {
		t.Fatal(err)
	}
	if err := GenerateCert(ca, "laptop", dir, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := GenerateCert(ca, "host1", dir, true, []string{"x"}); !errors.Is(err, fs.ErrExist) {
		t.Errorf("replacing host1: %v, want fs.ErrExist", err)
	}
	if err := GenerateCert(ca, "nohost", dir, true, nil); err == nil || !strings.Contains(err.Error(), "at least one host") {
		t.Errorf("server without hosts: %v", err)
	}
	for _, bad := range []string{"../x", "a/b", ".hidden", "", strings.Repeat("a", 65)} {
		if err := GenerateCert(ca, bad, dir, false, nil); err == nil || !strings.Contains(err.Error(), "invalid name") {
			t.Errorf("name %q: %v", bad, err)
		}
	}
	for _, k := range []string{filepath.Join(ca, CAKeyFile), filepath.Join(dir, "host1.key"), filepath.Join(dir, "laptop.key")} {
		fi, err := os.Stat(k)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v", k, fi.Mode())
		}
		key, err := tls.LoadX509KeyPair(strings.TrimSuffix(k, ".key")+".crt", k)
		if err != nil {
			t.Fatal(err)
		}
		if pk, ok := key.PrivateKey.(*ecdsa.PrivateKey); !ok || pk.Curve != elliptic.P256() {
			t.Errorf("%s: not an ECDSA P-256 key", k)
		}
	}

	roots := x509.NewCertPool()
	caCert := parseCert(t, filepath.Join(ca, CACertFile))
	if !caCert.IsCA {
		t.Error("CA certificate is not a CA")
	}
	roots.AddCert(caCert)
	srv := parseCert(t, filepath.Join(dir, "host1.crt"))
	if _, err := srv.Verify(x509.VerifyOptions{Roots: roots, DNSName: "host1.example"}); err != nil {
		t.Errorf("server certificate for its DNS name: %v", err)
	}
	if _, err := srv.Verify(x509.VerifyOptions{Roots: roots, DNSName: "192.0.2.1"}); err != nil {
		t.Errorf("server certificate for its IP: %v", err)
	}
	if _, err := srv.Verify(x509.VerifyOptions{Roots: roots, DNSName: "other.example"}); err == nil {
		t.Error("server certificate valid for another name")
	}
	cli := parseCert(t, filepath.Join(dir, "laptop.crt"))
	if _, err := cli.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := cli.Verify(x509.VerifyOptions{Roots: roots}); err == nil {
		t.Error("client certificate valid for server authentication")
	}
	if d := time.Until(cli.NotAfter); d < 365*24*time.Hour || d > time.Until(caCert.NotAfter) {
		t.Errorf("client certificate expires in %s", d)
	}
}

func parseCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
