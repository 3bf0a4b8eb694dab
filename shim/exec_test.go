package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/gomux/gomux/agent"
)

// TestExecStartModes: the one value the proxy acts on says how each kind
// of command starts, the same choice the proxy used to rebuild from flags.
func TestExecStartModes(t *testing.T) {
	sudo := "sudo -H -S -n  -u root /bin/sh -c 'echo BECOME-SUCCESS-" + key + " ; /usr/bin/python3'"
	for _, tc := range []struct {
		name     string
		cmd      string
		terminal bool
		want     StartMode
		kind     StepKind
		watched  bool
	}{
		{"echo home", wrap("echo ~"), false, StartReply, StepEchoHome, false},
		{"module file", wrap("/usr/bin/python3 " + tmpT + "/AnsiballZ_ping.py"), false, StartBatch, StepRun, false},
		{"pipelined", wrap("/usr/bin/python3"), false, StartWholeStdin, StepRun, false},
		{"pipelined on a terminal", wrap("/usr/bin/python3"), true, StartEarly, StepRun, false},
		{"pipelined sudo not yet seen", wrap(sudo), false, StartEarly, StepRun, true},
		{"pipelined sudo on a terminal", wrap(sudo), true, StartEarly, StepRun, false},
		{"passthrough", "uname -a", false, StartBatch, StepPassthrough, false},
	} {
		h := NewHost("u", "/home/u", "")
		e := h.Exec(tc.cmd, ExecOptions{Terminal: tc.terminal})
		if e.Start != tc.want || e.Kind != tc.kind || e.BecomeWatched() != tc.watched || e.Ahead != "" {
			t.Errorf("%s: start %d kind %s watched %v ahead %q, want start %d kind %s watched %v",
				tc.name, e.Start, e.Kind, e.BecomeWatched(), e.Ahead, tc.want, tc.kind, tc.watched)
		}
	}
	if e := Unplanned(nil, "ls"); e.Start != StartBatch || e.Kind != StepNone || e.Command != "ls" || e.Kind.String() != "" {
		t.Errorf("unplanned: %+v", e)
	}
}

// TestExecLearnsBecome: a watched sudo marker seen on stdout makes the next
// run of that wrapper start with the marker sent ahead and its module
// taken whole; the marker the target then sends is removed once; a run
// whose output lacks it is passed on unchanged and unlearns the wrapper.
func TestExecLearnsBecome(t *testing.T) {
	h := NewHost("u", "/home/u", "")
	cmd := wrap("sudo -H -S -n  -u root /bin/sh -c 'echo BECOME-SUCCESS-" + key + " ; /usr/bin/python3'")
	marker := "BECOME-SUCCESS-" + key + "\n"
	read := func(e *Exec, out string) (string, bool) {
		t.Helper()
		missing := false
		b, err := io.ReadAll(e.Stdout(strings.NewReader(out), func() { missing = true }))
		if err != nil {
			t.Fatal(err)
		}
		return string(b), missing
	}
	first := h.Exec(cmd, ExecOptions{})
	if got, _ := read(first, marker+"{}"); got != marker+"{}" || !first.MarkerSeen() {
		t.Fatalf("first run: stdout %q, marker seen %v", got, first.MarkerSeen())
	}
	first.Done(0)
	second := h.Exec(cmd, ExecOptions{})
	if second.Start != StartWholeStdin || second.Ahead != marker {
		t.Fatalf("after a seen marker: start %d ahead %q", second.Start, second.Ahead)
	}
	if got, missing := read(second, marker+"{}"); got != "{}" || missing {
		t.Fatalf("marker sent ahead not removed once: %q (missing %v)", got, missing)
	}
	third := h.Exec(cmd, ExecOptions{})
	if got, missing := read(third, "sudo: a password is required\n"); got != "sudo: a password is required\n" || !missing || third.MarkerSeen() {
		t.Fatalf("output without the marker: %q missing %v", got, missing)
	}
	if e := h.Exec(cmd, ExecOptions{}); e.Ahead != "" || e.Start != StartEarly {
		t.Fatalf("a wrapper that failed is still sent ahead: %+v", e)
	}
}

// TestExecPrepFailed: a remote error with deferred steps aboard is
// Ansible's failed command, and the shim forgets the bases it trusted;
// any other error, or none aboard, is not.
func TestExecPrepFailed(t *testing.T) {
	h := NewHost("u", "/home/u", "")
	baseMade(t, h, "/home/u/.ansible/tmp")
	if p := h.planCmd(mkdirCmd("~/.ansible/tmp", tmpT), WarmOptions{}); !p.Reply {
		t.Fatalf("temp dir step not answered: %+v", p)
	}
	e := h.Exec(wrap("/usr/bin/python3 "+tmpT+"/AnsiballZ_ping.py"), ExecOptions{})
	if len(e.Prep) == 0 {
		t.Fatal("no deferred steps with the run")
	}
	if _, ok := e.PrepFailed(errors.New("connection reset")); ok {
		t.Fatal("a broken agent taken for a failed step")
	}
	re := &agent.RemoteError{Op: "batch:mkdir", Path: "/home/u/.ansible/tmp", Msg: "permission denied"}
	reply, ok := e.PrepFailed(fmt.Errorf("batch: %w", re))
	if !ok || reply.Exit != 1 || reply.Stderr != "gomux: "+re.Error()+"\n" {
		t.Fatalf("prep failure reply %+v %v", reply, ok)
	}
	const otherID = "ansible-tmp-1732412345.6789-4242-2"
	if p := h.planCmd(mkdirCmdID("~/.ansible/tmp", "~/.ansible/tmp/"+otherID, otherID), WarmOptions{}); p.Reply {
		t.Fatal("a base whose deferred mkdir failed is still answered locally")
	}
	if _, ok := Unplanned(h, "ls").PrepFailed(re); ok {
		t.Fatal("nothing deferred went with an unplanned command")
	}
}

// TestExecSendingCountsResends: a planned command's resend counts as a
// round trip; an unplanned one's does not, as before the shim owned it.
func TestExecSendingCountsResends(t *testing.T) {
	h := NewHost("u", "/home/u", "")
	bg := context.Background()
	if h.Exec("uname", ExecOptions{}).Sending(bg) == bg {
		t.Fatal("a planned command's resends are not counted")
	}
	if Unplanned(h, "uname").Sending(bg) != bg {
		t.Fatal("an unplanned command's resends are counted")
	}
}

// TestExecCold: the command sent again on a new agent is the client's.
func TestExecCold(t *testing.T) {
	h := NewHost("u", "/home/u", "")
	cmd := wrap("/usr/bin/python3 " + tmpT + "/AnsiballZ_ping.py")
	e := h.Exec(cmd, ExecOptions{Warm: WarmOptions{Agent: "/home/u/.cache/gomux/agent-" + strings.Repeat("a", 64), AgentID: "1:2"}})
	if !e.Warm || e.Command == cmd {
		t.Fatalf("not rewritten warm: %q", e.Command)
	}
	if got := e.Cold(); got != cmd || e.Warm {
		t.Fatalf("cold command %q warm %v", got, e.Warm)
	}
}
