package restore

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/cr-dev/cr/nstree"
)

func TestJournalRecord(t *testing.T) {
	tr := &nstree.Tree{StateDir: t.TempDir()}
	j, err := beginJournal(tr, "/lab", true)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.created([]*nstree.Node{{Config: nstree.Config{ID: "c1"}}, {Config: nstree.Config{ID: "c2"}}}); err != nil {
		t.Fatal(err)
	}
	if err := j.resuming(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(j.e.Path)
	if err != nil {
		t.Fatal(err)
	}
	if want := "target /lab\nlazy\nids c1 c2\nresuming\n"; string(b) != want {
		t.Errorf("record %q, want %q", b, want)
	}
	if got, want := parseRecord(b), (record{target: "/lab", lazy: true, ids: []string{"c1", "c2"}, resuming: true}); !reflect.DeepEqual(got, want) {
		t.Errorf("parsed %+v, want %+v", got, want)
	}
	// A live record is not recovered.
	Recover(tr)
	if _, err := os.Stat(j.e.Path); err != nil {
		t.Errorf("Recover removed the record of a live restore: %v", err)
	}
	j.end()
	if _, err := os.Stat(j.e.Path); !os.IsNotExist(err) {
		t.Errorf("end left the record: %v", err)
	}
}

// The record of a restore whose cr died (unlocked) is removed by Recover,
// with the nodes it names; nodes of others are left alone.
func TestRecoverRemovesDeadRecords(t *testing.T) {
	tr := &nstree.Tree{StateDir: t.TempDir()}
	dir := filepath.Join(tr.StateDir, journalDir)
	os.MkdirAll(dir, 0o700)
	dead := filepath.Join(dir, journalPrefix+"0123456789abcdef")
	if err := os.WriteFile(dead, []byte("target /gone\nids cmissing\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if msgs := Recover(tr); len(msgs) != 0 {
		t.Errorf("Recover said %q of a restore whose nodes are gone", msgs)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("the dead record is still there: %v", err)
	}
}
