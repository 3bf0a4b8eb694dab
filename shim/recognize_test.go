package shim

import (
	"reflect"
	"strings"
	"testing"
)

// wrap quotes cmd the way Ansible does: /bin/sh -c '<cmd> && sleep 0',
// single quotes escaped as '"'"'.
func wrap(cmd string) string {
	return "/bin/sh -c '" + strings.ReplaceAll(cmd+" && sleep 0", "'", `'"'"'`) + "'"
}

const (
	tmpID = "ansible-tmp-1732412345.6789-4242-123456789012345"
	tmpT  = "~/.ansible/tmp/" + tmpID
	key   = "abcdefghijklmnopqrstuvwxyzabcdef"
)

func TestParseAnsibleSteps(t *testing.T) {
	home := PathExpr{Value: "~/.ansible/tmp", Tilde: true}
	dir := PathExpr{Value: tmpT, Tilde: true}
	for _, tc := range []struct {
		name string
		cmd  string
		want Step
	}{
		{"echo home", wrap("echo ~"), EchoHome{}},
		{"echo home of user", wrap("echo ~deploy"), EchoHome{User: "deploy"}},
		{"mkdir", wrap(`( umask 77 && mkdir -p "` + "` echo ~/.ansible/tmp `" + `"&& mkdir "` + "` echo " + tmpT + " `" + `" && echo ` + tmpID + `="` + "` echo " + tmpT + " `" + `" )`),
			MakeTemp{Base: home, Dir: dir, ID: tmpID}},
		{"mkdir /var/tmp", wrap(`( umask 77 && mkdir -p "` + "` echo /var/tmp `" + `"&& mkdir "` + "` echo /var/tmp/" + tmpID + " `" + `" && echo ` + tmpID + `="` + "` echo /var/tmp/" + tmpID + " `" + `" )`),
			MakeTemp{Base: PathExpr{Value: "/var/tmp"}, Dir: PathExpr{Value: "/var/tmp/" + tmpID}, ID: tmpID}},
		{"chmod", wrap("chmod u+x " + tmpT + "/ " + tmpT + "/AnsiballZ_command.py"),
			Chmod{Mode: "u+x", Paths: []PathExpr{{tmpT + "/", true}, {tmpT + "/AnsiballZ_command.py", true}}}},
		{"setfacl", wrap("setfacl -m u:other:r-x /var/tmp/" + tmpID + "/ /var/tmp/" + tmpID + "/AnsiballZ_ping.py"),
			Setfacl{Spec: "u:other:r-x", Paths: []PathExpr{{Value: "/var/tmp/" + tmpID + "/"}, {Value: "/var/tmp/" + tmpID + "/AnsiballZ_ping.py"}}}},
		{"run", wrap("/usr/bin/python3 " + tmpT + "/AnsiballZ_command.py"),
			Run{Interpreter: "/usr/bin/python3", Script: PathExpr{tmpT + "/AnsiballZ_command.py", true}, Args: []string{}}},
		{"pipelined", wrap("/usr/bin/python3"), Run{Interpreter: "/usr/bin/python3"}},
		{"rm", wrap("rm -f -r " + tmpT + "/ > /dev/null 2>&1"), Remove{Path: PathExpr{tmpT + "/", true}}},
		{"sudo", wrap("sudo -H -S -n  -u root /bin/sh -c 'echo BECOME-SUCCESS-" + key + " ; /usr/bin/python3 " + tmpT + "/AnsiballZ_ping.py'"),
			Run{Become: &Become{Method: "sudo", Key: key, Wrapper: []string{"sudo", "-H", "-S", "-n", "-u", "root"}, NonInteractive: true}, Interpreter: "/usr/bin/python3", Script: PathExpr{tmpT + "/AnsiballZ_ping.py", true}, Args: []string{}}},
		{"sudo pipelined", wrap("sudo -H -S -n  -u root /bin/sh -c 'echo BECOME-SUCCESS-" + key + " ; /usr/bin/python3'"),
			Run{Become: &Become{Method: "sudo", Key: key, Wrapper: []string{"sudo", "-H", "-S", "-n", "-u", "root"}, NonInteractive: true}, Interpreter: "/usr/bin/python3"}},
		{"sudo password", wrap(`sudo -H -S -p "[sudo via ansible, key=` + key + `] password:" -u root /bin/sh -c 'echo BECOME-SUCCESS-` + key + ` ; /usr/bin/python3'`),
			Run{Become: &Become{Method: "sudo", Key: key, Prompt: true,
				Wrapper: []string{"sudo", "-H", "-S", "-p", "[sudo via ansible, key=" + key + "] password:", "-u", "root"}}, Interpreter: "/usr/bin/python3"}},
		{"su", wrap("su  root -c '/bin/sh -c '\"'\"'echo BECOME-SUCCESS-" + key + " ; /usr/bin/python3'\"'\"''"),
			Run{Become: &Become{Method: "su", Key: key, Prompt: true, Wrapper: []string{"su", "root", "-c"}}, Interpreter: "/usr/bin/python3"}},
		{"async", wrap("ANSIBLE_ASYNC_DIR='~/.ansible_async' /usr/bin/python3 " + tmpT + "/async_wrapper.py j123 10 " + tmpT + "/AnsiballZ_command.py _"),
			Run{Env: []string{"ANSIBLE_ASYNC_DIR=~/.ansible_async"}, Interpreter: "/usr/bin/python3", Script: PathExpr{tmpT + "/async_wrapper.py", true},
				Args: []string{"j123", "10", tmpT + "/AnsiballZ_command.py", "_"}}},
		{"rm folded in", "/bin/sh -c '/usr/bin/python3 " + tmpT + "/AnsiballZ_ping.py; rm -f -r " + tmpT + "/ > /dev/null 2>&1 && sleep 0'",
			Run{Interpreter: "/usr/bin/python3", Script: PathExpr{tmpT + "/AnsiballZ_ping.py", true}, Args: []string{}, RemoveAfter: &PathExpr{tmpT + "/", true}}},
	} {
		got := Parse(tc.cmd)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s:\n cmd  %s\n got  %#v\n want %#v", tc.name, tc.cmd, got, tc.want)
		}
	}
}

