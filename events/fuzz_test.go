package events

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

// FuzzJournal: whatever bytes a journal file holds (a container's root
// process can write to it when it shares the host's file system), reading
// it never fails, yields only whole records, and a record appended to it
// is read back without changing what was there. A viewer's scope only
// ever shows paths below its root, relative to it.
func FuzzJournal(f *testing.F) {
	f.Add([]byte(`{"time":"2026-12-02T00:00:00Z","type":"started","path":"/a"}` + "\n"))
	f.Add([]byte(`{"time":"2026-12-02T00:00:00Z","type":"started","path":"/a/b"}` + "\n" + `{"time":"2026-12-02T00:00:01Z","type":"fro`))
	f.Add([]byte("not json\n\n{}\n" + `{"time":"x","type":"y"}` + "\n"))
	f.Add([]byte(`{"time":"2026-12-02T00:00:00Z","type":"exited","path":"/a","exit_code":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		j := Journal{Dir: t.TempDir()}
		if err := os.WriteFile(j.Path(), data, 0o600); err != nil {
			t.Fatal(err)
		}
		before, err := j.Read()
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		for _, ev := range before {
			if ev.Type == "" || ev.Time.IsZero() {
				t.Fatalf("an incomplete record was read: %+v", ev)
			}
			sc := Scope{Root: "/a"}
			if got, ok := sc.Apply(ev); ok && (!strings.HasPrefix(got.Path, "/") || got.Path == "/" || !strings.HasPrefix(ev.Path, "/a/")) {
				t.Fatalf("scope /a shows %q as %q", ev.Path, got.Path)
			}
		}
		mark := Event{Time: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), Type: "fuzz-mark", Path: "/mark"}
		if err := j.Append(mark); err != nil {
			t.Fatalf("Append: %v", err)
		}
		after, err := j.Read()
		if err != nil {
			t.Fatalf("Read after Append: %v", err)
		}
		key := func(ev Event) string { b, _ := json.Marshal(ev); return string(b) }
		count := map[string]int{}
		for _, ev := range after {
			count[key(ev)]++
		}
		for _, ev := range before {
			if count[key(ev)] == 0 {
				t.Fatalf("appending lost %+v", ev)
			}
			count[key(ev)]--
		}
		if count[key(mark)] < 1 {
			t.Fatalf("the appended record is not read back: %+v", after)
		}
		// At most one more: a last line that lacked only its newline.
		if n := len(after) - len(before); n < 1 || n > 2 {
			t.Fatalf("%d records before, %d after one append", len(before), len(after))
		}
	})
}
