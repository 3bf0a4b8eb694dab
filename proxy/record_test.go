package proxy

import (
	"bufio"
	"encoding/json"
	"os"
	"testing"
)

func TestRecorder(t *testing.T) {
	dir := t.TempDir()
	r, err := newRecorder(dir, castHeader{Width: 80, Height: 24, Env: map[string]string{"TERM": "xterm"},
		User: "alice", Target: "web1:22", Command: "top"})
	if err != nil {
		t.Fatal(err)
	}
	// "é" is two bytes; split across two writes it must still arrive whole.
	r.Write([]byte("caf\xc3"))
	r.Write([]byte("\xa9 ok\n"))
	r.resize(100, 30)
	r.Write([]byte("\xe2\x82"))
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(r.path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("recording mode: %v %v", fi, err)
	}
	f, _ := os.Open(r.path)
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	var h map[string]any
	if err := json.Unmarshal(sc.Bytes(), &h); err != nil || h["version"] != float64(2) || h["width"] != float64(80) ||
		h["height"] != float64(24) || h["timestamp"] == nil || h["env"].(map[string]any)["TERM"] != "xterm" || h["gomux_user"] != "alice" {
		t.Fatalf("header %s: %v", sc.Bytes(), err)
	}
	var events [][]any
	for sc.Scan() {
		var e []any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || len(e) != 3 {
			t.Fatalf("event %s: %v", sc.Bytes(), err)
		}
		events = append(events, e)
	}
	want := [][2]string{{"o", "caf"}, {"o", "é ok\n"}, {"r", "100x30"}, {"o", "\ufffd\ufffd"}}
	if len(events) != len(want) {
		t.Fatalf("events %v", events)
	}
	for i, w := range want {
		if events[i][1] != w[0] || events[i][2] != w[1] {
			t.Errorf("event %d: %v, want %v", i, events[i], w)
		}
	}
}
