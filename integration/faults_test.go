package integration

import (
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/gomux/gomux/integration/harness"
)

// repeatRuns is how many times a reliability test repeats its playbook:
// GOMUX_REPEAT_RUNS, else def.
func repeatRuns(def int) int {
	if n, err := strconv.Atoi(os.Getenv("GOMUX_REPEAT_RUNS")); err == nil && n > 0 {
		return n
	}
	return def
}

// TestPipelinedBecomeRepeated runs a short become playbook with pipelining
// on, many times in a row through one gomux with the ControlMasters kept
// between runs, as a user's would be. Every run must reach every host: a
// spurious UNREACHABLE is a failed deployment stock Ansible does not have.
// 10 runs in make test, 30 (GOMUX_REPEAT_RUNS) in make soak; before the
// exit report came ahead of EOF, about one run in 20 to 30 lost a host.
func TestPipelinedBecomeRepeated(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 10, RTT: 50 * time.Millisecond})
	g := startGomux(t, lab, gomuxOptions{})
	runs := repeatRuns(10)
	ctx := ctxT(t, time.Duration(runs)*time.Minute+5*time.Minute)
	cp := controlDir(t)
	failed := 0
	for i := range runs {
		r := runPlaybookOpts(ctx, t, lab, g, playbookPath("become-short.yml"), playOpts{
			env:        []string{"ANSIBLE_PIPELINING=True", "ANSIBLE_SSH_ARGS=-C -o ControlMaster=auto -o ControlPersist=60s"},
			controlDir: cp,
		})
		ok := r.Err == nil && len(r.Recap) == len(lab.Targets)
		for _, v := range r.Recap {
			if !strings.Contains(v, "unreachable=0 failed=0") {
				ok = false
			}
		}
		if !ok {
			failed++
			t.Errorf("run %d of %d failed: %v\n%s", i+1, runs, r.Err, r.Output)
		}
	}
	t.Logf("%d runs, %d failed", runs, failed)
}

// innerClient logs in to target through gomux with x/crypto's client, the
// way ssh -J does: the front connection, a direct-tcpip channel to the
// target, and the inner SSH session over it, with the host certificate
// checked against gomux's CA line.
func innerClient(t *testing.T, g *Gomux, lab *harness.Lab, target string) *gossh.Client {
	t.Helper()
	b, err := os.ReadFile(lab.ClientKey)
	must(t, err)
	signer, err := gossh.ParsePrivateKey(b)
	must(t, err)
	hk, err := knownhosts.New(g.KnownHosts)
	must(t, err)
	front, err := gossh.Dial("tcp", g.Addr, &gossh.ClientConfig{
		User: lab.User, Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: func(_ string, remote net.Addr, key gossh.PublicKey) error {
			return hk("gomux:22", remote, key)
		},
		Timeout: 10 * time.Second,
	})
	must(t, err)
	t.Cleanup(func() { front.Close() })
	addr := net.JoinHostPort(target, "22")
	nc, err := front.Dial("tcp", addr)
	must(t, err)
	conn, chans, reqs, err := gossh.NewClientConn(nc, addr, &gossh.ClientConfig{
		User: lab.User, Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: hk, Timeout: 10 * time.Second,
	})
	must(t, err)
	c := gossh.NewClient(conn, chans, reqs)
	t.Cleanup(func() { c.Close() })
	return c
}

// TestExitReportBeforeEOF checks that every way gomux ends a session
// channel (a command the agent ran, a step the shim answered itself, an
// sftp session) sends the exit report before EOF, as sshd does. OpenSSH's
// client closes a channel whose input has ended as soon as it sees EOF;
// a report sent after EOF can lose that race and the client then exits
// 255, which Ansible reports as UNREACHABLE.
func TestExitReportBeforeEOF(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	g := startGomux(t, lab, gomuxOptions{})
	c := innerClient(t, g, lab, lab.Targets[0].Addr)
	cases := []struct{ name, kind, arg string }{
		{"agent exec", "exec", "echo hello"},
		{"agent exec, exit 3", "exec", "exit 3"},
		{"shim echo home", "exec", "/bin/sh -c 'echo ~" + lab.User + " && sleep 0'"},
		{"sftp", "subsystem", "sftp"},
	}
	for _, tc := range cases {
		for i := range 20 {
			ch, reqs, err := c.OpenChannel("session", nil)
			must(t, err)
			ok, err := ch.SendRequest(tc.kind, true, gossh.Marshal(struct{ S string }{tc.arg}))
			if err != nil || !ok {
				t.Fatalf("%s: %s request refused: %v", tc.name, tc.kind, err)
			}
			// The client's input ends at once, as Ansible's pipelined
			// stdin does once the module is written. (A command that
			// ended already has closed the channel: nothing to do.)
			ch.CloseWrite()
			io.Copy(io.Discard, ch)
			// x/crypto's mux handles packets in order and queues a
			// request before it handles the next packet, so a report
			// sent before EOF is queued by now.
			var report string
		drain:
			for {
				select {
				case r, open := <-reqs:
					if !open {
						break drain
					}
					if r.Type == "exit-status" || r.Type == "exit-signal" {
						report = r.Type
						break drain
					}
				default:
					break drain
				}
			}
			ch.Close()
			if report == "" {
				t.Fatalf("%s, try %d: channel reached EOF before its exit report", tc.name, i+1)
			}
		}
	}
}
