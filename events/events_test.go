package events

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAppendRead(t *testing.T) {
	j := Journal{Dir: t.TempDir()}
	code := 137
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 123456789, time.UTC)
	want := []Event{
		{Time: t0, Type: Started, Path: "/lab/pi", ID: "c1"},
		{Time: t0.Add(time.Second), Type: Exited, Path: "/lab/pi", ID: "c1", ExitCode: &code, Signal: "SIGKILL"},
	}
	for _, ev := range want {
		if err := j.Append(ev); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(j.Path())
	if first := strings.SplitN(string(b), "\n", 2)[0]; first != `{"time":"2026-12-02T00:00:00.123456789Z","type":"started","path":"/lab/pi","id":"c1"}` {
		t.Errorf("record on disk: %s", first)
	}
	got, err := j.Read()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1].Type != Exited || *got[1].ExitCode != 137 || got[1].Signal != "SIGKILL" || !got[0].Time.Equal(t0) {
		t.Errorf("read back %+v", got)
	}
}

func TestTornLines(t *testing.T) {
	j := Journal{Dir: t.TempDir()}
	if err := j.Append(Event{Type: Started, Path: "/a"}); err != nil {
		t.Fatal(err)
	}
	// A writer killed in the middle of its record.
	f, _ := os.OpenFile(j.Path(), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"time":"2026-12-02T00:00:00Z","type":"fro`)
	f.Close()
	if got, _ := j.Read(); len(got) != 1 {
		t.Fatalf("a torn last line was read: %+v", got)
	}
	// The next record starts a line of its own and is read.
	if err := j.Append(Event{Type: Thawed, Path: "/a"}); err != nil {
		t.Fatal(err)
	}
	got, _ := j.Read()
	if len(got) != 2 || got[1].Type != Thawed {
		t.Fatalf("after a torn line: %+v", got)
	}
	// Garbage and overlong lines are skipped too.
	f, _ = os.OpenFile(j.Path(), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("not json\n" + strings.Repeat("x", 200<<10) + "\n{}\n")
	f.Close()
	if err := j.Append(Event{Type: Frozen, Path: "/a"}); err != nil {
		t.Fatal(err)
	}
	got, _ = j.Read()
	if len(got) != 3 || got[2].Type != Frozen {
		t.Fatalf("after garbage: %+v", got)
	}
}

func TestRotation(t *testing.T) {
	j := Journal{Dir: t.TempDir(), MaxBytes: 4096}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 250; i++ {
				if err := j.Append(Event{Type: Frozen, Path: fmt.Sprintf("/w%d/n%d", w, i)}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	for _, p := range []string{j.Path(), j.Path() + ".1"} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		// A file is rotated once it reached MaxBytes: it holds at most
		// MaxBytes plus the records of writers that were appending then.
		if st.Size() > j.MaxBytes+4*100 {
			t.Errorf("%s has %d bytes, bound %d", p, st.Size(), j.MaxBytes)
		}
	}
	got, err := j.Read()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < 40 || len(got) > 200 {
		t.Errorf("%d events kept", len(got))
	}
	// Every line on disk is a whole record, and the newest survives.
	if err := j.Append(Event{Type: Thawed, Path: "/last"}); err != nil {
		t.Fatal(err)
	}
	lines := 0
	for _, p := range []string{j.Path() + ".1", j.Path()} {
		b, _ := os.ReadFile(p)
		lines += strings.Count(string(b), "\n")
	}
	got, _ = j.Read()
	if len(got) != lines || got[len(got)-1].Path != "/last" {
		t.Errorf("%d of %d lines read; last %+v", len(got), lines, got[len(got)-1])
	}
}

func TestScope(t *testing.T) {
	t0 := time.Now()
	evs := []Event{
		{Time: t0, Type: Started, Path: "/vs"},
		{Time: t0, Type: Started, Path: "/vs/inner"},
		{Time: t0.Add(time.Second), Type: Frozen, Path: "/vs/inner/deep"},
		{Time: t0, Type: Started, Path: "/vsx"},
		{Time: t0, Type: Started, Path: "/other"},
	}
	paths := func(evs []Event) string {
		var s []string
		for _, e := range evs {
			s = append(s, e.Path)
		}
		return strings.Join(s, " ")
	}
	for _, c := range []struct {
		s    Scope
		want string
	}{
		{Scope{Root: "/"}, "/vs /vs/inner /vs/inner/deep /vsx /other"},
		{Scope{Root: "/", Under: "/vs"}, "/vs /vs/inner /vs/inner/deep"},
		{Scope{Root: "/vs"}, "/inner /inner/deep"},
		{Scope{Root: "/vs", Under: "/vs/inner/deep"}, "/inner/deep"},
		{Scope{Root: "/vs/inner"}, "/deep"},
		{Scope{Root: "/", Since: t0.Add(time.Second / 2)}, "/vs/inner/deep"},
	} {
		if got := paths(c.s.Filter(evs)); got != c.want {
			t.Errorf("%+v: got %q, want %q", c.s, got, c.want)
		}
	}
	if evs[2].Path != "/vs/inner/deep" {
		t.Error("Filter changed its input")
	}
}

func TestFollow(t *testing.T) {
	j := Journal{Dir: t.TempDir(), MaxBytes: 300}
	if err := j.Append(Event{Type: Started, Path: "/before"}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	got := make(chan Event, 100)
	done := make(chan error, 1)
	go func() {
		done <- j.Follow(5*time.Millisecond, stop, true, func(ev Event) error { got <- ev; return nil })
	}()
	time.Sleep(30 * time.Millisecond)
	for i := 0; i < 10; i++ { // across rotations
		if err := j.Append(Event{Type: Frozen, Path: fmt.Sprintf("/n%d", i)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(15 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	close(got)
	var seen []string
	for ev := range got {
		seen = append(seen, ev.Path)
	}
	if want := "/before /n0 /n1 /n2 /n3 /n4 /n5 /n6 /n7 /n8 /n9"; strings.Join(seen, " ") != want {
		t.Errorf("followed %q, want %q", strings.Join(seen, " "), want)
	}
}
