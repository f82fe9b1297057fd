package images

import (
	"encoding/binary"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// LaneChunk is the input of one compression job: a pages entry is cut
// into pieces of this size, each compressed on its own (a zstd frame, or
// one S2 chunk) on one of several lanes at once, and written in order.
// The zstd frames' window is then at most this size.
const LaneChunk = 1 << 20

// lanes compresses a stream as a sequence of independent pieces of
// LaneChunk bytes on up to n goroutines at once, writes the compressed
// pieces to w in input order, and hashes the input on a goroutine of its
// own, in order, so that the writer's goroutine (CRIU's pipe) only
// copies. Memory is bounded: 2n+2 pieces in flight and one filling (each
// its input and its compressed output, about 2 MiB), their buffers reused
// from a pool shared by every entry.
//
// A piece is a whole zstd frame (content checksum, content size, window
// at most LaneChunk), or for S2 one compressed (or stored) chunk with its
// CRC-32C; an S2 entry begins with the stream identifier. Concatenated,
// the pieces are one valid zstd or S2 stream that any reader decodes
// without knowing how it was cut.
type lanes struct {
	w        io.Writer
	comp     string
	n        int
	h        hash.Hash
	cur      *piece
	inflight []*piece
	prev     chan struct{} // hashed signal of the last piece submitted
	slots    chan struct{} // n: the pieces being compressed at once
	err      error
	started  bool // S2: stream identifier written
}

// piece is one compression job.
type piece struct {
	in, out []byte
	hashN   int           // bytes of in to hash: the tar padding is not content
	done    chan struct{} // compressed
	hashed  chan struct{}
	err     error
}

// piecePool keeps the buffers of retired pieces for the next ones: new
// memory is slow to touch the first time on this kind of VM, and a dump of
// many processes writes one pages entry after another.
var piecePool = struct {
	sync.Mutex
	free []*piece
}{}

// maxPooled bounds what piecePool keeps (2 MiB and a bit per piece): the
// pieces of one entry on two CPUs.
const maxPooled = 8

func getPiece() *piece {
	piecePool.Lock()
	defer piecePool.Unlock()
	if k := len(piecePool.free); k > 0 {
		p := piecePool.free[k-1]
		piecePool.free = piecePool.free[:k-1]
		p.in, p.out, p.err, p.hashN = p.in[:0], p.out[:0], nil, 0
		return p
	}
	return &piece{in: make([]byte, 0, LaneChunk), out: make([]byte, 0, s2.MaxEncodedLen(LaneChunk)+64)}
}

func putPiece(p *piece) {
	piecePool.Lock()
	defer piecePool.Unlock()
	if len(piecePool.free) < maxPooled {
		piecePool.free = append(piecePool.free, p)
	}
}

// zstdLanes is the encoder of every zstd piece: EncodeAll may be called
// from several goroutines at once, and keeps one encoder state per
// concurrent call (runtime.NumCPU of them at most).
var zstdLanes = sync.OnceValues(func() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(runtime.NumCPU()),
		zstd.WithWindowSize(LaneChunk),
		zstd.WithEncoderCRC(true))
})

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// newLanes compresses into w as compression (zstd or s2) on n lanes
// (0: every CPU), hashing the input into h.
func newLanes(w io.Writer, compression string, n int, h hash.Hash) (*lanes, error) {
	switch compression {
	case CompressionZstd:
		if _, err := zstdLanes(); err != nil {
			return nil, fmt.Errorf("start zstd: %w", err)
		}
	case CompressionS2:
	default:
		return nil, fmt.Errorf("unknown compression %q", compression)
	}
	if n <= 0 {
		n = runtime.NumCPU()
	}
	return &lanes{w: w, comp: compression, n: n, h: h, slots: make(chan struct{}, n)}, nil
}

// Write copies p into pieces, handing each full one to a lane.
func (l *lanes) Write(p []byte) (int, error) { return l.write(p, true) }

// writePad writes p, compressed but not hashed.
func (l *lanes) writePad(p []byte) error {
	_, err := l.write(p, false)
	return err
}

func (l *lanes) write(p []byte, hashed bool) (int, error) {
	total := len(p)
	for len(p) > 0 {
		if l.err != nil {
			return total - len(p), l.err
		}
		if l.cur == nil {
			l.cur = getPiece()
		}
		k := copy(l.cur.in[len(l.cur.in):LaneChunk], p)
		l.cur.in = l.cur.in[:len(l.cur.in)+k]
		if hashed {
			l.cur.hashN = len(l.cur.in)
		}
		p = p[k:]
		if len(l.cur.in) == LaneChunk {
			l.submit()
		}
	}
	return total, l.err
}

