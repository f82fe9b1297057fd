package migrate

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// File names in a CA directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// Certificate lifetimes.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	certValidity = 2 * 365 * 24 * time.Hour
)

// certName is what GenerateCert accepts as NAME: it becomes NAME.crt and
// NAME.key.
var certName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+@:-]{0,63}$`)

// GenerateCA creates a certificate authority in dir (created with mode 0700
// if missing): ca.key, an ECDSA P-256 key (mode 0600), and ca.crt, its
// self-signed certificate, valid ten years. It refuses to replace an
// existing ca.key or ca.crt (the error wraps fs.ErrExist).
func GenerateCA(dir string) error {
	if err := generateCA(dir); err != nil {
		return fmt.Errorf("generate CA in %s: %w", dir, err)
	}
	return nil
}

func generateCA(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	keyPath, certPath := filepath.Join(dir, CAKeyFile), filepath.Join(dir, CACertFile)
	if err := refuseExisting(keyPath, certPath); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "cr CA " + host, Organization: []string{"cr"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	return writePair(certPath, der, keyPath, key)
}

// GenerateCert creates NAME.key (ECDSA P-256, mode 0600) and NAME.crt in dir
// (created with mode 0700 if missing), a certificate signed by the CA in
// caDir, valid two years. A server certificate (isServer) is for TLS server
// authentication and names hosts (DNS names or IP addresses, at least one);
// a client certificate is for TLS client authentication, hosts optional.
// NAME is 1 to 64 letters, digits and "_ . + @ : -". Existing files are not
// replaced (the error wraps fs.ErrExist).
func GenerateCert(caDir, name, dir string, isServer bool, hosts []string) error {
	if err := generateCert(caDir, name, dir, isServer, hosts); err != nil {
		return fmt.Errorf("generate certificate %s: %w", name, err)
	}
	return nil
}

func generateCert(caDir, name, dir string, isServer bool, hosts []string) error {
	if !certName.MatchString(name) {
		return fmt.Errorf("invalid name %q", name)
	}
	if isServer && len(hosts) == 0 {
		return errors.New("a server certificate needs at least one host name or address")
	}
	ca, err := tls.LoadX509KeyPair(filepath.Join(caDir, CACertFile), filepath.Join(caDir, CAKeyFile))
	if err != nil {
		return fmt.Errorf("load CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return fmt.Errorf("load CA: %w", err)
	}
	if !caCert.IsCA {
		return fmt.Errorf("load CA: %s is not a CA certificate", filepath.Join(caDir, CACertFile))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	keyPath, certPath := filepath.Join(dir, name+".key"), filepath.Join(dir, name+".crt")
	if err := refuseExisting(keyPath, certPath); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	now := time.Now()
	notAfter := now.Add(certValidity)
	if caCert.NotAfter.Before(notAfter) {
		notAfter = caCert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name, Organization: []string{"cr"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if isServer {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		return err
	}
	return writePair(certPath, der, keyPath, key)
}

func refuseExisting(paths ...string) error {
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s: %w", p, os.ErrExist)
		}
	}
	return nil
}

// writePair writes a key (0600) and its certificate (0644); on failure
// neither is left behind.
func writePair(certPath string, der []byte, keyPath string, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeNew(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	if err := writeNew(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		os.Remove(keyPath)
		return err
	}
	return nil
}

// writeNew creates path with mode perm (exactly, whatever the umask), fails
// if it exists, and removes it again if writing fails.
func writeNew(path string, b []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(b)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return err
	}
	return nil
}
