package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"

	"github.com/cr-dev/cr/network"
)

// echoServer is a TCP echo server on port 7000 of every address, in
// Python: a Go server (1.24 and newer) listens with MPTCP, which CRIU
// cannot dump.
const echoServer = `
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000))
s.listen()
while True:
    c, _ = s.accept()
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
`

// startEcho runs the echo server in a --net=bridge container at path and
// returns its address once it is listening.
func startEcho(t *testing.T, path string, flags ...string) string {
	t.Helper()
	args := append([]string{"run", "--net=bridge"}, flags...)
	mustCr(t, append(args, path, "--", "python3", "-c", echoServer)...)
	killAtCleanup(t, path)
	e := ls(t)[path]
	a, err := netip.ParseAddr(e.Address)
	if err != nil || e.Network != "bridge" || !testSubnet.Contains(a) {
		t.Fatalf("%s: network %q address %q, want bridge and an address in %s", path, e.Network, e.Address, testSubnet)
	}
	waitFor(t, 10*time.Second, path+"'s echo server", func() bool {
		c, err := net.DialTimeout("tcp", e.Address+":7000", time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return e.Address
}

// echoClient keeps one connection to an echo server and sends a numbered
// line every 10 ms; it checks that every line comes back, once and in
// order, and that the connection never fails.
type echoClient struct {
	conn       *net.TCPConn
	sent, got  atomic.Int64
	stop, done chan struct{}
	readDone   chan struct{}
	mu         sync.Mutex
	err        error
}

func dialEcho(t *testing.T, local, addr string) *echoClient {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	d.SetMultipathTCP(false)
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	nc, err := d.Dial("tcp", addr+":7000")
	if err != nil {
		t.Fatalf("connect to %s: %v", addr, err)
	}
	c := &echoClient{conn: nc.(*net.TCPConn), stop: make(chan struct{}), done: make(chan struct{}), readDone: make(chan struct{})}
	t.Cleanup(func() { c.conn.Close() })
	go func() {
		defer close(c.done)
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for i := int64(0); ; i++ {
			select {
			case <-c.stop:
				return
			case <-tk.C:
			}
			if _, err := fmt.Fprintf(c.conn, "%d\n", i); err != nil {
				c.fail(fmt.Errorf("send %d: %w", i, err))
				return
			}
			c.sent.Store(i + 1)
		}
	}()
	go func() {
		defer close(c.readDone)
		sc := bufio.NewScanner(c.conn)
		for sc.Scan() {
			v, err := strconv.ParseInt(sc.Text(), 10, 64)
			if want := c.got.Load(); err != nil || v != want {
				c.fail(fmt.Errorf("received %q, want %d (lost, duplicated or out of order)", sc.Text(), want))
				return
			}
			c.got.Add(1)
		}
		if err := sc.Err(); err != nil {
			c.fail(fmt.Errorf("receive: %w", err))
		}
	}()
	return c
}

func (c *echoClient) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
	}
}

func (c *echoClient) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// flowing waits until n more lines than now have come back.
func (c *echoClient) flowing(t *testing.T, n int64, timeout time.Duration) {
	t.Helper()
	want := c.got.Load() + n
	waitFor(t, timeout, fmt.Sprintf("%d more echoes (failure: %v)", n, c.failure()), func() bool {
		return c.got.Load() >= want || c.failure() != nil
	})
	if err := c.failure(); err != nil {
		t.Fatalf("echo client: %v", err)
	}
}

// finish stops sending and checks that every line sent came back on the
// one connection, which never failed.
func (c *echoClient) finish(t *testing.T) {
	t.Helper()
	close(c.stop)
	<-c.done
	sent := c.sent.Load()
	waitFor(t, 30*time.Second, "the last echoes", func() bool { return c.got.Load() >= sent || c.failure() != nil })
	_ = c.conn.CloseWrite()
	select {
	case <-c.readDone:
	case <-time.After(10 * time.Second):
		t.Errorf("the server did not close the connection after the client did")
	}
	if err := c.failure(); err != nil {
		t.Fatalf("echo client: %v (sent %d, received %d)", err, sent, c.got.Load())
	}
	if got := c.got.Load(); got != sent || sent == 0 {
		t.Fatalf("echo client: sent %d lines, received %d back", sent, got)
	}
}

// nthAddr is the subnet's address number n.
func nthAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Addr()
	for range n {
		a = a.Next()
	}
	return a
}