// ReadFrom reads r straight into the pieces, without a copy between.
func (l *lanes) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		if l.err != nil {
			return total, l.err
		}
		if l.cur == nil {
			l.cur = getPiece()
		}
		n, err := r.Read(l.cur.in[len(l.cur.in):LaneChunk])
		l.cur.in = l.cur.in[:len(l.cur.in)+n]
		l.cur.hashN = len(l.cur.in)
		total += int64(n)
		if len(l.cur.in) == LaneChunk {
			l.submit()
		}
		if err == io.EOF {
			return total, l.err
		}
		if err != nil {
			return total, err
		}
	}
}

// submit starts the current piece's compression and hash, after retiring
// the oldest piece if n are in flight.
func (l *lanes) submit() {
	p := l.cur
	l.cur = nil
	if len(l.inflight) >= l.depth() {
		l.retire()
	}
	p.done, p.hashed = make(chan struct{}), make(chan struct{})
	prev := l.prev
	l.prev = p.hashed
	go func() {
		if prev != nil {
			<-prev
		}
		l.h.Write(p.in[:p.hashN])
		close(p.hashed)
	}()
	go func() {
		l.slots <- struct{}{}
		p.out, p.err = l.compress(p.out[:0], p.in)
		<-l.slots
		close(p.done)
	}()
	l.inflight = append(l.inflight, p)
}

// retire waits for the oldest piece in flight, writes it out and puts
// its buffers back.
func (l *lanes) retire() {
	p := l.inflight[0]
	l.inflight = l.inflight[1:]
	<-p.done
	<-p.hashed
	if l.err == nil {
		l.err = p.err
	}
	if l.err == nil && l.comp == CompressionS2 && !l.started {
		l.started = true
		if _, err := l.w.Write(s2Magic); err != nil {
			l.err = err
		}
	}
	if l.err == nil {
		if _, err := l.w.Write(p.out); err != nil {
			l.err = err
		}
	}
	putPiece(p)
}

// compress appends src compressed as one piece to dst.
func (l *lanes) compress(dst, src []byte) ([]byte, error) {
	if l.comp == CompressionZstd {
		enc, err := zstdLanes()
		if err != nil {
			return dst, err
		}
		return enc.EncodeAll(src, dst), nil
	}
	// An S2 chunk (the framing of klauspost/compress/s2): type, 3 bytes of
	// length, the masked CRC-32C of src, then the block (0x00) or src
	// itself where compressing does not pay (0x01).
	c := crc32.Checksum(src, castagnoli)
	c = (c>>15 | c<<17) + 0xa282ead8
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0)
	block := s2.Encode(dst[8:cap(dst)], src)
	typ := byte(0x00)
	if len(block) >= len(src)-len(src)/32 {
		typ, block = 0x01, append(dst[8:8], src...)
	}
	n := 4 + len(block)
	dst[0], dst[1], dst[2], dst[3] = typ, byte(n), byte(n>>8), byte(n>>16)
	binary.LittleEndian.PutUint32(dst[4:8], c)
	return dst[:8+len(block)], nil
}

// Close compresses what is left and writes every piece out.
func (l *lanes) Close() error {
	if l.cur != nil && len(l.cur.in) > 0 {
		l.submit()
	} else if l.cur != nil {
		putPiece(l.cur)
		l.cur = nil
	}
	for len(l.inflight) > 0 {
		l.retire()
	}
	if l.err == nil && l.comp == CompressionS2 && !l.started {
		// An empty entry is still a stream.
		l.started = true
		_, l.err = l.w.Write(s2Magic)
	}
	return l.err
}

// Abort drops the pieces in flight once their goroutines are done.
func (l *lanes) Abort() {
	if l.cur != nil {
		putPiece(l.cur)
		l.cur = nil
	}
	for _, p := range l.inflight {
		<-p.done
		<-p.hashed
		putPiece(p)
	}
	l.inflight = nil
	if l.err == nil {
		l.err = fmt.Errorf("entry aborted")
	}
}

// depth is how many pieces may be in flight: more than the lanes, so that
// the reader keeps taking CRIU's pipe while the hash, the slowest stage
// on one core, catches up with a burst.
func (l *lanes) depth() int { return 2*l.n + 2 }
