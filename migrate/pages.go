package migrate

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// pageMux carries the page-server conversations of a lazy migration over
// the frame connection, one channel per container: at the sender, channel
// i is the socket of the `criu dump --lazy-pages` of manifest container i;
// at the receiver, the socket of that container's `criu lazy-pages`.
//
// A PAGES frame holds a 2-byte big-endian channel number, then the bytes
// that side's CRIU wrote. A PAGES frame with no bytes after the channel
// says that side's CRIU closed its end: the other side shuts down the
// writing half of its socket, so its CRIU reads the end of the stream.
type pageMux struct {
	fc *frameConn

	mu    sync.Mutex
	chans map[uint16]*os.File
	wg    sync.WaitGroup

	in, out atomic.Int64 // page bytes received and sent
}

const pagesHeader = 2

func newPageMux(fc *frameConn) *pageMux {
	return &pageMux{fc: fc, chans: make(map[uint16]*os.File)}
}

// attach starts carrying conn as channel ch: what CRIU writes to it goes
// out in PAGES frames, until it closes its end or conn is closed.
func (m *pageMux) attach(ch uint16, conn *os.File) {
	m.mu.Lock()
	m.chans[ch] = conn
	m.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		buf := make([]byte, maxData)
		binary.BigEndian.PutUint16(buf, ch)
		for {
			n, err := conn.Read(buf[pagesHeader:])
			if n > 0 {
				if m.fc.send(msgPages, buf[:pagesHeader+n]) != nil {
					return
				}
				m.out.Add(int64(n))
			}
			if errors.Is(err, io.EOF) {
				m.fc.send(msgPages, buf[:pagesHeader])
				return
			}
			if err != nil {
				return
			}
		}
	}()
}

// deliver hands the bytes of a PAGES frame to its channel's CRIU. A CRIU
// that is gone loses them: its side of the migration fails on its own.
func (m *pageMux) deliver(p []byte) error {
	if len(p) < pagesHeader {
		return protocolErrorf("PAGES frame of %d bytes", len(p))
	}
	ch := binary.BigEndian.Uint16(p)
	m.mu.Lock()
	conn := m.chans[ch]
	m.mu.Unlock()
	if conn == nil {
		return protocolErrorf("PAGES frame for unknown channel %d", ch)
	}
	data := p[pagesHeader:]
	if len(data) == 0 {
		if rc, err := conn.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { syscall.Shutdown(int(fd), syscall.SHUT_WR) })
		}
		return nil
	}
	if _, err := conn.Write(data); err == nil {
		m.in.Add(int64(len(data)))
	}
	return nil
}

// close closes every channel's socket and waits until nothing more is
// sent.
func (m *pageMux) close() {
	m.mu.Lock()
	for _, c := range m.chans {
		c.Close()
	}
	m.mu.Unlock()
	m.wg.Wait()
}
