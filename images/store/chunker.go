package store

// Content-defined chunking parameters. Cut points depend only on the bytes
// around them, so an insertion or a change shifts or replaces the chunks
// near it and leaves the others (and their hashes) as they were.
const (
	MinChunk = 16 << 10  // no cut before this many bytes
	AvgChunk = 64 << 10  // the normalization point of the chunker
	MaxChunk = 256 << 10 // always cut here
)

// FastCDC normalized chunking (Xia et al., USENIX ATC 2016): a gear hash
// h = h<<1 + gear[b] over the bytes after MinChunk; a cut follows the first
// byte where h&maskS == 0 before AvgChunk and h&maskL == 0 after it. The
// masks take the hash's high bits, which depend on the last 64 bytes. With
// these masks the mean chunk on random data is about 63 KiB.
const (
	maskS = uint64(1<<17-1) << (64 - 17) // 17 bits: rarely cut before AvgChunk
	maskL = uint64(1<<13-1) << (64 - 13) // 13 bits: soon cut after it
)

// gearSeed seeds the splitmix64 sequence that fills gear. Changing it, or
// the parameters above, changes every cut point: new snapshots would still
// be readable but would stop deduplicating against old ones.
const gearSeed = 0x6372_2d73_746f_7265 // "cr-store"

var gear = func() (t [256]uint64) {
	x := uint64(gearSeed)
	for i := range t {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		t[i] = z ^ (z >> 31)
	}
	return t
}()

// cutPoint returns the length of the chunk that starts data. data holds
// everything up to MaxChunk bytes ahead, or the rest of the input: a file
// is cut by cutting its content from the start, chunk after chunk
// (FileWriter does so as the content arrives).
func cutPoint(data []byte) int {
	n := len(data)
	if n <= MinChunk {
		return n
	}
	if n > MaxChunk {
		n = MaxChunk
	}
	normal := min(AvgChunk, n)
	var h uint64
	i := MinChunk
	for ; i < normal; i++ {
		h = h<<1 + gear[data[i]]
		if h&maskS == 0 {
			return i + 1
		}
	}
	for ; i < n; i++ {
		h = h<<1 + gear[data[i]]
		if h&maskL == 0 {
			return i + 1
		}
	}
	return n
}
