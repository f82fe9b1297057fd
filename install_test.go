package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/cmd"
)

// makeInstall runs make install into a fresh DESTDIR and returns it.
func makeInstall(t *testing.T, vars ...string) string {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	dest := t.TempDir()
	out, err := exec.Command("make", append([]string{"install", "DESTDIR=" + dest}, vars...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	return dest
}

// regularFiles lists the regular files under dir, relative to it.
func regularFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			files = append(files, "/"+rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	return files
}

// manPages is the page of every command cr has: cr.1, cr-kill.1,
// cr-images-ls.1, ...
func manPages() []string {
	var pages []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if !c.IsAvailableCommand() && c.HasParent() {
			return
		}
		pages = append(pages, strings.ReplaceAll(c.CommandPath(), " ", "-")+".1")
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(cmd.NewRoot())
	return pages
}

func TestMakeInstall(t *testing.T) {
	dest := makeInstall(t)
	const prefix = "/usr/local"
	want := []string{
		prefix + "/bin/cr",
		prefix + "/share/bash-completion/completions/cr",
		prefix + "/share/fish/vendor_completions.d/cr.fish",
		prefix + "/share/zsh/site-functions/_cr",
	}
	for _, p := range manPages() {
		want = append(want, prefix+"/share/man/man1/"+p)
	}
	if len(want) < 20 || !slices.Contains(want, prefix+"/share/man/man1/cr-images-ls.1") || !slices.Contains(want, prefix+"/share/man/man1/cr-certs-tls.1") {
		t.Fatalf("the command tree has too few pages: %v", want)
	}
	slices.Sort(want)
	if got := regularFiles(t, dest); !slices.Equal(got, want) {
		t.Errorf("make install wrote\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	bin := filepath.Join(dest, prefix, "bin/cr")
	if fi, err := os.Stat(bin); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("%s: %v, mode %v; want 0755", bin, err, fi.Mode())
	}
	if out, err := exec.Command(bin, "--version").Output(); err != nil || !strings.HasPrefix(string(out), "cr version ") {
		t.Errorf("installed cr --version: %q, %v", out, err)
	}

	for file, start := range map[string]string{
		"share/bash-completion/completions/cr":    "# bash completion V2 for cr",
		"share/zsh/site-functions/_cr":            "#compdef cr",
		"share/fish/vendor_completions.d/cr.fish": "# fish completion for cr",
	} {
		b, err := os.ReadFile(filepath.Join(dest, prefix, file))
		if err != nil || !strings.HasPrefix(string(b), start) || !strings.Contains(string(b), "__complete") {
			t.Errorf("%s: does not start with %q or never calls cr __complete (%v)", file, start, err)
		}
	}

	// Each page is a man page of its command, with the exit statuses.
	page := filepath.Join(dest, prefix, "share/man/man1/cr-images-prune.1")
	b, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	head := string(b)
	if !regexp.MustCompile(`(?m)^\.TH "CR" "1" "[A-Z][a-z]{2} [0-9]{4}" "cr [^"]+" "cr manual"$`).MatchString(head) ||
		!strings.Contains(head, "\n.SH NAME\ncr-images-prune - ") || !strings.Contains(head, "--keep-monthly") {
		t.Errorf("%s is not cr images prune's man page:\n%s", page, head)
	}
	if _, err := exec.LookPath("man"); err != nil {
		t.Log("man is not installed: pages not rendered")
	} else {
		c := exec.Command("man", "-l", filepath.Join(dest, prefix, "share/man/man1/cr-kill.1"))
		c.Env = append(os.Environ(), "MANPAGER=cat", "MANWIDTH=80", "LANG=C")
		out, err := c.CombinedOutput()
		text := string(out)
		if err != nil || !strings.Contains(text, "cr-kill - Signal or end a container") ||
			!strings.Contains(text, "EXIT STATUS") || !strings.Contains(text, "cr kill -s HUP /web") {
			t.Errorf("man -l cr-kill.1: %v\n%s", err, text)
		}
	}

	out, err := exec.Command("make", "uninstall", "DESTDIR="+dest).CombinedOutput()
	if err != nil {
		t.Fatalf("make uninstall: %v\n%s", err, out)
	}
	if left := regularFiles(t, dest); len(left) > 0 {
		t.Errorf("make uninstall left %v", left)
	}
}

func TestMakeInstallPrefix(t *testing.T) {
	dest := makeInstall(t, "PREFIX=/opt/cr")
	for _, f := range []string{"bin/cr", "share/man/man1/cr.1", "share/zsh/site-functions/_cr"} {
		if _, err := os.Stat(filepath.Join(dest, "opt/cr", f)); err != nil {
			t.Errorf("PREFIX=/opt/cr: %v", err)
		}
	}
	if _, err := os.Stat(filepath.Join(dest, "usr")); !os.IsNotExist(err) {
		t.Errorf("PREFIX=/opt/cr wrote under /usr: %v", err)
	}
}

// iniBlocks returns the ```ini blocks of a markdown file, each with the
// file name given in backquotes on the line before its opening fence's
// paragraph ("`/etc/systemd/system/cr-snapshot@.service`:").
func iniBlocks(t *testing.T, md string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	blocks := map[string]string{}
	re := regexp.MustCompile("(?s)`(/etc/systemd/system/[^`]+)`:\n\n```ini\n(.*?)```")
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		blocks[m[1]] = m[2]
	}
	return blocks
}

// The units in docs run the installed cr and pass systemd-analyze verify
// against a root where make install put it.
func TestSystemdUnitsVerify(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	sysUnits := "/usr/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(sysUnits, "sysinit.target")); err != nil {
		t.Skipf("no systemd units at %s to verify against: %v", sysUnits, err)
	}
	root := makeInstall(t)
	// The system's own units (targets the docs' units depend on).
	if out, err := exec.Command("cp", "-a", sysUnits, filepath.Join(root, "usr/lib/systemd")).CombinedOutput(); err != nil {
		if err := os.MkdirAll(filepath.Join(root, "usr/lib/systemd"), 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err = exec.Command("cp", "-a", sysUnits, filepath.Join(root, "usr/lib/systemd")).CombinedOutput(); err != nil {
			t.Fatalf("copy %s: %v\n%s", sysUnits, err, out)
		}
	}
	etc := filepath.Join(root, "etc/systemd/system")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	units := iniBlocks(t, "docs/snapshots.md")
	serve, err := os.ReadFile("docs/cr-serve.service")
	if err != nil {
		t.Fatal(err)
	}
	units["/etc/systemd/system/cr-serve.service"] = string(serve)
	var names []string
	for _, name := range []string{"cr-serve.service", "cr-snapshot@.service", "cr-snapshot@.timer"} {
		text, ok := units["/etc/systemd/system/"+name]
		if !ok {
			t.Fatalf("docs have no unit %s (have %v)", name, units)
		}
		if strings.Contains(text, "ExecStart=") && !strings.Contains(text, "ExecStart=/usr/local/bin/cr ") {
			t.Errorf("%s does not run the installed /usr/local/bin/cr", name)
		}
		p := filepath.Join(etc, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, p)
	}
	c := exec.Command("systemd-analyze", append([]string{"verify", "--man=no", "--generators=no", "--root=" + root}, names...)...)
	out, err := c.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// A container's path survives systemd's instance names: the docs' units
// take %f (the instance unescaped as a path), and the docs' enable line
// gives the instance systemd-escape --path makes.
func TestSnapshotTimerInstanceNames(t *testing.T) {
	units := iniBlocks(t, "docs/snapshots.md")
	svc := units["/etc/systemd/system/cr-snapshot@.service"]
	if !strings.Contains(svc, "ExecStart=/usr/local/bin/cr snapshot %f ") {
		t.Errorf("cr-snapshot@.service does not snapshot %%f, the instance unescaped as a path:\n%s", svc)
	}
	if strings.Contains(svc+units["/etc/systemd/system/cr-snapshot@.timer"], "%i") || strings.Contains(svc, "%I") {
		t.Errorf("the snapshot units use %%i or %%I, which do not unescape a path")
	}
	if _, err := exec.LookPath("systemd-escape"); err != nil {
		t.Skip("systemd-escape is not installed: the round trip is not checked")
	}
	escape := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("systemd-escape", args...).Output()
		if err != nil {
			t.Fatalf("systemd-escape %q: %v", args, err)
		}
		return strings.TrimSuffix(string(out), "\n")
	}
	for _, path := range []string{"/lab", "/lab/lab-old", "/lab-old", "/vserver1/calculate_pi", "/a/b.c/d-e-f", "/x\\y"} {
		unit := escape("--template", "cr-snapshot@.timer", "--path", path)
		inst := strings.TrimSuffix(strings.TrimPrefix(unit, "cr-snapshot@"), ".timer")
		// %f is "/" and the instance unescaped as systemd unescapes paths.
		if got := escape("--unescape", "--path", inst); got != path {
			t.Errorf("%s: instance %q unescapes to %q", path, inst, got)
		}
	}
	if got := escape("--path", "/lab/lab-old"); got != `lab-lab\x2dold` {
		t.Errorf("systemd-escape --path /lab/lab-old = %q", got)
	}
	doc, err := os.ReadFile("docs/snapshots.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`systemctl enable --now "\$\(systemd-escape --template cr-snapshot@.timer --path (/\S+)\)"\n# that is: systemctl enable --now '([^']+)'`).FindStringSubmatch(string(doc))
	if m == nil {
		t.Fatal("docs/snapshots.md lacks the enable line with systemd-escape")
	}
	if got := escape("--template", "cr-snapshot@.timer", "--path", m[1]); got != m[2] {
		t.Errorf("docs say %s is %q; systemd-escape says %q", m[1], m[2], got)
	}
}

// The certificate files cr-serve.service names are those cr certs tls
// writes (and the token file, cr certs token's).
func TestServeUnitNamesRealCertFiles(t *testing.T) {
	unit, err := os.ReadFile("docs/cr-serve.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cr := func(args ...string) {
		t.Helper()
		root := cmd.NewRoot()
		root.SetOut(new(bytes.Buffer))
		root.SetArgs(args)
		if err := root.Execute(); err != nil {
			t.Fatalf("cr %q: %v", args, err)
		}
	}
	cr("certs", "tls", filepath.Join(dir, "etc/cr/tls"), "--host", "dest.example.org")
	cr("certs", "token", filepath.Join(dir, "etc/cr/token"))
	named := regexp.MustCompile(`/etc/cr/[A-Za-z0-9_./-]+[A-Za-z0-9]`).FindAllString(string(unit), -1)
	files := 0
	for _, p := range named {
		fi, err := os.Stat(filepath.Join(dir, p))
		switch {
		case err != nil:
			t.Errorf("cr-serve.service names %s, which cr certs does not write", p)
		case fi.Mode().IsRegular():
			files++
		}
	}
	if files < 4 {
		t.Errorf("cr-serve.service names only %d credential files (%v): want the token and the server's cert, key and CA", files, named)
	}
}