// cr run --net=bridge: an address of the subnet, shown by ls and ps,
// reachable from the host; --ip chooses it, a second container cannot take
// it, and it is free again once its container is gone with its veth.
// Plain --net keeps its loopback-only namespace.
func TestBridgeRun(t *testing.T) {
	addr := startEcho(t, "/br/echo")
	gw := nthAddr(testSubnet, 1).String()
	if addr == gw {
		t.Errorf("the container got the bridge's own address %s", addr)
	}
	for _, p := range ps(t, "/br/echo") {
		if p.Address != addr {
			t.Errorf("cr ps: process %d has address %q, want %s", p.Pid, p.Address, addr)
		}
	}
	if out := mustCr(t, "ls", "/br"); !strings.Contains(out, " "+addr+" ") {
		t.Errorf("cr ls does not show the address %s:\n%s", addr, out)
	}
	out := mustCr(t, "enter", "/br/echo", "--", "ip", "route", "show", "default")
	if want := "default via " + gw + " dev eth0"; !strings.HasPrefix(out, want) {
		t.Errorf("default route in the container: %q, want %q", out, want)
	}
	c := dialEcho(t, "", addr)
	c.flowing(t, 30, 10*time.Second)
	c.finish(t)

	want := nthAddr(testSubnet, 200).String()
	mustCr(t, "run", "--net=bridge", "--ip", want, "/br/fixed", "--", "sleep", "1000")
	killAtCleanup(t, "/br/fixed")
	e := ls(t)["/br/fixed"]
	if e.Address != want {
		t.Errorf("--ip %s: address %q", want, e.Address)
	}
	wantFail(t, 4, "address in use: "+want+" belongs to another container here", "run", "--net=bridge", "--ip", want, "/br/twin", "--", "sleep", "1000")
	if _, ok := ls(t)["/br/twin"]; ok {
		t.Errorf("a refused cr run left /br/twin")
	}
	mustCr(t, "kill", "/br/fixed")
	waitFor(t, 10*time.Second, "the veth of /br/fixed to go", func() bool {
		_, err := netlink.LinkByName("v" + e.ID)
		return err != nil
	})
	mustCr(t, "run", "--net=bridge", "--ip", want, "/br/again", "--", "sleep", "1000")
	killAtCleanup(t, "/br/again")
	if got := ls(t)["/br/again"].Address; got != want {
		t.Errorf("the freed address %s was not given again: %q", want, got)
	}

	wantFail(t, 2, "--ip, --nat and --publish need --net=bridge", "run", "--ip", want, "/br/x", "--", "true")
	wantFail(t, 2, "invalid --ip 192.0.2.77: not in the subnet "+testSubnet.String()+" of bridge "+testBridge, "run", "--net=bridge", "--ip", "192.0.2.77", "/br/x", "--", "true")
	wantFail(t, 2, "invalid --ip "+gw+": the bridge's own address", "run", "--net=bridge", "--ip", gw, "/br/x", "--", "true")
	wantFail(t, 2, `invalid argument "host" for "--net" flag: want none (loopback only) or bridge`, "run", "--net=host", "/br/x", "--", "true")

	mustCr(t, "run", "--net", "/br/lo", "--", "sleep", "1000")
	killAtCleanup(t, "/br/lo")
	if e := ls(t)["/br/lo"]; e.Network != "none" || e.Address != "" {
		t.Errorf("--net alone: network %q address %q, want none and no address", e.Network, e.Address)
	}
	if out := mustCr(t, "enter", "/br/lo", "--", "ip", "-o", "link"); strings.Contains(out, "eth0") || !strings.Contains(out, "lo:") {
		t.Errorf("--net alone has other links than lo:\n%s", out)
	}
}

