package shim

import (
	"io/fs"
	"reflect"
	"testing"

	"github.com/gomux/gomux/agent"
)

func mkdirCmd(base, dir string) string {
	return mkdirCmdID(base, dir, tmpID)
}

func mkdirCmdID(base, dir, id string) string {
	return wrap(`( umask 77 && mkdir -p "` + "` echo " + base + " `" + `"&& mkdir "` + "` echo " + dir + " `" + `" && echo ` + id + `="` + "` echo " + dir + " `" + `" )`)
}

// baseMade runs a first temp dir step in base on the (pretend) target,
// as gomux does before it answers temp dir steps in base locally, and
// removes that dir again.
func baseMade(t *testing.T, h *Host, base string) {
	t.Helper()
	const id = "ansible-tmp-1732412345.6789-4242-1"
	p := h.planCmd(mkdirCmdID(base, base+"/"+id, id), WarmOptions{})
	if p.Reply {
		t.Fatalf("first temp dir step in %s answered locally: %+v", base, p)
	}
	h.observe(p.Step, 0)
	if p := h.planCmd(wrap("rm -f -r "+base+"/"+id+"/ > /dev/null 2>&1"), WarmOptions{}); !p.Reply || len(p.After) != 1 {
		t.Fatalf("rm of the first temp dir: %+v", p)
	}
}

// TestHostTempBaseMadeFirst: a temp dir step in a base no step has made
// yet runs on the target, as sent, so a base that cannot be made (an
// ansible_remote_tmp under /proc or in a root-only dir) fails there and
// Ansible reports it as it would without gomux; once one succeeded, the
// next are answered locally, and the dir made on the target is batched
// like the others.
func TestHostTempBaseMadeFirst(t *testing.T) {
	h := NewHost("u", "/home/u", "")
	dir := "/home/u/.ansible/tmp/" + tmpID
	p := h.planCmd(mkdirCmd("~/.ansible/tmp", tmpT), WarmOptions{})
	if p.Reply {
		t.Fatalf("temp dir step in an unproven base answered locally: %+v", p)
	}
	h.observe(p.Step, 1) // failed on the target
	if _, _, ok := h.Virtual(dir); ok || h.InTempDir(dir) {
		t.Fatal("a temp dir whose step failed is tracked")
	}
	p = h.planCmd(mkdirCmd("~/.ansible/tmp", tmpT), WarmOptions{})
	if p.Reply {
		t.Fatalf("temp dir step answered locally after its base failed: %+v", p)
	}
	h.observe(p.Step, 0)
	if !h.InTempDir(dir + "/AnsiballZ_ping.py") {
		t.Fatal("the temp dir made on the target is not tracked")
	}
	if !h.Stage(dir+"/AnsiballZ_ping.py", []byte("m"), 0o600) {
		t.Fatal("upload into the temp dir made on the target not staged")
	}
	run := h.planCmd(wrap("/usr/bin/python3 "+tmpT+"/AnsiballZ_ping.py"), WarmOptions{})
	if want := []agent.PrepOp{{Op: "write", Path: dir + "/AnsiballZ_ping.py", Mode: 0o600, Data: []byte("m")}}; !reflect.DeepEqual(run.Prep, want) {
		t.Fatalf("run prep %+v, want only the upload", run.Prep)
	}
	if p := h.planCmd(wrap("rm -f -r "+tmpT+"/ > /dev/null 2>&1"), WarmOptions{}); !p.Reply || len(p.After) != 1 {
		t.Fatalf("rm: %+v", p)
	}
	const otherID = "ansible-tmp-1732412345.6789-4242-2"
	if p := h.planCmd(mkdirCmdID("~/.ansible/tmp", "~/.ansible/tmp/"+otherID, otherID), WarmOptions{}); !p.Reply {
		t.Fatalf("temp dir step in a proven base not answered locally: %+v", p)
	}
	// A batch that failed on the target unproves every base.
	h.prepFailed()
	const thirdID = "ansible-tmp-1732412345.6789-4242-3"
	if p := h.planCmd(mkdirCmdID("~/.ansible/tmp", "~/.ansible/tmp/"+thirdID, thirdID), WarmOptions{}); p.Reply {
		t.Fatalf("temp dir step answered locally after a failed batch: %+v", p)
	}
	// Another base is proven on its own.
	if p := h.planCmd(mkdirCmd("/var/tmp", "/var/tmp/"+tmpID), WarmOptions{}); p.Reply {
		t.Fatalf("temp dir step in another, unproven base answered locally: %+v", p)
	}
}

