package migrate

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"time"
)

// Auth selects how both ends authenticate each other. Exactly one mode must
// be complete:
//
//   - token: TokenFile holds a shared secret of at least 16 bytes (surrounding
//     white space is ignored), the same file on both hosts. The server runs
//     TLS 1.3 with an ephemeral self-signed certificate; each side then
//     proves it knows the token with an HMAC-SHA256 over the TLS channel's
//     exported keying material and fresh nonces. The token never crosses
//     the network.
//   - mutual TLS: CertFile and KeyFile are this side's certificate and key,
//     CAFile the CA that signs the peer's certificates (clients' on the
//     server, the server's on the client). ServerName, on the client,
//     overrides the name checked in the server's certificate (default: the
//     host of the address).
type Auth struct {
	TokenFile string

	CertFile, KeyFile, CAFile string
	ServerName                string
}

// Authentication modes, as named in HELLO.
const (
	modeToken = "token"
	modeMTLS  = "mtls"
)

// Token limits, in bytes, after trimming white space.
const (
	MinTokenLen = 16
	maxTokenLen = 4096
)

// ErrNoAuth is returned by Auth.Validate (and so by Serve and Migrate) when
// no authentication mode is configured.
var ErrNoAuth = errors.New("no authentication configured: give a token file, or a certificate, key and CA")

// Validate checks that exactly one mode is complete and that its files are
// readable and well-formed: a token of at least MinTokenLen bytes in a file
// no other user can access; a certificate that matches its key; a CA file
// that holds at least one certificate.
func (a Auth) Validate() error {
	_, err := a.load()
	return err
}

// credentials are the loaded contents of an Auth.
type credentials struct {
	mode       string
	token      []byte
	cert       tls.Certificate
	ca         *x509.CertPool
	serverName string
}

func (a Auth) load() (*credentials, error) {
	mtls := a.CertFile != "" || a.KeyFile != "" || a.CAFile != ""
	switch {
	case a.TokenFile != "" && mtls:
		return nil, errors.New("give either a token file or certificates, not both")
	case a.TokenFile != "":
		tok, err := readToken(a.TokenFile)
		if err != nil {
			return nil, err
		}
		return &credentials{mode: modeToken, token: tok}, nil
	case mtls:
		var missing []string
		for _, f := range []struct{ name, val string }{{"certificate", a.CertFile}, {"key", a.KeyFile}, {"CA", a.CAFile}} {
			if f.val == "" {
				missing = append(missing, f.name)
			}
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("mutual TLS needs a certificate, a key and a CA file: missing %v", missing)
		}
		if err := checkPrivate(a.KeyFile, 0o007); err != nil {
			return nil, err
		}
		cert, err := tls.LoadX509KeyPair(a.CertFile, a.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load certificate: %w", err)
		}
		pem, err := os.ReadFile(a.CAFile)
		if err != nil {
			return nil, fmt.Errorf("load CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("load CA: no certificate in %s", a.CAFile)
		}
		return &credentials{mode: modeMTLS, cert: cert, ca: pool, serverName: a.ServerName}, nil
	default:
		return nil, ErrNoAuth
	}
}

// checkPrivate refuses a secret file that users outside its owner (mask
// 0o007) or its group too (0o077) may access.
func checkPrivate(path string, mask fs.FileMode) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	if fi.Mode().Perm()&mask != 0 {
		return fmt.Errorf("check %s: mode %#o lets other users read a secret (chmod 600)", path, fi.Mode().Perm())
	}
	return nil
}

func readToken(path string) ([]byte, error) {
	if err := checkPrivate(path, 0o077); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read token: %w", err)
	}
	tok := bytes.TrimSpace(b)
	switch {
	case len(tok) < MinTokenLen:
		return nil, fmt.Errorf("read token: %s holds %d bytes, need at least %d", path, len(tok), MinTokenLen)
	case len(tok) > maxTokenLen:
		return nil, fmt.Errorf("read token: %s holds more than %d bytes", path, maxTokenLen)
	}
	return tok, nil
}

// WriteToken creates path (mode 0600, not replacing an existing file) with a
// new random token: 32 random bytes in hex. Copy the file to the other host
// over a trusted channel.
func WriteToken(path string) error {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Errorf("write token: %w", err)
	}
	if err := writeNew(path, []byte(hex.EncodeToString(b[:])+"\n"), 0o600); err != nil {
		return fmt.Errorf("write token: %w", err)
	}
	return nil
}

// serverTLS returns the server's TLS configuration. In token mode it holds a
// new self-signed certificate: the token, not the certificate, authenticates
// the server.
func (c *credentials) serverTLS() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13}
	switch c.mode {
	case modeToken:
		cert, err := selfSigned()
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
		cfg.ClientAuth = tls.NoClientCert
	case modeMTLS:
		cfg.Certificates = []tls.Certificate{c.cert}
		cfg.ClientCAs = c.ca
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// clientTLS returns the client's TLS configuration for a server at host.
func (c *credentials) clientTLS(host string) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13}
	switch c.mode {
	case modeToken:
		// The server's certificate is ephemeral and proves nothing: the
		// server proves it knows the token with an HMAC bound to this TLS
		// channel (tokenMAC), checked before anything is sent.
		cfg.InsecureSkipVerify = true
	case modeMTLS:
		cfg.Certificates = []tls.Certificate{c.cert}
		cfg.RootCAs = c.ca
		cfg.ServerName = c.serverName
		if cfg.ServerName == "" {
			cfg.ServerName = host
		}
	}
	return cfg
}

// selfSigned makes the token-mode server's throwaway certificate.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "cr serve (ephemeral)"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial: %w", err)
	}
	return serial, nil
}

// Token-mode proof. Both MACs cover the TLS exporter value of this
// connection, so a proof relayed by a man in the middle (who runs two TLS
// sessions, with two different exporter values) does not verify.
const (
	exporterLabel = "EXPORTER-cr-migrate-token-v1"
	nonceLen      = 32
	macClient     = "cr-migrate v1 client proof"
	macServer     = "cr-migrate v1 server proof"
)

// channelBinding returns the TLS exporter value of a completed TLS 1.3
// connection.
func channelBinding(cs tls.ConnectionState) ([]byte, error) {
	if cs.Version != tls.VersionTLS13 {
		return nil, fmt.Errorf("bind channel: TLS version %#x, need TLS 1.3", cs.Version)
	}
	ekm, err := cs.ExportKeyingMaterial(exporterLabel, nil, 32)
	if err != nil {
		return nil, fmt.Errorf("bind channel: %w", err)
	}
	return ekm, nil
}

// tokenMAC is HMAC-SHA256(token, label || 0x00 || ekm || clientNonce ||
// serverNonce).
func tokenMAC(token []byte, label string, ekm, clientNonce, serverNonce []byte) []byte {
	h := hmac.New(sha256.New, token)
	h.Write([]byte(label))
	h.Write([]byte{0})
	h.Write(ekm)
	h.Write(clientNonce)
	h.Write(serverNonce)
	return h.Sum(nil)
}

func newNonce() ([]byte, error) {
	n := make([]byte, nonceLen)
	if _, err := rand.Read(n); err != nil {
		return nil, fmt.Errorf("generate nonce: %w", err)
	}
	return n, nil
}

// splitHost returns the host part of a host:port address.
func splitHost(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}
