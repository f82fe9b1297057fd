package migrate

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// TestServeRejectsHostileTargets: a request's root and target go through
// the tree's name rules before anything is received.
func TestServeRejectsHostileTargets(t *testing.T) {
	auth := tokenAuth(t)
	r := &fakeRestorer{}
	ts := startServer(t, ServerConfig{Auth: auth}, r)
	src := newSource(t)
	for _, req := range []Request{
		{Root: "/a", As: "/.hidden"}, {Root: "/a", As: "/x/with space"}, {Root: "/a", As: "/x/-y"},
		{Root: "/.hidden"}, {Root: "/a", As: "/x/\u202egnp.exe"}, {Root: "/a", As: "/" + strings.Repeat("n", 65)},
		{Root: "/a", As: "/"}, {Root: "/"},
	} {
		var hooks hookCounts
		_, _, err := Migrate(context.Background(), ts.addr, auth, src.migration(req, &hooks))
		var re *RemoteError
		if !errors.Is(err, ErrRejected) || !errors.As(err, &re) || !strings.Contains(re.Reason, "invalid request") {
			t.Errorf("%+v: err = %v, want ErrRejected with an invalid request", req, err)
		}
		if hooks.prepare.Load() != 0 {
			t.Errorf("%+v: source touched", req)
		}
	}
	if calls, _, _, _ := r.snapshot(); calls != 0 {
		t.Errorf("restorer called %d times", calls)
	}
	ts.assertClean(t)
}
