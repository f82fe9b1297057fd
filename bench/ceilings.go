package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// Ceilings are what this machine can do, measured in the same run. MB is
// 10^6 bytes, as in cr's own reports.
type Ceilings struct {
	TmpfsWriteMBps  float64 `json:"tmpfs_write_mb_per_s"`
	TCPLoopbackMBps float64 `json:"tcp_loopback_mb_per_s"`
	TCPVethMBps     float64 `json:"tcp_veth_mb_per_s"`
	// Not ceilings of the issue, but what cr's stream also pays:
	TLSVethMBps float64 `json:"tls_veth_mb_per_s"`        // TLS 1.3 over the same veth
	SHA256MBps  float64 `json:"sha256_one_core_mb_per_s"` // cr hashes every file it writes
	// FreshMemMBps is the first touch of freshMemProbe bytes of new
	// anonymous memory: what every dump, staging area and restored job
	// pays for the memory it fills. On a VM that hands freed memory back
	// to its host, this is far below memory bandwidth.
	FreshMemMBps float64 `json:"fresh_memory_4g_mb_per_s"`
}

// ZstdResult is zstd on a workload's own memory (CRIU's page images):
// compression as cr writes images (SpeedFastest, every core), decompression
// as cr reads them (one goroutine).
type ZstdResult struct {
	InputBytes     int64   `json:"input_bytes"`
	OutputBytes    int64   `json:"output_bytes"`
	Ratio          float64 `json:"ratio"`
	CompressMBps   float64 `json:"compress_mb_per_s"`
	DecompressMBps float64 `json:"decompress_mb_per_s"`
	Cores          int     `json:"cores"`
	// S2 (klauspost/compress/s2, default level, every core) on the same
	// pages, for comparison: a faster, lighter codec.
	S2CompressMBps float64 `json:"s2_compress_mb_per_s"`
	S2Ratio        float64 `json:"s2_ratio"`
}

const (
	tmpfsProbe = 1 << 30 // bytes written to tmpfs, per try
	tcpProbe   = 1 << 30 // bytes sent over TCP, per try
	shaProbe   = 256 << 20
	// freshMemProbe is as big as the largest workload.
	freshMemProbe = 4 << 30
	tries         = 2 // the best of these is the ceiling
)

// measureCeilings measures everything but zstd, which needs the workloads.
func measureCeilings(ctx context.Context, e *env) (Ceilings, error) {
	var c Ceilings
	buf := make([]byte, 1<<20)
	if _, err := rand.Read(buf); err != nil {
		return c, err
	}
	var err error
	best := func(f func() (float64, error)) (float64, error) {
		var b float64
		for range tries {
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			v, err := f()
			if err != nil {
				return 0, err
			}
			b = max(b, v)
		}
		return b, nil
	}
	if c.TmpfsWriteMBps, err = best(func() (float64, error) { return tmpfsWrite(e.dir, buf) }); err != nil {
		return c, fmt.Errorf("tmpfs: %w", err)
	}
	logf("  tmpfs write: %.0f MB/s", c.TmpfsWriteMBps)
	if c.TCPLoopbackMBps, err = best(func() (float64, error) { return tcpThroughput("", "", "127.0.0.1", buf, nil) }); err != nil {
		return c, fmt.Errorf("TCP over loopback: %w", err)
	}
	logf("  TCP loopback: %.0f MB/s", c.TCPLoopbackMBps)
	a, b := netnsPath(e.nsA), netnsPath(e.nsB)
	if c.TCPVethMBps, err = best(func() (float64, error) { return tcpThroughput(b, a, addrB, buf, nil) }); err != nil {
		return c, fmt.Errorf("TCP over the veth: %w", err)
	}
	logf("  TCP over the veth: %.0f MB/s", c.TCPVethMBps)
	cfg, err := selfSignedTLS()
	if err != nil {
		return c, err
	}
	if c.TLSVethMBps, err = best(func() (float64, error) { return tcpThroughput(b, a, addrB, buf, cfg) }); err != nil {
		return c, fmt.Errorf("TLS over the veth: %w", err)
	}
	logf("  TLS 1.3 over the veth: %.0f MB/s", c.TLSVethMBps)
	c.SHA256MBps = sha256Speed(buf)
	logf("  sha256, one core: %.0f MB/s", c.SHA256MBps)
	if c.FreshMemMBps, err = freshMemory(freshMemProbe); err != nil {
		return c, fmt.Errorf("fresh memory: %w", err)
	}
	logf("  first touch of 4 GiB of new memory: %.0f MB/s", c.FreshMemMBps)
	return c, nil
}