// --nat installs the masquerade rule of the subnet in cr's nftables table
// and turns forwarding on: tested by the rules, in a network namespace of
// the test's own (never by sending anything out).
func TestBridgeNATRules(t *testing.T) {
	h := newHost(t, "token") // only for its network namespace
	c := exec.Command("nsenter", "--net=/run/netns/"+h.ns, crBin, "run", "--net=bridge", "--nat", "/nat", "--", "sleep", "1000")
	c.Env, c.Dir = append(os.Environ(), env...), workDir
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("cr run --nat in %s: %v\n%s", h.ns, err, out)
	}
	killAtCleanup(t, "/nat")
	hostFwd, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	ns, err := os.Open("/run/netns/" + h.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	out, err := exec.Command("nsenter", "--net=/run/netns/"+h.ns, "cat", "/proc/sys/net/ipv4/ip_forward").Output()
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Errorf("ip_forward in the namespace: %q (%v), want 1", out, err)
	}
	if now, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(now) != string(hostFwd) {
		t.Errorf("the host's ip_forward changed")
	}
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	tbl := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: "cr_" + testBridge}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	var post *nftables.Chain
	for _, ch := range chains {
		if ch.Table.Name == tbl.Name && ch.Name == "postrouting" {
			post = ch
		}
	}
	if post == nil || post.Type != nftables.ChainTypeNAT || post.Hooknum == nil || *post.Hooknum != *nftables.ChainHookPostrouting {
		t.Fatalf("no nat postrouting chain in table ip %s: %+v", tbl.Name, post)
	}
	rules, err := conn.GetRules(tbl, post)
	if err != nil || len(rules) != 1 {
		t.Fatalf("rules of %s/postrouting: %d (%v), want 1", tbl.Name, len(rules), err)
	}
	var subnet, notBridge, masq bool
	for _, x := range rules[0].Exprs {
		switch e := x.(type) {
		case *expr.Cmp:
			if e.Op == expr.CmpOpEq && string(e.Data) == string(testSubnet.Addr().AsSlice()) {
				subnet = true
			}
			if e.Op == expr.CmpOpNeq && strings.TrimRight(string(e.Data), "\x00") == testBridge {
				notBridge = true
			}
		case *expr.Masq:
			masq = true
		}
	}
	if !subnet || !notBridge || !masq {
		t.Errorf("the rule is not \"ip saddr %s oifname != %s masquerade\": %+v", testSubnet, testBridge, rules[0].Exprs)
	}
	// cr check in that namespace says so.
	c = exec.Command("nsenter", "--net=/run/netns/"+h.ns, crBin, "check", "--json", "--no-probe")
	c.Env, c.Dir = append(os.Environ(), env...), workDir
	out, _ = c.Output()
	var rep checkReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("cr check --json: %v\n%s", err, out)
	}
	items := map[string]string{}
	for _, it := range rep.Items {
		items[it.Name] = fmt.Sprint(it.OK, " ", it.Value)
	}
	if want := fmt.Sprintf("true yes; outbound NAT of %s on (table ip cr_%s)", testSubnet, testBridge); items["nftables"] != want {
		t.Errorf("cr check nftables: %q, want %q", items["nftables"], want)
	}
	if want := fmt.Sprintf("true %s with %s", testBridge, netip.PrefixFrom(nthAddr(testSubnet, 1), testSubnet.Bits())); items["bridge"] != want {
		t.Errorf("cr check bridge: %q, want %q", items["bridge"], want)
	}
	if items["ip forwarding"] != "true yes" {
		t.Errorf("cr check ip forwarding: %q", items["ip forwarding"])
	}
}

// A client outside keeps one connection to the echo server across cr
// checkpoint and cr restore: every line comes back once and in order, and
// the connection never sees a reset. The image records the address.
func TestBridgeTCPCheckpointRestore(t *testing.T) {
	const path = "/tcpck"
	addr := startEcho(t, path)
	c := dialEcho(t, "", addr)
	c.flowing(t, 20, 10*time.Second)
	// Left running, it keeps its veth and its connection.
	mustCr(t, "checkpoint", "--leave-running", path, "-o", image(t))
	c.flowing(t, 20, 5*time.Second)
	img := image(t)
	mustCr(t, "checkpoint", path, "-o", img)
	gone(t, path)
	rep := inspectJSON(t, mustCr(t, "inspect", "--json", img))
	wantAddr := netip.PrefixFrom(netip.MustParseAddr(addr), testSubnet.Bits()).String()
	if len(rep.Containers) != 1 || rep.Containers[0].Network != "bridge" || rep.Containers[0].Address != wantAddr {
		t.Errorf("cr inspect: %+v, want one container with network bridge, address %s", rep.Containers, wantAddr)
	}
	if out := mustCr(t, "inspect", img); !strings.Contains(out, "  network: bridge, address "+wantAddr+"\n") {
		t.Errorf("cr inspect does not show the address:\n%s", out)
	}
	mustCr(t, "restore", img)
	if got := ls(t)[path].Address; got != addr {
		t.Errorf("restored with address %q, want %s", got, addr)
	}
	c.flowing(t, 50, 30*time.Second)
	c.finish(t)
}

