package shim

import (
	"bytes"
	"testing"
	"time"
)

func TestBudgetSharedByHosts(t *testing.T) {
	b := NewBudget(10 << 20)
	dir := "/home/u/.ansible/tmp/" + tmpID
	var hosts []*Host
	for i := 0; i < 3; i++ {
		h := NewHostLimits("u", "/home/u", "", HostLimits{Budget: b})
		baseMade(t, h, "/home/u/.ansible/tmp")
		if p := h.planCmd(mkdirCmd("~/.ansible/tmp", tmpT), WarmOptions{}); !p.Reply {
			t.Fatalf("mkdir: %+v", p)
		}
		hosts = append(hosts, h)
	}
	data := bytes.Repeat([]byte{1}, 4<<20)
	if !hosts[0].Stage(dir+"/a", data, 0o600) || !hosts[1].Stage(dir+"/a", data, 0o600) {
		t.Fatal("uploads within the budget not staged")
	}
	if hosts[2].Stage(dir+"/a", data, 0o600) {
		t.Fatal("upload beyond the shared budget staged")
	}
	if got := b.Used(); got != 8<<20 {
		t.Fatalf("budget used %d, want %d", got, 8<<20)
	}
	// Replacing a staged file counts only the new size.
	if !hosts[0].Stage(dir+"/a", data[:1<<20], 0o600) {
		t.Fatal("smaller replacement not staged")
	}
	if got := b.Used(); got != 5<<20 {
		t.Fatalf("budget used %d after replacement, want %d", got, 5<<20)
	}
	hosts[0].Flush()
	hosts[1].Drop()
	if got := b.Used(); got != 0 {
		t.Fatalf("budget used %d after flush and drop, want 0", got)
	}
}

func TestTempDirIdleExpiry(t *testing.T) {
	b := NewBudget(64 << 20)
	h := NewHostLimits("u", "/home/u", "", HostLimits{Budget: b, TempDirIdle: time.Minute})
	baseMade(t, h, "/home/u/.ansible/tmp")
	h.planCmd(mkdirCmd("~/.ansible/tmp", tmpT), WarmOptions{})
	dir := "/home/u/.ansible/tmp/" + tmpID
	if !h.Stage(dir+"/AnsiballZ_x.py", []byte("module"), 0o600) {
		t.Fatal("not staged")
	}
	if _, empty := h.Expire(time.Now()); empty {
		t.Fatal("a fresh temp dir expired")
	}
	idle, empty := h.Expire(time.Now().Add(2 * time.Minute))
	if !empty || idle < time.Minute {
		t.Fatalf("idle temp dir kept: idle %v, empty %v", idle, empty)
	}
	if b.Used() != 0 {
		t.Fatalf("expired upload still holds %d bytes of the budget", b.Used())
	}
	if h.InTempDir(dir + "/AnsiballZ_x.py") {
		t.Fatal("expired temp dir still known")
	}
}