func TestHostTask(t *testing.T) {
	h := NewHost("u", "/home/u", "")
	baseMade(t, h, "/home/u/.ansible/tmp")
	if p := h.planCmd(wrap("echo ~"), WarmOptions{}); !p.Reply || p.Stdout != "/home/u\n" {
		t.Fatalf("echo ~: %+v", p)
	}
	if p := h.planCmd(wrap("echo ~other"), WarmOptions{}); p.Reply {
		t.Fatalf("echo ~other answered locally: %+v", p)
	}
	p := h.planCmd(mkdirCmd("~/.ansible/tmp", tmpT), WarmOptions{})
	dir := "/home/u/.ansible/tmp/" + tmpID
	if !p.Reply || p.Stdout != tmpID+"="+dir+"\n" {
		t.Fatalf("mkdir: %+v", p)
	}
	if _, mode, ok := h.Virtual(dir); !ok || mode != fs.ModeDir|0o700 {
		t.Fatalf("virtual dir: %v %v", mode, ok)
	}
	module := []byte("module")
	if !h.Stage(dir+"/AnsiballZ_ping.py", module, 0o600) {
		t.Fatal("upload not staged")
	}
	if h.Stage("/home/u/elsewhere.py", module, 0o600) {
		t.Fatal("upload outside a temp dir staged")
	}
	if p := h.planCmd(wrap("chmod u+x "+tmpT+"/ "+tmpT+"/AnsiballZ_ping.py"), WarmOptions{}); !p.Reply || p.Exit != 0 {
		t.Fatalf("chmod: %+v", p)
	}
	if size, mode, ok := h.Virtual(dir + "/AnsiballZ_ping.py"); !ok || size != 6 || mode != 0o700 {
		t.Fatalf("staged file after chmod: %d %v %v", size, mode, ok)
	}
	p = h.planCmd(wrap("/usr/bin/python3 "+tmpT+"/AnsiballZ_ping.py"), WarmOptions{})
	want := []agent.PrepOp{
		{Op: "mkdir", Path: "/home/u/.ansible/tmp", Mode: 0o700, Parents: true},
		{Op: "mkdir", Path: dir, Mode: 0o700},
		{Op: "write", Path: dir + "/AnsiballZ_ping.py", Mode: 0o700, Data: module},
		{Op: "chmod", Path: dir, Mode: 0o700},
	}
	if p.Reply || !reflect.DeepEqual(p.Prep, want) {
		t.Fatalf("run prep:\n got %+v\nwant %+v", p.Prep, want)
	}
	if _, _, ok := h.Virtual(dir); ok {
		t.Fatal("dir still virtual after the run")
	}
	p = h.planCmd(wrap("rm -f -r "+tmpT+"/ > /dev/null 2>&1"), WarmOptions{})
	if !p.Reply || !reflect.DeepEqual(p.After, []agent.PrepOp{{Op: "remove_all", Path: dir}}) {
		t.Fatalf("rm: %+v", p)
	}
	if c := h.Counters(); c.Local != 5 || c.RoundTrips != 3 {
		t.Errorf("counters %+v", c)
	}
}

func TestHostRemoveBeforeRunTouchesNothing(t *testing.T) {
	h := NewHost("u", "/home/u", "")
	baseMade(t, h, "/home/u/.ansible/tmp")
	h.planCmd(mkdirCmd("~/.ansible/tmp", tmpT), WarmOptions{})
	h.Stage("/home/u/.ansible/tmp/"+tmpID+"/x.py", []byte("x"), 0o600)
	p := h.planCmd(wrap("rm -f -r "+tmpT+"/ > /dev/null 2>&1"), WarmOptions{})
	if !p.Reply || len(p.After) != 0 {
		t.Fatalf("rm of a dir that never reached the target: %+v", p)
	}
	if ops := h.Flush(); len(ops) != 0 {
		t.Fatalf("ops left: %+v", ops)
	}
}

func TestHostPassthroughFlushesFirst(t *testing.T) {
	h := NewHost("u", "/home/u", "")
	baseMade(t, h, "/home/u/.ansible/tmp")
	h.planCmd(mkdirCmd("~/.ansible/tmp", tmpT), WarmOptions{})
	p := h.planCmd("ls -la ~/.ansible/tmp", WarmOptions{})
	if p.Reply || len(p.Prep) != 2 {
		t.Fatalf("passthrough must first make the dir: %+v", p)
	}
}

func TestApplySymbolic(t *testing.T) {
	for _, tc := range []struct {
		cur  fs.FileMode
		spec string
		want fs.FileMode
		ok   bool
	}{
		{0o600, "u+x", 0o700, true},
		{0o644, "go-r", 0o600, true},
		{0o600, "a+rx", 0o755, true},
		{0o777, "u=rw,go=", 0o600, true},
		{0o600, "+x", 0, false},
		{0o600, "755", 0, false},
		{0o600, "u+s", 0, false},
	} {
		got, ok := applySymbolic(tc.cur, tc.spec)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%o %s: %o %v", tc.cur, tc.spec, got, ok)
		}
	}
}

