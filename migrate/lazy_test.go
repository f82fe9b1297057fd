package migrate

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakePageServer plays `criu dump --lazy-pages` behind one socket: it
// answers requests of 8 bytes (offset, length) with those bytes of mem,
// until the other side closes.
type fakePageServer struct {
	mem    []byte
	served atomic.Int64
	ended  chan struct{} // closed when it read the end of the stream
}

func newFakePageServer(t *testing.T, size int) (*fakePageServer, *os.File) {
	ps := &fakePageServer{mem: make([]byte, size), ended: make(chan struct{})}
	rand.Read(ps.mem)
	ours, theirs := socketPair()
	go func() {
		defer theirs.Close()
		var req [8]byte
		for {
			if _, err := io.ReadFull(theirs, req[:]); err != nil {
				if err == io.EOF {
					close(ps.ended)
				}
				return
			}
			off, n := binary.BigEndian.Uint32(req[:]), binary.BigEndian.Uint32(req[4:])
			if _, err := theirs.Write(ps.mem[off : off+n]); err != nil {
				return
			}
			ps.served.Add(int64(n))
		}
	}()
	t.Cleanup(func() { ours.Close() })
	return ps, ours
}

// fetch plays `criu lazy-pages`: it asks for mem in chunks through d until
// stop returns true, and returns what it got.
func fetch(d *os.File, size int, stop func(got int) bool) ([]byte, error) {
	var got []byte
	const chunk = 200 << 10
	for len(got) < size && !stop(len(got)) {
		n := min(chunk, size-len(got))
		var req [8]byte
		binary.BigEndian.PutUint32(req[:], uint32(len(got)))
		binary.BigEndian.PutUint32(req[4:], uint32(n))
		if _, err := d.Write(req[:]); err != nil {
			return got, err
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(d, buf); err != nil {
			return got, fmt.Errorf("read pages: %w", err)
		}
		got = append(got, buf...)
	}
	return got, nil
}

func lazyServer(t *testing.T, auth Auth, r *fakeRestorer) *testServer {
	return startServer(t, ServerConfig{Auth: auth, Lazy: func() error { return nil }}, r)
}

// TestLazyMigration: the tree resumes at the receiver (DONE) while its
// memory is still at the sender, which serves it through PAGES until the
// receiver's daemon has it all and closes; only then does Migrate return.
func TestLazyMigration(t *testing.T) {
	auth := tokenAuth(t)
	const size = 3<<20 + 4096
	resumedSeen := make(chan struct{})
	var got []byte
	r := &fakeRestorer{lazy: func(ctx context.Context, job *Job, daemons []*os.File) error {
		// Pages are fetched only once the sender knows the tree runs.
		select {
		case <-resumedSeen:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		var err error
		got, err = fetch(daemons[0], size, func(int) bool { return false })
		if err != nil {
			return err
		}
		daemons[0].Close()
		return nil
	}}
	ts := lazyServer(t, auth, r)
	src := newSource(t)
	ps, link := newFakePageServer(t, size)
	var hooks hookCounts
	mig := src.migration(Request{Root: "/a", Lazy: true}, &hooks)
	mig.Pages = func() map[int]*os.File { return map[int]*os.File{0: link} }
	var servedAtResume int64 = -1
	mig.OnResumed = func(info RestoreInfo) {
		servedAtResume = ps.served.Load()
		if info.Pids["/a"] != 4242 {
			t.Errorf("DONE info %+v", info)
		}
		close(resumedSeen)
	}
	info, st, err := Migrate(context.Background(), ts.addr, auth, mig)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Paths) != 1 || info.Paths[0] != "/a" {
		t.Errorf("info %+v", info)
	}
	if servedAtResume != 0 {
		t.Errorf("%d page bytes served before the sender heard the tree resumed, want 0", servedAtResume)
	}
	if !bytes.Equal(got, ps.mem) {
		t.Errorf("receiver's daemon got %d bytes, not the sender's memory", len(got))
	}
	select {
	case <-ps.ended:
	case <-time.After(5 * time.Second):
		t.Error("the sender's page server never saw the receiver's daemon close")
	}
	if st.PageBytes < size || st.Pages <= 0 {
		t.Errorf("stats: %d page bytes in %s, want at least %d", st.PageBytes, st.Pages, size)
	}
	if _, resumed, killed, _ := r.snapshot(); !resumed || killed {
		t.Errorf("restorer: resumed %v killed %v", resumed, killed)
	}
	if l := ts.log.waitLines(t, 1); !strings.Contains(l[0], "done (lazy)") {
		t.Errorf("log: %q", l[0])
	}
	ts.assertClean(t)
}

// TestLazySenderLost: the connection breaks after the tree resumed at the
// receiver and before the last page. The receiver must kill the tree (its
// memory cannot arrive), and the sender cannot know whether the receiver
// got everything: in doubt.
func TestLazySenderLost(t *testing.T) {
	auth := tokenAuth(t)
	const size = 2 << 20
	var proxy *cutProxy
	r := &fakeRestorer{lazy: func(ctx context.Context, job *Job, daemons []*os.File) error {
		fetch(daemons[0], size, func(got int) bool {
			if got >= size/2 {
				proxy.cut()
				return true
			}
			return false
		})
		<-ctx.Done() // the receiver notices the sender is gone
		return fmt.Errorf("memory transfer interrupted: %w", context.Cause(ctx))
	}}
	ts := lazyServer(t, auth, r)
	proxy = newCutProxy(t, ts.addr)
	src := newSource(t)
	_, link := newFakePageServer(t, size)
	var hooks hookCounts
	mig := src.migration(Request{Root: "/a", Lazy: true}, &hooks)
	mig.Pages = func() map[int]*os.File { return map[int]*os.File{0: link} }
	_, _, err := Migrate(context.Background(), proxy.addr(), auth, mig)
	if !errors.Is(err, ErrInDoubt) {
		t.Fatalf("err = %v, want ErrInDoubt", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, _, killed, _ := r.snapshot(); killed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the receiver did not kill the tree whose memory cannot arrive")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if l := ts.log.waitLines(t, 1); !strings.Contains(l[0], "before the last page") {
		t.Errorf("log: %q", l[0])
	}
	ts.assertClean(t)
}

// TestLazyReceiverFails: the receiver's daemon fails after the resume; the
// receiver kills the tree and says so, and the sender learns that nothing
// runs there (ErrRemote, not in doubt), so it may resume the source.
func TestLazyReceiverFails(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{lazy: func(ctx context.Context, job *Job, daemons []*os.File) error {
		return errors.New("lazy-pages daemon died")
	}}
	ts := lazyServer(t, auth, r)
	src := newSource(t)
	_, link := newFakePageServer(t, 1<<20)
	var hooks hookCounts
	mig := src.migration(Request{Root: "/a", Lazy: true}, &hooks)
	mig.Pages = func() map[int]*os.File { return map[int]*os.File{0: link} }
	resumed := false
	mig.OnResumed = func(RestoreInfo) { resumed = true }
	_, _, err := Migrate(context.Background(), ts.addr, auth, mig)
	var re *RemoteError
	if !errors.Is(err, ErrRemote) || errors.Is(err, ErrInDoubt) || !errors.As(err, &re) || !strings.Contains(re.Reason, "daemon died") {
		t.Fatalf("err = %v, want ErrRemote with the receiver's reason", err)
	}
	if !resumed {
		t.Error("OnResumed not called on DONE")
	}
	if _, _, killed, _ := r.snapshot(); !killed {
		t.Error("restorer did not kill the tree")
	}
	ts.assertClean(t)
}

// TestLazyRefused: a receiver that cannot restore lazily says so with
// ErrNoLazy before the source is touched.
func TestLazyRefused(t *testing.T) {
	auth := tokenAuth(t)
	for _, tc := range []struct {
		lazy func() error
		want string
	}{
		{nil, "not enabled"},
		{func() error { return errors.New("this kernel lacks userfaultfd") }, "lacks userfaultfd"},
	} {
		r := &fakeRestorer{}
		ts := startServer(t, ServerConfig{Auth: auth, Lazy: tc.lazy}, r)
		src := newSource(t)
		var hooks hookCounts
		_, _, err := Migrate(context.Background(), ts.addr, auth, src.migration(Request{Root: "/a", Lazy: true}, &hooks))
		if !errors.Is(err, ErrNoLazy) || !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err = %v, want ErrNoLazy saying %q", err, tc.want)
		}
		if hooks.prepare.Load() != 0 {
			t.Error("source touched")
		}
		// A plain rejection is not ErrNoLazy.
		_, _, err = Migrate(context.Background(), ts.addr, auth, src.migration(Request{Root: "a"}, &hooks))
		if errors.Is(err, ErrNoLazy) {
			t.Errorf("invalid request rejected as ErrNoLazy: %v", err)
		}
	}
}

// TestPageMuxHostile: PAGES frames that name no channel, or no channel at
// all, are protocol violations.
func TestPageMuxHostile(t *testing.T) {
	m := newPageMux(nil)
	ours, theirs := socketPair()
	defer theirs.Close()
	m.chans[3] = ours
	defer m.close()
	for _, p := range [][]byte{{}, {0}, {0, 4, 'x'}} {
		if err := m.deliver(p); !errors.Is(err, errProtocol) {
			t.Errorf("deliver(%v) = %v, want a protocol violation", p, err)
		}
	}
	if err := m.deliver([]byte{0, 3, 'h', 'i'}); err != nil {
		t.Fatal(err)
	}
	if err := m.deliver([]byte{0, 3}); err != nil { // end of stream
		t.Fatal(err)
	}
	b, err := io.ReadAll(theirs)
	if err != nil || string(b) != "hi" {
		t.Errorf("channel 3 read %q, %v; want \"hi\" then the end", b, err)
	}
}
