package pyrun

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// pyPeerHelperName, as argv[0] of this test binary, makes it a bare fork
// server client: it sends one well-formed request for `PYTHON SCRIPT` to
// the socket SOCK and prints the server's answer ("ready" or the cold
// reason), then hangs up without committing the run. With -v N the
// request says version N instead of Protocol.
const pyPeerHelperName = "gomux-pyrun-peer"

func pyPeerHelper(args []string) int {
	version := Protocol
	if len(args) == 5 && args[0] == "-v" {
		v, err := strconv.Atoi(args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		version, args = v, args[2:]
	}
	if len(args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: gomux-pyrun-peer [-v N] SOCK PYTHON SCRIPT")
		return 2
	}
	sock, argv := args[0], args[1:]
	req, err := buildPyRequest(argv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	req.V = version
	hdr, _ := json.Marshal(req)
	script, err := unix.Open(argv[1], unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cwd, err := unix.Open(".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	conn, err := pyDial(sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := unix.Sendmsg(conn, hdr, unix.UnixRights(0, 1, 2, cwd, script), nil, 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	r, err := pyRecv(context.Background(), conn)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if r.Ready == 1 {
		fmt.Println("ready")
	} else {
		fmt.Println("cold: " + r.Cold)
	}
	return 0
}

// TestForkServerRefusesDifferentlyConfinedPeer is the attack of a
// confined root service on the warm interpreter: it connects to the
// socket of a fork server that an unconfined root started and asks for a
// run. The child would be forked from that server and so carry the
// server's rights, not the peer's: the server must refuse every peer
// whose ids, groups, capabilities, no_new_privs or namespaces differ

// warmServerAndPeer starts a fork server with one warm run and returns
// the lab, the run's script, the server's socket and a path that runs
// this test binary as the peer helper (pyPeerHelperName), which talks to
// the socket the way pyrun does.
func warmServerAndPeer(t *testing.T) (l *pyLab, script, sock, peer string) {
	t.Helper()
	l = newPyLab(t)
	script = fakeAnsiballZ(t, l.work, `{"act": "warm"}`)
	if r := l.run(true, "", l.python, script); r.stdout != "True\n" {
		t.Fatalf("%+v", r)
	}
	socks, _ := filepath.Glob(filepath.Join(l.dir, "gomux", "py-*.sock"))
	if len(socks) != 1 {
		t.Fatalf("sockets %v", socks)
	}
	peer = filepath.Join(t.TempDir(), pyPeerHelperName)
	self, _ := os.Executable()
	if err := os.Symlink(self, peer); err != nil {
		t.Fatal(err)
	}
	return l, script, socks[0], peer
}

// from its own (pyrun then runs the interpreter itself).
func TestForkServerRefusesDifferentlyConfinedPeer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to confine a peer with setpriv")
	}
	for _, tool := range []string{"setpriv", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	l, script, sock, peer := warmServerAndPeer(t)
	for _, c := range []struct {
		name string
		wrap []string
		want string
	}{
		{"same confinement", nil, "ready"},
		{"smaller bounding set", []string{"setpriv", "--bounding-set=-net_raw", "--"}, "cold: peer CapBnd differs"},
		{"no_new_privs", []string{"setpriv", "--no-new-privs", "--"}, "cold: peer NoNewPrivs differs"},
		{"other groups", []string{"setpriv", "--groups=65534", "--"}, "cold: peer Groups differs"},
		{"other gid", []string{"setpriv", "--regid=65534", "--clear-groups", "--"}, "cold: peer is another user"},
		{"other mount namespace", []string{"unshare", "--mount", "--"}, "cold: peer ns.mnt differs"},
	} {
		argv := append(append([]string{}, c.wrap...), peer, sock, l.python, script)
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env, cmd.Dir = l.env, l.work
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != c.want {
			t.Errorf("%s: %q %v, want %q", c.name, out, err, c.want)
		}
	}
	// The server still serves its own kind.
	if r := l.run(true, "", l.python, script); r.stdout != "True\n" {
		t.Fatalf("after refusals: %+v", r)
	}
}

// TestPyRunKeepsTheClientsConfinement: a confined pyrun (a smaller
// bounding set, no_new_privs) is served warm by a server of its own
// confinement, never by the unconfined one, so the module runs with the
// client's confinement.
func TestPyRunKeepsTheClientsConfinement(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to confine a client with setpriv")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("no setpriv")
	}
	l := newPyLab(t)
	script := fakeAnsiballZ(t, l.work, `{"act": "confinement"}`)
	type report struct {
		Warm   bool     `json:"warm"`
		Status []string `json:"status"`
	}
	runAs := func(wrap ...string) (report, string) {
		c := l.cmd(true, l.python, script)
		c.Args = append(append([]string{}, wrap...), c.Args...)
		if len(wrap) > 0 {
			p, err := exec.LookPath(wrap[0])
			if err != nil {
				t.Fatal(err)
			}
			c.Path = p
		}
		var errb strings.Builder
		c.Stderr = &errb
		out, err := c.Output()
		var r report
		if err != nil || json.Unmarshal(out, &r) != nil {
			t.Fatalf("%v: %q %v %s", wrap, out, err, errb.String())
		}
		return r, errb.String()
	}
	open, _ := runAs()
	confined, stderr := runAs("setpriv", "--bounding-set=-net_raw", "--no-new-privs", "--")
	cold, _ := exec.Command("setpriv", "--bounding-set=-net_raw", "--no-new-privs", "--", "grep", "-E", "^(CapBnd|NoNewPrivs)", "/proc/self/status").Output()
	want := strings.Fields(string(cold))
	if !open.Warm || !confined.Warm {
		t.Fatalf("not warm: open %+v confined %+v %s", open, confined, stderr)
	}
	if strings.Join(strings.Fields(strings.Join(confined.Status, " ")), " ") != strings.Join(want, " ") {
		t.Fatalf("confined module ran with %v, a cold run has %v", confined.Status, want)
	}
	if strings.Join(open.Status, " ") == strings.Join(confined.Status, " ") {
		t.Fatalf("the confinement made no difference: %v", open.Status)
	}
	socks, _ := filepath.Glob(filepath.Join(l.dir, "gomux", "py-*.sock"))
	if len(socks) != 2 {
		t.Fatalf("want one server per confinement, have %v", socks)
	}
}