// freshMemory maps n bytes of anonymous memory, writes one byte in every
// page (the kernel zeroes and maps each, and a VM may have to get it from
// its host), and unmaps it.
func freshMemory(n int) (float64, error) {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(b)
	page := os.Getpagesize()
	start := time.Now()
	for i := 0; i < n; i += page {
		b[i] = 1
	}
	return mbps(int64(n), time.Since(start)), nil
}

func mbps(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / 1e6 / d.Seconds()
}

// tmpfsWrite writes tmpfsProbe bytes to a new file in dir, 1 MiB at a
// time, no fsync (tmpfs has nothing to sync), and removes it.
func tmpfsWrite(dir string, buf []byte) (float64, error) {
	p := filepath.Join(dir, "tmpfs-probe")
	defer os.Remove(p)
	f, err := os.Create(p)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	for n := 0; n < tmpfsProbe; n += len(buf) {
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return 0, err
		}
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	return mbps(tmpfsProbe, time.Since(start)), nil
}

// tcpThroughput sends tcpProbe bytes from a socket made in network
// namespace dialNS to a listener made in listenNS on addr ("" = the
// current namespace), over TLS when cfg is set, and times it from the
// first byte to the receiver's acknowledgement of the last.
func tcpThroughput(listenNS, dialNS, addr string, buf []byte, cfg *tls.Config) (float64, error) {
	ln, err := listenIn(listenNS, addr)
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	srvErr := acceptOne(ln, func(c net.Conn) error {
		if cfg != nil {
			c = tls.Server(c, cfg)
		}
		if _, err := io.CopyN(io.Discard, c, tcpProbe); err != nil {
			return err
		}
		_, err := c.Write([]byte{1})
		return err
	})
	var c net.Conn
	err = maybeNetns(dialNS, func() (err error) {
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	if cfg != nil {
		tc := tls.Client(c, &tls.Config{RootCAs: cfg.RootCAs, ServerName: "bench", MinVersion: tls.VersionTLS13})
		if err := tc.Handshake(); err != nil {
			return 0, err
		}
		c = tc
	}
	start := time.Now()
	for n := 0; n < tcpProbe; n += len(buf) {
		if _, err := c.Write(buf); err != nil {
			return 0, err
		}
	}
	ack := make([]byte, 1)
	if _, err := io.ReadFull(c, ack); err != nil {
		return 0, fmt.Errorf("read acknowledgement: %w", err)
	}
	d := time.Since(start)
	if err := <-srvErr; err != nil {
		return 0, err
	}
	return mbps(tcpProbe, d), nil
}

// sendFile sends the file src over TCP from the calling thread's network
// namespace to a listener on addr in the namespace listenNS, which writes
// it to dst, and returns the time until the receiver had it all (its
// acknowledgement).
func sendFile(listenNS, addr, src, dst string) (time.Duration, error) {
	ln, err := listenIn(listenNS, addr)
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return 0, err
	}
	srvErr := acceptOne(ln, func(c net.Conn) error {
		out, err := os.Create(dst)
		if err != nil {
			return err
		}
		_, err = io.CopyN(out, c, fi.Size())
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			_, err = c.Write([]byte{1})
		}
		return err
	})
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	start := time.Now()
	if _, err := io.Copy(c, in); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		return 0, fmt.Errorf("read acknowledgement: %w", err)
	}
	d := time.Since(start)
	if err := <-srvErr; err != nil {
		return 0, err
	}
	return d, nil
}

// listenIn listens on a free TCP port of addr in the network namespace
// ns ("" = the current one), the receiving end of tcpThroughput and
// sendFile.
func listenIn(ns, addr string) (net.Listener, error) {
	var ln net.Listener
	err := maybeNetns(ns, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(addr, "0"))
		return err
	})
	return ln, err
}

// acceptOne accepts one connection on ln, on a goroutine of its own, and
// hands it to receive (which reads the probe and acknowledges it), then
// closes it; the channel has the first error, or nil. Closing ln ends a
// wait for a connection that never comes.
func acceptOne(ln net.Listener, receive func(c net.Conn) error) <-chan error {
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		srvErr <- receive(c)
	}()
	return srvErr
}

func maybeNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	return inNetns(path, fn)
}

// selfSignedTLS makes a server configuration with a fresh ECDSA P-256
// certificate (as cr certs makes) and a pool that trusts it.
func selfSignedTLS() (*tls.Config, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"}, DNSNames: []string{"bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("make a certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}},
		RootCAs:      pool, MinVersion: tls.VersionTLS13,
	}, nil
}