func TestParsePassesThroughTheRest(t *testing.T) {
	for _, cmd := range []string{
		"echo raw-hello", // raw: no wrapper
		"/bin/sh -c 'echo ~ && sleep 0' extra",
		wrap("echo ~ ; rm -rf /"),
		wrap("echo $HOME"),
		wrap("echo ~/x"),
		wrap("rm -f -r /home/user > /dev/null 2>&1"), // not a temp dir
		wrap("rm -f -r " + tmpT + "/"),               // no redirections
		wrap("rm -r " + tmpT + "/ > /dev/null 2>&1"), // no -f
		wrap("chmod u+x $(evil)"),
		wrap("/usr/bin/python3 /etc/evil.py"),
		wrap("/usr/bin/python3 -c 'print(1)'"),
		wrap("FOO=$(id) /usr/bin/python3"),
		wrap("python3 " + tmpT + "/AnsiballZ_ping.py"), // relative interpreter
		wrap("sudo -u root /bin/sh -c 'echo BECOME-SUCCESS-short ; /usr/bin/python3'"),
		wrap("sudo -u root /bin/sh -c 'echo BECOME-SUCCESS-" + key + " ; id'"),
		wrap(`( umask 77 && mkdir -p "` + "` echo ~/.ansible/tmp `" + `"&& mkdir "` + "` echo /elsewhere/" + tmpID + " `" + `" && echo ` + tmpID + `="` + "` echo /elsewhere/" + tmpID + " `" + `" )`),
		"/bin/sh -c 'unterminated",
		"",
		// Nested deeper than gomux parses: not parsed at all.
		wrap("echo " + strings.Repeat("$(", 600) + strings.Repeat(")", 600)),
		strings.Repeat("$(", 30000),
	} {
		if _, ok := Parse(cmd).(Passthrough); !ok {
			t.Errorf("%q: %#v, want Passthrough", cmd, Parse(cmd))
		}
	}
}

// TooNested is what keeps a person's command from costing gomux a stack
// per nesting level: just past the bound it says so, Ansible's own
// wrappers are far under it.
func TestTooNested(t *testing.T) {
	if TooNested(wrap("sudo -H -S -n -u root /bin/sh -c 'echo BECOME-SUCCESS-" + key + " ; /usr/bin/python3 " + tmpT + "/AnsiballZ_ping.py'")) {
		t.Error("an Ansible become run counted as too nested")
	}
	if TooNested(strings.Repeat("(", maxNesting)) || !TooNested(strings.Repeat("{", maxNesting+1)) || !TooNested(strings.Repeat("`[", maxNesting)) {
		t.Error("the bound is not maxNesting")
	}
}

func TestResolve(t *testing.T) {
	for _, tc := range []struct {
		p    PathExpr
		want string
		ok   bool
	}{
		{PathExpr{"~", true}, "/home/u", true},
		{PathExpr{"~/.ansible/tmp", true}, "/home/u/.ansible/tmp", true},
		{PathExpr{"~u/.ansible/tmp", true}, "/home/u/.ansible/tmp", true},
		{PathExpr{"~other/x", true}, "", false},
		{PathExpr{"/var/tmp", false}, "/var/tmp", true},
	} {
		got, ok := tc.p.Resolve("u", "/home/u")
		if got != tc.want || ok != tc.ok {
			t.Errorf("%+v: %q %v", tc.p, got, ok)
		}
	}
}

// FuzzParse: no input panics, and a classified step never comes from a
// command outside the wrapper grammar.
func FuzzParse(f *testing.F) {
	f.Add(wrap("echo ~"))
	f.Add(wrap("/usr/bin/python3 " + tmpT + "/AnsiballZ_command.py"))
	f.Add(wrap("sudo -H -S -n  -u root /bin/sh -c 'echo BECOME-SUCCESS-" + key + " ; /usr/bin/python3'"))
	f.Add(wrap("rm -f -r " + tmpT + "/ > /dev/null 2>&1"))
	f.Add(wrap("chmod u+x " + tmpT + "/"))
	f.Add("echo raw")
	f.Fuzz(func(t *testing.T, cmd string) {
		step := Parse(cmd)
		if _, ok := step.(Passthrough); ok {
			return
		}
		if !strings.Contains(cmd, "-c") {
			t.Fatalf("classified %q as %#v without a shell -c wrapper", cmd, step)
		}
	})
}
