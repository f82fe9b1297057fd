package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/images"
)

// inspectHelperEnv makes the test binary, started in a container, hold
// sockets instead of running tests (see socketHolder).
const inspectHelperEnv = "CR_E2E_SOCKET_HOLDER"

func init() {
	if os.Getenv(inspectHelperEnv) == "" {
		return
	}
	if err := socketHolder(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "socket holder:", err)
		os.Exit(1)
	}
	for {
		time.Sleep(time.Hour)
	}
}

// socketHolder listens on the unix socket sock, holds both ends of a unix
// socketpair, and creates ready once all exist. It never closes them. (No
// inet sockets: CRIU 4.1.1 cannot dump them on kernels from 6.16 on, where
// getsockopt SO_PASSCRED fails on them with EOPNOTSUPP; criuimg's unit tests
// cover their decoding.)
func socketHolder(sock, ready string) error {
	if _, err := net.Listen("unix", sock); err != nil {
		return err
	}
	if _, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0); err != nil {
		return err
	}
	return os.WriteFile(ready, nil, 0o644)
}

// The parts of cr inspect --json the tests read.
type inspectReport struct {
	Image       string      `json:"image"`
	ImageBytes  int64       `json:"image_bytes"`
	RawBytes    int64       `json:"raw_bytes"`
	Format      string      `json:"format"`
	Version     int         `json:"version"`
	Created     time.Time   `json:"created"`
	CRIUVersion string      `json:"criu_version"`
	Kernel      string      `json:"kernel"`
	Arch        string      `json:"arch"`
	Root        string      `json:"root"`
	Containers  []inspected `json:"containers"`
}

type inspected struct {
	Path       string `json:"path"`
	Original   string `json:"original_path"`
	Empty      bool   `json:"empty"`
	ImageBytes int64  `json:"image_bytes"`
	Network    string `json:"network"`
	Address    string `json:"address"`
	Until      string `json:"until"`
	Dump       *struct {
		FrozenTime   float64 `json:"frozen_seconds"`
		PagesScanned uint64  `json:"pages_scanned"`
		PagesWritten uint64  `json:"pages_written"`
	} `json:"dump"`
	Memory struct {
		MappedBytes int64 `json:"mapped_bytes"`
		DumpedPages int64 `json:"dumped_pages"`
		DumpedBytes int64 `json:"dumped_bytes"`
	} `json:"memory"`
	Processes []inspectedProc `json:"processes"`
}

type inspectedProc struct {
	Pid     int    `json:"pid"`
	PPid    int    `json:"ppid"`
	Command string `json:"command"`
	State   string `json:"state"`
	Exe     string `json:"exe"`
	Memory  struct {
		MappedBytes int64 `json:"mapped_bytes"`
		DumpedPages int64 `json:"dumped_pages"`
		DumpedBytes int64 `json:"dumped_bytes"`
	} `json:"memory"`
	Files []inspectedFile `json:"files"`
}

type inspectedFile struct {
	Fd     int    `json:"fd"`
	Kind   string `json:"kind"`
	Path   string `json:"path"`
	Access string `json:"access"`
	Socket *struct {
		Family   string `json:"family"`
		Type     string `json:"type"`
		Protocol string `json:"protocol"`
		State    string `json:"state"`
		Local    string `json:"local"`
		Peer     string `json:"peer"`
		Inode    uint32 `json:"inode"`
	} `json:"socket"`
}

func inspectJSON(t *testing.T, out string) inspectReport {
	t.Helper()
	var r inspectReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("cr inspect --json: %v\n%s", err, out)
	}
	return r
}