// sha256Speed hashes shaProbe bytes on one core.
func sha256Speed(buf []byte) float64 {
	h := sha256.New()
	start := time.Now()
	for n := 0; n < shaProbe; n += len(buf) {
		h.Write(buf)
	}
	h.Sum(nil)
	return mbps(shaProbe, time.Since(start))
}

// zstdSample bounds the data decompressed: a sample of the pages, 1 MiB
// stripes spread evenly over them.
const zstdSample = 256 << 20

// measureZstd compresses the page images of a CRIU images directory with
// cr's encoder settings into a counting sink (reading the pages from tmpfs
// is included, as it is for cr), then decompresses an even sample of them
// with cr's decoder settings. Nothing large is kept in memory: a fresh
// buffer would time this VM's first touch of memory, not zstd.
func measureZstd(dir string) (*ZstdResult, error) {
	files, err := filepath.Glob(filepath.Join(dir, "pages-*.img"))
	if err != nil || len(files) == 0 {
		return nil, errors.New("no page images")
	}
	sort.Strings(files)
	n := runtime.NumCPU()
	newEnc := func(w io.Writer) (*zstd.Encoder, error) {
		return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(n),
			zstd.WithConcurrentBlocks(n > 1), zstd.WithEncoderCRC(true))
	}
	out := &countWriter{}
	enc, err := newEnc(out)
	if err != nil {
		return nil, err
	}
	r := &ZstdResult{Cores: n}
	start := time.Now()
	for _, p := range files {
		m, err := copyFile(enc, p)
		if err != nil {
			enc.Close()
			return nil, err
		}
		r.InputBytes += m
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	r.CompressMBps = mbps(r.InputBytes, time.Since(start))
	r.OutputBytes = out.n
	if r.OutputBytes > 0 {
		r.Ratio = float64(r.InputBytes) / float64(r.OutputBytes)
	}

	// S2, for comparison.
	s2out := &countWriter{}
	s2w := s2.NewWriter(s2out, s2.WriterConcurrency(n))
	start = time.Now()
	for _, p := range files {
		if _, err := copyFile(s2w, p); err != nil {
			s2w.Close()
			return nil, err
		}
	}
	if err := s2w.Close(); err != nil {
		return nil, err
	}
	r.S2CompressMBps = mbps(r.InputBytes, time.Since(start))
	if s2out.n > 0 {
		r.S2Ratio = float64(r.InputBytes) / float64(s2out.n)
	}

	// Decompression, on a sample compressed beforehand.
	defer func() {
		runtime.GC()
		debug.FreeOSMemory()
	}()
	sample := &chunks{}
	enc, err = newEnc(sample)
	if err != nil {
		return nil, err
	}
	every := max(1, (r.InputBytes+zstdSample-1)/zstdSample) // take one MiB in every this many
	var sampled int64
	for _, p := range files {
		m, err := copyStripes(enc, p, 1<<20, every<<20)
		if err != nil {
			enc.Close()
			return nil, err
		}
		sampled += m
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(sample.reader(), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	start = time.Now()
	m, err := io.Copy(io.Discard, dec)
	if err != nil {
		return nil, fmt.Errorf("decompress: %w", err)
	}
	if m != sampled {
		return nil, fmt.Errorf("decompressed %d bytes, compressed %d", m, sampled)
	}
	r.DecompressMBps = mbps(m, time.Since(start))
	return r, nil
}

func copyFile(w io.Writer, path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return io.Copy(w, f)
}

// copyStripes copies the first size bytes of every period bytes of a file.
func copyStripes(w io.Writer, path string, size, period int64) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	var n int64
	for off := int64(0); off < fi.Size(); off += period {
		m, err := io.Copy(w, io.NewSectionReader(f, off, min(size, fi.Size()-off)))
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// countWriter counts and discards.
type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

// chunks is an in-memory sink that never copies what it holds (a growing
// slice would copy gigabytes and double the memory).
type chunks struct {
	bufs [][]byte
	n    int64
}

const chunkSize = 4 << 20

func (c *chunks) Write(p []byte) (int, error) {
	w := len(p)
	for len(p) > 0 {
		if len(c.bufs) == 0 || len(c.bufs[len(c.bufs)-1]) == chunkSize {
			c.bufs = append(c.bufs, make([]byte, 0, chunkSize))
		}
		last := &c.bufs[len(c.bufs)-1]
		k := min(len(p), chunkSize-len(*last))
		*last = append(*last, p[:k]...)
		p = p[k:]
	}
	c.n += int64(w)
	return w, nil
}

func (c *chunks) reader() io.Reader {
	rs := make([]io.Reader, len(c.bufs))
	for i, b := range c.bufs {
		rs[i] = bytes.NewReader(b)
	}
	return io.MultiReader(rs...)
}