func TestHostRealPath(t *testing.T) {
	h := NewHost("u", "/home/u", "/data/home/u")
	calls := 0
	resolve := func(p string) (string, error) { calls++; return p, nil }
	for _, p := range []string{".", "", "/home/u"} {
		if r, err := h.RealPath(p, resolve); err != nil || r != "/data/home/u" {
			t.Errorf("%q: %q %v", p, r, err)
		}
	}
	if r, _ := h.RealPath("/etc", resolve); r != "/etc" || calls != 1 {
		t.Errorf("other path: %q after %d calls", r, calls)
	}
	if c := h.Counters(); c.Local != 3 || c.RoundTrips != 1 {
		t.Errorf("counters %+v", c)
	}
}

func TestHostSetfaclRecordedOnceItWorks(t *testing.T) {
	h := NewHost("u", "/home/u", "")
	dir := "/var/tmp/" + tmpID
	setfacl := wrap("setfacl -m u:other:r-x " + dir + "/ " + dir + "/AnsiballZ_ping.py")
	baseMade(t, h, "/var/tmp")
	h.planCmd(mkdirCmd("/var/tmp", dir), WarmOptions{})
	p := h.planCmd(setfacl, WarmOptions{})
	if p.Reply {
		t.Fatalf("first setfacl answered locally: %+v", p)
	}
	h.observe(p.Step, 0)
	// Next task: the same steps, now recorded.
	h.planCmd(wrap("rm -f -r "+dir+"/ > /dev/null 2>&1"), WarmOptions{})
	h.planCmd(mkdirCmd("/var/tmp", dir), WarmOptions{})
	h.Stage(dir+"/AnsiballZ_ping.py", []byte("m"), 0o600)
	if p := h.planCmd(setfacl, WarmOptions{}); !p.Reply {
		t.Fatalf("setfacl after a success not recorded: %+v", p)
	}
	p = h.planCmd(wrap("sudo -H -S -n  -u other /bin/sh -c 'echo BECOME-SUCCESS-"+key+" ; /usr/bin/python3 "+dir+"/AnsiballZ_ping.py'"), WarmOptions{})
	last := p.Prep[len(p.Prep)-1]
	if last.Op != "run" || !reflect.DeepEqual(last.Argv, []string{"setfacl", "-m", "u:other:r-x", dir + "/", dir + "/AnsiballZ_ping.py"}) {
		t.Fatalf("run prep ends with %+v", last)
	}
}

// TestHostStageHeldReleasesOnce: the owner's count of a staged file is
// given back exactly once whichever way the Host lets go of it (sent,
// replaced, removed before it reached the target), and never for a file
// the Host refused.
func TestHostStageHeldReleasesOnce(t *testing.T) {
	h := NewHost("u", "/home/u", "")
	baseMade(t, h, "/home/u/.ansible/tmp")
	h.planCmd(mkdirCmd("~/.ansible/tmp", tmpT), WarmOptions{})
	dir := "/home/u/.ansible/tmp/" + tmpID
	released := map[string]int{}
	rel := func(name string) func() { return func() { released[name]++ } }
	if h.StageHeld("/elsewhere/x", []byte("x"), 0o600, rel("refused")) {
		t.Fatal("a file outside any temp dir was staged")
	}
	h.StageHeld(dir+"/a.py", []byte("first"), 0o600, rel("a1"))
	h.StageHeld(dir+"/a.py", []byte("second"), 0o600, rel("a2")) // replaces a1
	h.StageHeld(dir+"/b.py", []byte("b"), 0o600, rel("b"))
	if released["a1"] != 1 || released["a2"] != 0 || released["b"] != 0 {
		t.Fatalf("after a replacement: %v", released)
	}
	if ops := h.Flush(); len(ops) == 0 {
		t.Fatal("nothing flushed")
	}
	h.Flush()
	if released["a1"] != 1 || released["a2"] != 1 || released["b"] != 1 || released["refused"] != 0 {
		t.Errorf("after the flush: %v", released)
	}
	// Removed before it reached the target.
	id2 := "ansible-tmp-1732412399.1234-4343-987654321098765"
	h.planCmd(mkdirCmdID("~/.ansible/tmp", "~/.ansible/tmp/"+id2, id2), WarmOptions{})
	if !h.StageHeld("/home/u/.ansible/tmp/"+id2+"/c.py", []byte("c"), 0o600, rel("c")) {
		t.Fatal("c.py not staged")
	}
	h.planCmd(wrap("rm -f -r ~/.ansible/tmp/"+id2+"/ > /dev/null 2>&1"), WarmOptions{})
	if released["c"] != 1 {
		t.Errorf("a staged file whose dir was removed: %v", released)
	}
}
