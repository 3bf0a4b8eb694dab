package shim

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const (
	warmT      = "/home/u/.ansible/tmp/ansible-tmp-1700000000.1-42-1234"
	warmKey    = "abcdefghijklmnopqrstuvwxyzabcdef"
	warmScript = warmT + "/AnsiballZ_command.py"
)

func TestWarmRewrites(t *testing.T) {
	o := WarmOptions{Agent: "/home/u/.cache/gomux/agent-ab", AgentID: "77:9000", Idle: 5 * time.Minute}
	guard := func(run string) string {
		return "if [ -x /home/u/.cache/gomux/agent-ab ]; then /home/u/.cache/gomux/agent-ab pyrun -agent 77:9000 -idle 5m0s -- " +
			run + "; else " + run + "; fi"
	}
	for _, c := range []struct {
		name, cmd, want string
	}{
		{
			name: "plain",
			cmd:  `/bin/sh -c '/usr/bin/python3 ` + warmScript + ` && sleep 0'`,
			want: `/bin/sh -c '` + guard(`/usr/bin/python3 `+warmScript) + ` && sleep 0'`,
		},
		{
			name: "pipelined",
			cmd:  `/bin/sh -c '/usr/bin/python3.11 && sleep 0'`,
			want: `/bin/sh -c '` + guard(`/usr/bin/python3.11`) + ` && sleep 0'`,
		},
		{
			name: "rm folded in",
			cmd:  `/bin/sh -c '/usr/bin/python3 ` + warmScript + `; rm -f -r ` + warmT + `/ > /dev/null 2>&1 && sleep 0'`,
			want: `/bin/sh -c '` + guard(`/usr/bin/python3 `+warmScript) + `; rm -f -r ` + warmT + `/ > /dev/null 2>&1 && sleep 0'`,
		},
		{
			name: "sudo",
			cmd: `/bin/sh -c 'sudo -H -S -n  -u root /bin/sh -c '"'"'echo BECOME-SUCCESS-` + warmKey + ` ; /usr/bin/python3 ` +
				warmScript + `'"'"' && sleep 0'`,
			want: `/bin/sh -c 'sudo -H -S -n  -u root /bin/sh -c '"'"'echo BECOME-SUCCESS-` + warmKey + ` ; ` +
				guard(`/usr/bin/python3 `+warmScript) + `'"'"' && sleep 0'`,
		},
		{
			name: "sudo with a password prompt, pipelined",
			cmd: `/bin/sh -c 'sudo -H -S -p "[sudo via ansible, key=` + warmKey + `] password:" -u root /bin/sh -c '"'"'echo BECOME-SUCCESS-` +
				warmKey + ` ; /usr/bin/python3'"'"' && sleep 0'`,
			want: `/bin/sh -c 'sudo -H -S -p "[sudo via ansible, key=` + warmKey + `] password:" -u root /bin/sh -c '"'"'echo BECOME-SUCCESS-` +
				warmKey + ` ; ` + guard(`/usr/bin/python3`) + `'"'"' && sleep 0'`,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, ok := Warm(c.cmd, Parse(c.cmd), o)
			if !ok || got != c.want {
				t.Fatalf("Warm(%s)\n= %v %s\nwant %s", c.cmd, ok, got, c.want)
			}
		})
	}
}

func TestWarmLeavesAlone(t *testing.T) {
	o := WarmOptions{Agent: "/home/u/.cache/gomux/agent-ab"}
	for _, cmd := range []string{
		// async_wrapper
		`/bin/sh -c 'ANSIBLE_ASYNC_DIR='"'"'~/.ansible_async'"'"' /usr/bin/python3 ` + warmT + `/async_wrapper.py j1 10 ` + warmScript + ` _ && sleep 0'`,
		// AnsiballZ debug subcommand
		`/bin/sh -c '/usr/bin/python3 ` + warmScript + ` explode && sleep 0'`,
		// not python3
		`/bin/sh -c '/usr/bin/python2.7 ` + warmScript + ` && sleep 0'`,
		`/bin/sh -c '/usr/bin/pypy3 ` + warmScript + ` && sleep 0'`,
		// a script that is not a module
		`/bin/sh -c '/usr/bin/python3 ` + warmT + `/other.py && sleep 0'`,
		// interpreter flags (not even a Run)
		`/bin/sh -c '/usr/bin/python3 -tt ` + warmScript + ` && sleep 0'`,
		// other steps
		`/bin/sh -c 'echo ~ && sleep 0'`,
		`echo raw-hello`,
		// quoting Ansible would not produce
		`/bin/sh -c "/usr/bin/python3 ` + warmScript + ` && sleep 0"`,
	} {
		got, ok := Warm(cmd, Parse(cmd), o)
		if ok || got != cmd {
			t.Errorf("Warm(%s) = %v %s, want it unchanged", cmd, ok, got)
		}
	}
	cmd := `/bin/sh -c '/usr/bin/python3 ` + warmScript + ` && sleep 0'`
	if _, ok := Warm(cmd, Parse(cmd), WarmOptions{}); ok {
		t.Errorf("rewritten without an agent path")
	}
}

// TestWarmRunsInShell runs rewritten commands in sh with a stand-in
// agent and interpreter: the agent gets the interpreter command line;
// when it is not executable, the interpreter runs as before.
func TestWarmRunsInShell(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "my agent")
	py := filepath.Join(dir, "python3")
	if err := os.WriteFile(agent, []byte("#!/bin/sh\necho AGENT \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(py, []byte("#!/bin/sh\necho PY \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	wrap := func(inner string) string { return "/bin/sh -c " + shQuote(inner) }
	plain := wrap(py + " " + warmScript + " && sleep 0")
	become := wrap("/usr/bin/env /bin/sh -c " + shQuote("echo BECOME-SUCCESS-"+warmKey+" ; "+py+" "+warmScript) + " && sleep 0")
	o := WarmOptions{Agent: agent, AgentID: "1:2"}
	for _, cmd := range []string{plain, become} {
		w, ok := Warm(cmd, Parse(cmd), o)
		if !ok {
			t.Fatalf("not rewritten: %s", cmd)
		}
		out, err := exec.Command("/bin/sh", "-c", w).CombinedOutput()
		if err != nil || !strings.HasSuffix(string(out), "AGENT pyrun -agent 1:2 -- "+py+" "+warmScript+"\n") {
			t.Errorf("%s: %q %v", w, out, err)
		}
	}
	if err := os.Chmod(agent, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{plain, become} {
		w, _ := Warm(cmd, Parse(cmd), o)
		out, err := exec.Command("/bin/sh", "-c", w).CombinedOutput()
		if err != nil || !strings.HasSuffix(string(out), "PY "+warmScript+"\n") {
			t.Errorf("agent not executable: %s: %q %v", w, out, err)
		}
	}
}

func TestShQuoteMatchesShlex(t *testing.T) {
	for in, want := range map[string]string{
		"":            "''",
		"abc/d.e-f":   "abc/d.e-f",
		"a b":         "'a b'",
		"it's":        `'it'"'"'s'`,
		"/x/my agent": "'/x/my agent'",
	} {
		if got := shQuote(in); got != want {
			t.Errorf("shQuote(%q) = %s, want %s", in, got, want)
		}
	}
}