// stagingLeftovers lists what cr inspect left in the staging directory.
func stagingLeftovers(t *testing.T) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(workDir, "staging", "inspect-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestInspect(t *testing.T) {
	dir := t.TempDir()
	counter := filepath.Join(dir, "counter")
	startJob(t, "/insp/a", "--children", "2", "--counter-file", counter)
	// The job starts its children, then opens the counter file. (Not
	// job.ask: its SIGUSR1 goes to every process of the container and kills
	// a child that has not yet come to ignore it.)
	waitFor(t, 20*time.Second, "the job's children and counter file", func() bool {
		_, err := os.Stat(counter)
		return err == nil && len(ps(t, "/insp/a")) == 4
	})
	sock, ready := filepath.Join(dir, "holder.sock"), filepath.Join(dir, "holder.ready")
	if r := crEnv(t, []string{inspectHelperEnv + "=1"}, "run", "/insp/b", "--", os.Args[0], sock, ready); r.code != 0 {
		t.Fatalf("cr run /insp/b: %s", r)
	}
	killAtCleanup(t, "/insp/b")
	waitFor(t, 20*time.Second, "the socket holder", func() bool {
		_, err := os.Stat(ready)
		return err == nil
	})

	img := filepath.Join(dir, "insp.cr")
	before := time.Now()
	mustCr(t, "checkpoint", "--leave-running", "/insp", "-o", img)
	after := time.Now()
	running := ls(t)
	psA, psB := ps(t, "/insp/a"), ps(t, "/insp/b")

	r := inspectJSON(t, mustCr(t, "inspect", "--json", img))

	// The image as a whole.
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	criu, err := criubin.Find("")
	if err != nil {
		t.Fatal(err)
	}
	ver, err := criubin.GetVersion(criu)
	if err != nil {
		t.Fatal(err)
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	if r.Image != img || r.ImageBytes != fi.Size() || r.RawBytes <= r.ImageBytes ||
		r.Format != "cr-image" || r.Version != 2 || r.Root != "/insp" ||
		r.CRIUVersion != ver.String() || r.Kernel != strings.TrimSpace(string(kernel)) || r.Arch != runtime.GOARCH {
		t.Errorf("image: got %+v; want %s of %d bytes (raw more, zstd), cr-image 2, root /insp, CRIU %s, kernel %s, %s",
			r, img, fi.Size(), ver, kernel, runtime.GOARCH)
	}
	if r.Created.Before(before.Add(-time.Second)) || r.Created.After(after) {
		t.Errorf("created %v, want between %v and %v", r.Created, before, after)
	}

	// The tree.
	var paths []string
	byPath := map[string]inspected{}
	for _, c := range r.Containers {
		paths = append(paths, c.Path)
		byPath[c.Path] = c
		if want := filepath.Join("/insp", c.Path); c.Original != want {
			t.Errorf("%s: original path %q, want %q", c.Path, c.Original, want)
		}
	}
	if !slices.Equal(paths, []string{"/", "/a", "/b"}) {
		t.Fatalf("containers %v, want [/ /a /b]", paths)
	}
	if root := byPath["/"]; !root.Empty || len(root.Processes) != 0 {
		t.Errorf("/ = %+v, want an empty node without processes", root)
	}

	pageSize := int64(os.Getpagesize())
	for _, tc := range []struct {
		path string
		ps   []Proc
	}{{"/a", psA}, {"/b", psB}} {
		c := byPath[tc.path]
		// The processes are the ones cr ps shows, with their pids inside
		// the container and their commands.
		want := map[int]string{}
		for _, p := range tc.ps {
			want[p.Pid] = p.Command
		}
		got := map[int]string{}
		for _, p := range c.Processes {
			got[p.Pid] = p.Command
			if p.State != "alive" || p.Exe == "" {
				t.Errorf("%s pid %d: state %q exe %q, want alive with an executable", tc.path, p.Pid, p.State, p.Exe)
			}
			if p.Memory.MappedBytes <= 0 || p.Memory.DumpedPages <= 0 || p.Memory.DumpedBytes != p.Memory.DumpedPages*pageSize {
				t.Errorf("%s pid %d: memory %+v, want mappings and %d-byte pages in the image", tc.path, p.Pid, p.Memory, pageSize)
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: processes %v, cr ps shows %v", tc.path, got, want)
		}
		// Memory adds up, and is what CRIU says it wrote (these jobs
		// share no memory, whose pages CRIU would count too).
		var mapped, pages int64
		for _, p := range c.Processes {
			mapped += p.Memory.MappedBytes
			pages += p.Memory.DumpedPages
		}
		if c.Dump == nil || c.Dump.FrozenTime == 0 || c.Dump.PagesWritten == 0 || c.Dump.PagesScanned < c.Dump.PagesWritten {
			t.Errorf("%s: dump statistics %+v, want frozen time and pages", tc.path, c.Dump)
		} else if uint64(pages) != c.Dump.PagesWritten {
			t.Errorf("%s: %d pages dumped by the processes, CRIU wrote %d", tc.path, pages, c.Dump.PagesWritten)
		}
		if c.Memory.MappedBytes != mapped || c.Memory.DumpedPages != pages ||
			c.Memory.DumpedBytes != pages*pageSize || c.ImageBytes < c.Memory.DumpedBytes {
			t.Errorf("%s: memory %+v, image bytes %d; processes have %d mapped, %d pages", tc.path, c.Memory, c.ImageBytes, mapped, pages)
		}
	}

	// /a: the job, its two children, and the counter file it holds open.
	a := byPath["/a"]
	var jobProc *inspectedProc
	for i, p := range a.Processes {
		if strings.Contains(p.Command, "--counter-file") {
			jobProc = &a.Processes[i]
		}
	}
	if jobProc == nil {
		t.Fatalf("/a: no job among %+v", a.Processes)
	}
	var children []int
	for _, p := range a.Processes {
		if p.PPid == jobProc.Pid {
			children = append(children, p.Pid)
		}
	}
	if jobProc.PPid != 1 || len(children) != 2 {
		t.Errorf("/a: job pid %d ppid %d with children %v, want ppid 1 and 2 children", jobProc.Pid, jobProc.PPid, children)
	}
	if f := findFile(jobProc.Files, func(f inspectedFile) bool { return f.Path == counter }); f == nil || f.Kind != "file" || f.Access != "rw" {
		t.Errorf("/a: the job's open files lack the counter file %s open rw: %+v", counter, jobProc.Files)
	}
	if f := findFile(jobProc.Files, func(f inspectedFile) bool { return f.Path == "/dev/null" }); f == nil || f.Kind != "device" {
		t.Errorf("/a: the job's stdin, /dev/null, is not a device among %+v", jobProc.Files)
	}

	// /b: the socket holder's sockets.
	var holder *inspectedProc
	for i, p := range byPath["/b"].Processes {
		if strings.Contains(p.Command, sock) {
			holder = &byPath["/b"].Processes[i]
		}
	}
	if holder == nil {
		t.Fatalf("/b: no socket holder among %+v", byPath["/b"].Processes)
	}
	sockets := map[uint32]inspectedFile{}
	for _, f := range holder.Files {
		if f.Socket != nil {
			if f.Kind != "socket" {
				t.Errorf("fd %d: kind %q with a socket", f.Fd, f.Kind)
			}
			sockets[f.Socket.Inode] = f
		}
	}
	listen := findFile(holder.Files, func(f inspectedFile) bool { return f.Socket != nil && f.Socket.Local == sock })
	if listen == nil || listen.Socket.Family != "unix" || listen.Socket.Type != "stream" || listen.Socket.State != "listen" {
		t.Errorf("no listening unix socket %s among %+v", sock, holder.Files)
	}
	pairs := 0
	for ino, f := range sockets {
		if f.Socket.Family != "unix" || f.Socket.Local != "" {
			continue
		}
		peer, ok := sockets[peerInode(f.Socket.Peer)]
		if ok && peerInode(peer.Socket.Peer) == ino {
			pairs++
		}
	}
	if pairs != 2 {
		t.Errorf("want the two ends of a socketpair naming each other as peers, found %d ends among %+v", pairs, holder.Files)
	}

	// The human form names the same things.
	out := mustCr(t, "inspect", img)
	for _, want := range []string{"/insp (3 containers)", "/a (was /insp/a)", "/b (was /insp/b)", counter, sock, "CRIU " + ver.String()} {
		if !strings.Contains(out, want) {
			t.Errorf("cr inspect lacks %q:\n%s", want, out)
		}
	}

	// Nothing was restored, nothing changed, nothing is left behind.
	if after := ls(t); !reflect.DeepEqual(mapKeys(after), mapKeys(running)) {
		t.Errorf("cr inspect changed the tree: %v, before %v", mapKeys(after), mapKeys(running))
	}
	if left := stagingLeftovers(t); len(left) > 0 {
		t.Errorf("cr inspect left %v", left)
	}

	// Not root: any user who can read the image may inspect it.
	t.Run("nobody", func(t *testing.T) {
		shared := filepath.Join(workDir, "inspect-nobody")
		tmp := filepath.Join(shared, "tmp")
		if err := os.MkdirAll(tmp, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(shared) })
		if err := os.Chown(tmp, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		copyImg := filepath.Join(shared, "insp.cr")
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(copyImg, b, 0o644); err != nil {
			t.Fatal(err)
		}
		c := exec.Command(crBin, "inspect", "--json", copyImg)
		for _, e := range append(os.Environ(), env...) {
			if !strings.HasPrefix(e, "CR_STAGING=") && !strings.HasPrefix(e, "TMPDIR=") {
				c.Env = append(c.Env, e)
			}
		}
		c.Env = append(c.Env, "TMPDIR="+tmp)
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		o, err := c.Output()
		if err != nil {
			t.Fatalf("cr inspect as nobody: %v", err)
		}
		nr := inspectJSON(t, string(o))
		if !reflect.DeepEqual(nr.Containers, r.Containers) {
			t.Errorf("as nobody: containers differ from root's:\n%+v\n%+v", nr.Containers, r.Containers)
		}
		if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
			t.Errorf("cr inspect as nobody left %d entries in its TMPDIR", len(ents))
		}
	})

	t.Run("bad images", func(t *testing.T) {
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0x5a
		bad := filepath.Join(dir, "corrupt.cr")
		if err := os.WriteFile(bad, b, 0o600); err != nil {
			t.Fatal(err)
		}
		wantFail(t, 8, "corrupt image", "inspect", bad)
		wantFail(t, 8, "corrupt image", "inspect", "--json", bad)
		wantFail(t, 3, "no such image", "inspect", filepath.Join(dir, "missing.cr"))
		wantFail(t, 8, "not a cr image", "inspect", counter)
		wantFail(t, 2, "Error: accepts 1 arg(s), received 0\n", "inspect")
		if left := stagingLeftovers(t); len(left) > 0 {
			t.Errorf("failed inspections left %v", left)
		}
	})
}

func findFile(fs []inspectedFile, match func(inspectedFile) bool) *inspectedFile {
	for i := range fs {
		if match(fs[i]) {
			return &fs[i]
		}
	}
	return nil
}

// peerInode parses "socket:[<inode>]".
func peerInode(s string) uint32 {
	s, ok := strings.CutPrefix(s, "socket:[")
	if !ok {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 32)
	return uint32(n)
}

func mapKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// Every entry of a real image of two containers with output is one the
// staging layout table of docs/image-format.md documents.
func TestImageEntriesDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/image-format.md")
	if err != nil {
		t.Fatal(err)
	}
	table := string(doc)
	i := strings.Index(table, "### Staging layout")
	if i < 0 {
		t.Fatal("docs/image-format.md has no staging layout table")
	}
	table = table[i:]
	table = table[:strings.Index(table, "\n\n"+"Which directory")]
	documented := map[string]bool{}
	for _, line := range strings.Split(table, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 3 {
			continue
		}
		for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(cells[1], -1) {
			documented[m[1]] = true
		}
	}
	start(t, "/fmt", "sh", "-c", "echo root output; exec sleep 1000")
	start(t, "/fmt/sub", "sh", "-c", "echo sub output; exec sleep 1000")
	waitFor(t, 10*time.Second, "both jobs to write", func() bool {
		return strings.Contains(mustCr(t, "logs", "/fmt"), "root output") && strings.Contains(mustCr(t, "logs", "/fmt/sub"), "sub output")
	})
	img := filepath.Join(t.TempDir(), "fmt.cr")
	mustCr(t, "checkpoint", "--leave-running", "/fmt", "-o", img)
	m, err := images.VerifyFile(context.Background(), img, images.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	sub := regexp.MustCompile(`^containers/[0-9]+/`)
	logs := 0
	for _, f := range m.Files {
		name := f.Name
		if f.Dir {
			name += "/"
		}
		name = sub.ReplaceAllString(name, "containers/<n>/")
		if dir, _, ok := strings.Cut(name, "checkpoint/"); ok {
			name = dir + "checkpoint/" // CRIU's own images, inside it
		}
		if strings.HasSuffix(name, "container.log") {
			logs++
		}
		if !documented[name] {
			t.Errorf("image entry %s (as %s) is not in the staging layout of docs/image-format.md (documented: %v)", f.Name, name, documented)
		}
	}
	if logs != 2 {
		t.Errorf("%d container.log entries in an image of two containers with output", logs)
	}
}