// The same across cr migrate to the other host: the client, on this one,
// reaches the container through the other host once routed there (what a
// fleet with one subnet on every host needs: a route to each container,
// or routing between the hosts' bridges).
func TestBridgeTCPMigrate(t *testing.T) { bridgeTCPMigrate(t, "/tcpmig") }

// The same with post-copy: the job resumes at the destination before its
// memory arrives.
func TestBridgeTCPMigrateLazy(t *testing.T) { bridgeTCPMigrate(t, "/tcplazy", "--lazy") }

func bridgeTCPMigrate(t *testing.T, path string, flags ...string) {
	h := newHost(t, "token")
	// The other host forwards between its veth and its bridge.
	if out, err := exec.Command("nsenter", "--net=/run/netns/"+h.ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward").CombinedOutput(); err != nil {
		t.Fatalf("ip_forward in %s: %v\n%s", h.ns, err, out)
	}
	addr := startEcho(t, path)
	before := insidePids(t, path)
	// From this host's end of the veth pair: an address both hosts can
	// answer (the bridges' own address is on both).
	c := dialEcho(t, h.local, addr)
	c.flowing(t, 20, 10*time.Second)
	mustCr(t, migrateArgs(h, path, flags...)...)
	ip(t, "route", "replace", addr+"/32", "via", h.ip)
	t.Cleanup(func() { _ = exec.Command("ip", "route", "del", addr+"/32").Run() })
	gone(t, path)
	e := h.ls(t)[path]
	if e.State != "running" || e.Address != addr || e.Network != "bridge" {
		t.Errorf("migrated %s: %+v, want running with address %s", path, e, addr)
	}
	var after []int
	for _, p := range h.ps(t, path) {
		after = append(after, p.Pid)
	}
	slices.Sort(after)
	if !slices.Equal(after, before) {
		t.Errorf("migrated pids %v, want %v", after, before)
	}
	c.flowing(t, 50, 30*time.Second)
	c.finish(t)
	h.mustCr(t, "kill", path)
}

// A destination whose bridge has another subnet is refused before
// anything is frozen: the source runs on, its connections too, and the
// message says why.
func TestBridgeMigrateRefusedSubnet(t *testing.T) {
	other, err := freeBridgeSubnet(os.Getpid() + 1)
	if err != nil || other == testSubnet {
		t.Fatalf("no second subnet: %v", err)
	}
	h := newHostEnv(t, "token", []string{"CR_SUBNET=" + other.String()})
	const path = "/tcpref"
	addr := startEcho(t, path)
	pid := initPid(t, path)
	c := dialEcho(t, "", addr)
	c.flowing(t, 20, 10*time.Second)
	r := cr(t, migrateArgs(h, path)...)
	want := fmt.Sprintf("network: bridge %s here has the subnet %s, not %s (a container's address is %s)", testBridge, other, testSubnet, addr)
	// Rejected with the request, before the source was touched (not
	// "migration failed at destination", after its dump).
	if r.code != 1 || r.err != "Error: migration rejected: "+want+"\n" {
		t.Errorf("migrate to a host with subnet %s: want a failure saying %q, got %s", other, want, r)
	}
	if e := ls(t)[path]; e.State != "running" || initPid(t, path) != pid {
		t.Errorf("source after the refusal: %+v, want running with init %d", e, pid)
	}
	c.flowing(t, 20, 5*time.Second) // never frozen nor unplugged for long
	c.finish(t)
	h.waitClean(t)
}

