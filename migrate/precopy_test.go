package migrate

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cr-dev/cr/rootfs"
)

// layerTree makes a small tree and returns it with its digest.
func layerTree(t *testing.T, content string) (string, string) {
	t.Helper()
	d := t.TempDir()
	if err := os.MkdirAll(filepath.Join(d, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "etc/f"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	dg, err := rootfs.Digest(d)
	if err != nil {
		t.Fatal(err)
	}
	return d, dg
}

func preCopyConfig(auth Auth, has string) ServerConfig {
	return ServerConfig{Auth: auth, PreCopy: func() error { return nil }, HasLower: func(d string) bool { return d == has }}
}

// A receiver that takes the pre-copy asks only for the lowers it lacks,
// receives them and the uppers before Prepare (the freeze), verifies a
// lower's digest, hands both to the restorer, and removes what is left
// afterwards.
func TestPreCopy(t *testing.T) {
	auth := tokenAuth(t)
	_, have := layerTree(t, "have")
	lower, want := layerTree(t, "lower")
	upper, upperDigest := layerTree(t, "upper")
	var got *rootfs.PreCopied
	var upperAtRestore, lowerAtRestore string
	r := &fakeRestorer{onJob: func(j *Job) {
		got = j.PreCopy
		if got != nil {
			upperAtRestore, _ = rootfs.Digest(got.Uppers["/"])
			lowerAtRestore, _ = rootfs.Digest(got.Lowers[want])
		}
	}}
	ts := startServer(t, preCopyConfig(auth, have), r)
	src := newSource(t)
	var hooks hookCounts
	mig := src.migration(Request{Root: "/a", PreCopy: true, SendLowers: []string{have, want}}, &hooks)
	var asked []string
	mig.PreCopy = func(ctx context.Context, wantLowers []string, send SendLayer) error {
		asked = wantLowers
		if hooks.prepare.Load() != 0 {
			t.Error("pre-copy after Prepare")
		}
		for _, l := range []struct {
			l   Layer
			dir string
		}{{Layer{Kind: LayerLower, Digest: want, Size: 5}, lower}, {Layer{Kind: LayerUpper, Path: "/", Size: 5}, upper}} {
			if err := send(l.l, func(w io.Writer) error {
				_, err := rootfs.WritePreCopy(w, l.dir, l.l.Size)
				return err
			}); err != nil {
				return err
			}
		}
		return nil
	}
	_, st, err := Migrate(context.Background(), ts.addr, auth, mig)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(asked, []string{want}) {
		t.Errorf("receiver asked for %v, want only the lower it lacks %s", asked, want)
	}
	if got == nil || upperAtRestore != upperDigest || lowerAtRestore != want {
		t.Errorf("restorer got %+v: upper %s (want %s), lower %s (want %s)", got, upperAtRestore, upperDigest, lowerAtRestore, want)
	}
	if st.PreCopyBytes == 0 || st.PreCopy <= 0 {
		t.Errorf("stats %+v: no pre-copy counted", st)
	}
	ts.log.waitLines(t, 1)
	ts.assertClean(t)
}

// A receiver that does not take the offer (an older one, or one that
// cannot) never sees a pre-copy: the migration goes on without it.
func TestPreCopyDeclined(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{onJob: func(j *Job) {
		if j.PreCopy != nil {
			t.Errorf("restorer got a pre-copy %+v", j.PreCopy)
		}
	}}
	ts := startServer(t, ServerConfig{Auth: auth}, r)
	src := newSource(t)
	var hooks hookCounts
	mig := src.migration(Request{Root: "/a", PreCopy: true}, &hooks)
	mig.PreCopy = func(context.Context, []string, SendLayer) error {
		t.Error("pre-copy to a receiver that declined it")
		return nil
	}
	if _, _, err := Migrate(context.Background(), ts.addr, auth, mig); err != nil {
		t.Fatal(err)
	}
	ts.log.waitLines(t, 1)
	ts.assertClean(t)
}

// What a hostile sender may do in the pre-copy ends it with ERROR, the
// receiver's staging empty and the daemon serving on: FS frames without
// the agreement, a lower not asked for, one whose content lies about its
// digest, an upper over its declared size or naming a path outside it.
func TestPreCopyHostile(t *testing.T) {
	auth := tokenAuth(t)
	_, have := layerTree(t, "have")
	lower, want := layerTree(t, "lower")
	r := &fakeRestorer{}
	ts := startServer(t, preCopyConfig(auth, have), r)
	archive := func(dir string) []byte {
		var b bytes.Buffer
		if _, err := rootfs.WriteLayer(&b, dir); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	other, _ := layerTree(t, "not the lower")
	escape := func() []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		tw.WriteHeader(&tar.Header{Name: "../../x", Typeflag: tar.TypeReg, Size: 1, Format: tar.FormatPAX})
		tw.Write([]byte("x"))
		tw.Close()
		return b.Bytes()
	}()
	for _, tc := range []struct {
		name  string
		offer bool
		layer Layer
		data  []byte
		want  string
	}{
		{"not agreed", false, Layer{Kind: LayerUpper, Path: "/", Size: 10}, nil, "FS frame, but no pre-copy was agreed"},
		{"lower not asked for", true, Layer{Kind: LayerLower, Digest: have, Size: 10}, nil, "was not asked for"},
		{"bad path", true, Layer{Kind: LayerUpper, Path: "/../x", Size: 10}, nil, "FS: path"},
		{"unknown kind", true, Layer{Kind: "other", Size: 10}, nil, "unknown kind"},
		{"lying lower", true, Layer{Kind: LayerLower, Digest: want, Size: 100}, archive(other), "content has digest"},
		{"over its size", true, Layer{Kind: LayerUpper, Path: "/c", Size: 2}, archive(lower), "layer larger than declared"},
		{"escape", true, Layer{Kind: LayerUpper, Path: "/c", Size: 10}, escape, "unsafe layer entry"},
	} {
		cl := rawClient(t, ts.addr, auth)
		req := Request{Root: "/a"}
		if tc.offer {
			req.PreCopy, req.SendLowers = true, []string{have, want}
		}
		if err := cl.fc.sendJSON(msgRequest, req); err != nil {
			t.Fatal(err)
		}
		var acc acceptMsg
		if err := cl.expectAccept(context.Background(), time.Now().Add(5*time.Second), &acc); err != nil {
			t.Fatal(err)
		}
		if acc.PreCopy != tc.offer {
			t.Errorf("%s: ACCEPT precopy %v", tc.name, acc.PreCopy)
		}
		cl.fc.sendJSON(msgFS, tc.layer)
		if tc.data != nil {
			if err := cl.expectAccept(context.Background(), time.Now().Add(5*time.Second), &acc); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			dw := &dataWriter{f: cl.fc}
			dw.Write(tc.data)
			cl.fc.sendJSON(msgFSEnd, endMsg{Bytes: dw.n})
		}
		if got := cl.serverError(); !strings.Contains(got, tc.want) {
			t.Errorf("%s: server said %q, want %q", tc.name, got, tc.want)
		}
		ts.assertClean(t)
		if _, err := os.Lstat(filepath.Join(filepath.Dir(ts.staging), "x")); err == nil {
			t.Errorf("%s: wrote outside the staging dir", tc.name)
		}
	}
	assertMigrates(t, ts, auth, "/ok")
}

// A migration that fails after its pre-copy (the dump fails, the
// destination's restore fails) leaves nothing of it in the staging area.
func TestPreCopyRemovedOnFailure(t *testing.T) {
	auth := tokenAuth(t)
	upper, _ := layerTree(t, "upper")
	for _, tc := range []struct {
		name    string
		prepare error
		restore error
	}{{"dump fails", errors.New("dump failed"), nil}, {"restore fails", nil, errors.New("restore failed")}} {
		r := &fakeRestorer{failBefore: tc.restore}
		ts := startServer(t, preCopyConfig(auth, ""), r)
		src := newSource(t)
		var hooks hookCounts
		mig := src.migration(Request{Root: "/a", PreCopy: true}, &hooks)
		mig.PreCopy = func(ctx context.Context, _ []string, send SendLayer) error {
			return send(Layer{Kind: LayerUpper, Path: "/", Size: 5}, func(w io.Writer) error {
				_, err := rootfs.WritePreCopy(w, upper, 5)
				return err
			})
		}
		if tc.prepare != nil {
			mig.Prepare = func(context.Context) (int64, error) { return 0, tc.prepare }
		}
		if _, _, err := Migrate(context.Background(), ts.addr, auth, mig); err == nil {
			t.Errorf("%s: migration succeeded", tc.name)
		}
		ts.log.waitLines(t, 1)
		ts.assertClean(t)
	}
}
