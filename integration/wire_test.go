package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"mvdan.cc/sh/v3/syntax"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/shim"
)

// execLine is one `SSH: EXEC ssh ... '<command>'` line of ansible -vvvv.
var execLine = regexp.MustCompile(`(?m)SSH: EXEC (ssh .*)$`)

// remoteCommands extracts the command each ssh exec ran on the target: the
// last argument of the logged ssh command line.
func remoteCommands(t *testing.T, out string) []string {
	t.Helper()
	var cmds []string
	for _, m := range execLine.FindAllStringSubmatch(out, -1) {
		f, err := syntax.NewParser().Parse(strings.NewReader(m[1]), "")
		if err != nil || len(f.Stmts) != 1 {
			t.Fatalf("cannot parse logged ssh line %q: %v", m[1], err)
		}
		call := f.Stmts[0].Cmd.(*syntax.CallExpr)
		last := call.Args[len(call.Args)-1]
		var b strings.Builder
		for _, p := range last.Parts {
			switch p := p.(type) {
			case *syntax.SglQuoted:
				b.WriteString(p.Value)
			case *syntax.Lit:
				b.WriteString(strings.ReplaceAll(p.Value, `\`, ""))
			case *syntax.DblQuoted:
				for _, q := range p.Parts {
					b.WriteString(q.(*syntax.Lit).Value)
				}
			}
		}
		cmds = append(cmds, b.String())
	}
	return cmds
}

// TestWireRecognized captures what this machine's ansible-core really sends
// (ansible-playbook -vvvv, directly to a target) and checks that the shim
// recognizes every step it must accelerate, and passes raw through.
func TestWireRecognized(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	play := filepath.Join(t.TempDir(), "wire.yml")
	must(t, os.WriteFile(play, []byte(`- hosts: all
  gather_facts: false
  tasks:
    - command: uname -r
    - command: id -u
      become: true
    - copy: {content: "x", dest: "/tmp/gmx-wire-{{ 999999 | random }}"}
      register: c
    - file: {path: "{{ c.dest }}", state: absent}
    - raw: echo raw-hello
`), 0o600))
	for _, pipelining := range []string{"False", "True"} {
		r := runPlaybook(ctx, t, lab, nil, play, "ANSIBLE_PIPELINING="+pipelining, "ANSIBLE_VERBOSITY=4")
		if r.Err != nil {
			t.Fatalf("playbook: %v\n%s", r.Err, r.Output)
		}
		kinds := map[string]int{}
		for _, cmd := range remoteCommands(t, r.Output) {
			step := shim.Parse(cmd)
			kind := strings.TrimPrefix(fmt.Sprintf("%T", step), "shim.")
			kinds[kind]++
			if p, ok := step.(shim.Passthrough); ok && cmd != "echo raw-hello" {
				t.Errorf("pipelining=%s: not recognized (%s): %s", pipelining, p.Reason, cmd)
			}
			if cmd == "echo raw-hello" {
				if _, ok := step.(shim.Passthrough); !ok {
					t.Errorf("raw command classified as %#v", step)
				}
			}
		}
		t.Logf("pipelining=%s: %v", pipelining, kinds)
		if kinds["Run"] == 0 || kinds["EchoHome"] == 0 || kinds["MakeTemp"] == 0 {
			t.Errorf("pipelining=%s: expected steps missing: %v", pipelining, kinds)
		}
	}
}