// redis-server --daemonize yes in an --until empty --net=bridge container,
// 100k keys, read by clients outside: on this host across checkpoint and
// restore, then on the other host after cr migrate.
func TestBridgeRedis(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed (scripts/provision.sh installs it)")
	}
	h := newHost(t, "token")
	const path = "/bredis"
	dir := t.TempDir()
	mustCr(t, "run", "--until", "empty", "--net=bridge", path, "--", "redis-server", "--daemonize", "yes",
		"--bind", "0.0.0.0", "--protected-mode", "no", "--port", "6379", "--save", "", "--appendonly", "no",
		"--logfile", "", "--dir", dir, "--pidfile", filepath.Join(dir, "redis.pid"))
	killAtCleanup(t, path)
	waitFor(t, 30*time.Second, "redis-server to daemonize", func() bool {
		e := ls(t)[path]
		return e.ExitCode != nil && e.Processes == 2
	})
	addr := ls(t)[path].Address
	cli := func(netns string, args ...string) string {
		t.Helper()
		a := append([]string{"redis-cli", "-h", addr, "-p", "6379"}, args...)
		if netns != "" {
			a = append([]string{"nsenter", "--net=/run/netns/" + netns}, a...)
		}
		out, err := exec.Command(a[0], a[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", a, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	load := `for i=1,100000 do redis.call('SET', 'key:'..i, 'value:'..(i*7919 % 1000003)) end return redis.call('DBSIZE')`
	if got := cli("", "EVAL", load, "0"); got != "100000" {
		t.Fatalf("loading 100000 keys: %q", got)
	}
	want := cli("", append([]string{"MGET"}, redisSample...)...)
	if strings.Count(want, "value:") != len(redisSample) {
		t.Fatalf("MGET: %q", want)
	}
	img := image(t)
	mustCr(t, "checkpoint", path, "-o", img)
	gone(t, path)
	mustCr(t, "restore", img)
	if e := ls(t)[path]; e.Address != addr || e.Until != "empty" || e.Processes != 2 {
		t.Errorf("restored %s: %+v, want address %s, until empty, 2 processes", path, e, addr)
	}
	if got := cli("", "DBSIZE"); got != "100000" {
		t.Errorf("DBSIZE after restore: %q", got)
	}
	if got := cli("", append([]string{"MGET"}, redisSample...)...); got != want {
		t.Errorf("MGET after restore:\n%s\nwant:\n%s", got, want)
	}
	mustCr(t, migrateArgs(h, path)...)
	gone(t, path)
	if e := h.ls(t)[path]; e.Address != addr || e.State != "running" {
		t.Errorf("migrated %s: %+v, want running with address %s", path, e, addr)
	}
	// A client on the other host reaches it on that host's bridge.
	if got := cli(h.ns, "DBSIZE"); got != "100000" {
		t.Errorf("DBSIZE after migration: %q", got)
	}
	if got := cli(h.ns, append([]string{"MGET"}, redisSample...)...); got != want {
		t.Errorf("MGET after migration:\n%s\nwant:\n%s", got, want)
	}
	_ = exec.Command("nsenter", "--net=/run/netns/"+h.ns, "redis-cli", "-h", addr, "-p", "6379", "SHUTDOWN", "NOSAVE").Run()
	waitFor(t, 30*time.Second, path+" to go at the destination after its server", func() bool { _, ok := h.ls(t)[path]; return !ok })
}

// --tcp-established=false: CRIU refuses the established connection, and
// the source runs on with it.
func TestBridgeNoTCPEstablished(t *testing.T) {
	const path = "/notcp"
	addr := startEcho(t, path)
	c := dialEcho(t, "", addr)
	c.flowing(t, 20, 10*time.Second)
	r := cr(t, "checkpoint", "--tcp-established=false", path, "-o", image(t))
	if r.code != 7 || !strings.Contains(r.err, "Connected TCP socket") {
		t.Errorf("checkpoint --tcp-established=false with a connection: want exit 7 and CRIU's reason, got %s", r)
	}
	if e := ls(t)[path]; e.State != "running" {
		t.Errorf("source after the failed checkpoint: %+v", e)
	}
	c.flowing(t, 50, 10*time.Second)
	c.finish(t)
}

// --publish: a host port of the host's own addresses reaches the
// container (a DNAT rule in cr's table for the bridge), refused to a
// second container, published again by a restore, gone with the node.
func TestBridgePublish(t *testing.T) {
	const path = "/pub"
	port := 20000 + os.Getpid()%10000
	pub := fmt.Sprintf("%d:7000", port)
	addr := startEcho(t, path, "--publish", pub)
	nc := network.Config{Bridge: testBridge, Subnet: testSubnet}
	rules := func() []string {
		t.Helper()
		r, err := nc.Published()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	want := []string{fmt.Sprintf("%d->%s:7000/tcp", port, addr)}
	if got := rules(); !slices.Equal(got, want) {
		t.Errorf("published: %q, want %q", got, want)
	}
	gw := nthAddr(testSubnet, 1).String()
	echoOnce := func() {
		t.Helper()
		c, err := net.DialTimeout("tcp", net.JoinHostPort(gw, strconv.Itoa(port)), 5*time.Second)
		if err != nil {
			t.Fatalf("connect to the published port: %v", err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Fatalf("echo through the published port: %q, %v", line, err)
		}
	}
	echoOnce()
	var e struct {
		Publish []string `json:"publish"`
	}
	for _, en := range lsRaw(t) {
		if en["path"] == path {
			b, _ := json.Marshal(en)
			_ = json.Unmarshal(b, &e)
		}
	}
	if !slices.Equal(e.Publish, []string{pub + "/tcp"}) {
		t.Errorf("cr ls --json publish: %q", e.Publish)
	}
	wantFail(t, 4, fmt.Sprintf("address in use: host port %d/tcp is published by another container here", port),
		"run", "--net=bridge", "--publish", pub, "/pub2", "--", "sleep", "1000")
	wantFail(t, 2, `bad port "80": want HOSTPORT:PORT, or HOSTPORT:PORT/udp`, "run", "--net=bridge", "--publish", "80", "/pub2", "--", "true")
	img := image(t)
	mustCr(t, "checkpoint", path, "-o", img)
	if got := rules(); len(got) != 0 {
		t.Errorf("published after the checkpoint removed the source: %q", got)
	}
	mustCr(t, "restore", img)
	if got := rules(); !slices.Equal(got, want) {
		t.Errorf("published after restore: %q, want %q", got, want)
	}
	echoOnce()
	mustCr(t, "kill", path)
	if got := rules(); len(got) != 0 {
		t.Errorf("published after cr kill: %q", got)
	}
}

func lsRaw(t *testing.T) []map[string]any {
	t.Helper()
	var es []map[string]any
	if err := json.Unmarshal([]byte(mustCr(t, "ls", "--json", "-r")), &es); err != nil {
		t.Fatal(err)
	}
	return es
}

// A destination where another container publishes the same host port
// refuses the migration with the request.
func TestBridgeMigrateRefusedPort(t *testing.T) {
	h := newHost(t, "token")
	port := 20000 + (os.Getpid()+1)%10000
	pub := fmt.Sprintf("%d:7000", port)
	c := exec.Command("nsenter", "--net=/run/netns/"+h.ns, crBin, "run", "--net=bridge", "--ip", nthAddr(testSubnet, 100).String(), "--publish", pub, "/occupy", "--", "sleep", "1000")
	c.Env, c.Dir = h.environ(), workDir
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("cr run at the destination: %v\n%s", err, out)
	}
	t.Cleanup(func() { h.cr(t, "kill", "/occupy") })
	const path = "/pubmig"
	startEcho(t, path, "--publish", pub)
	pid := initPid(t, path)
	r := cr(t, migrateArgs(h, path)...)
	want := fmt.Sprintf("Error: migration rejected: address in use: host port %d/tcp is published by another container here\n", port)
	if r.code != 1 || r.err != want {
		t.Errorf("migrate to a host publishing port %d: want %q, got %s", port, want, r)
	}
	if e := ls(t)[path]; e.State != "running" || initPid(t, path) != pid {
		t.Errorf("source after the refusal: %+v, want running with init %d", e, pid)
	}
}

// cr snapshot of a bridge container leaves it running with its
// connection; restored from the store, it has its address again.
func TestBridgeSnapshot(t *testing.T) {
	const path = "/bsnap"
	addr := startEcho(t, path)
	c := dialEcho(t, "", addr)
	c.flowing(t, 20, 10*time.Second)
	store := filepath.Join(t.TempDir(), "store")
	mustCr(t, "snapshot", path, "--store", store)
	c.flowing(t, 20, 5*time.Second)
	c.finish(t)
	// The latest snapshot, once the server is back at accept (restored
	// during a connection, it would wait on that connection's socket,
	// whose peer is gone).
	time.Sleep(200 * time.Millisecond)
	mustCr(t, "snapshot", path, "--store", store)
	mustCr(t, "kill", path)
	mustCr(t, "restore", "--store", store, path)
	if got := ls(t)[path].Address; got != addr {
		t.Errorf("restored from the store with address %q, want %s", got, addr)
	}
	waitFor(t, 10*time.Second, "the restored server", func() bool {
		nc, err := net.DialTimeout("tcp", addr+":7000", time.Second)
		if err == nil {
			nc.Close()
		}
		return err == nil
	})
	c = dialEcho(t, "", addr)
	c.flowing(t, 20, 10*time.Second)
	c.finish(t)
}
