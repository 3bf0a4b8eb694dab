package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBatchPrepThenExec(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	h := startAgent(t, "")
	dir := filepath.Join(home, ".ansible/tmp/ansible-tmp-1-2-3")
	module := []byte("print('hello from the module')\n" + strings.Repeat("#", 300<<10))
	prep := []PrepOp{
		{Op: "mkdir", Path: ".ansible/tmp", Mode: 0o700, Parents: true},
		{Op: "mkdir", Path: dir, Mode: 0o700},
		{Op: "write", Path: dir + "/AnsiballZ_x.py", Mode: 0o600, Data: module},
		{Op: "chmod", Path: dir + "/AnsiballZ_x.py", Mode: 0o700},
	}
	p, err := h.c.Batch(ctxT(t), prep, &ExecRequest{Command: "cat " + dir + "/AnsiballZ_x.py | head -1; stat -c %a " + dir + " " + dir + "/AnsiballZ_x.py"})
	if err != nil {
		t.Fatal(err)
	}
	p.Stdin().Close()
	out, _ := io.ReadAll(p.Stdout())
	io.ReadAll(p.Stderr())
	st, err := p.Wait()
	if err != nil || st.Code != 0 {
		t.Fatalf("exit %+v %v", st, err)
	}
	if string(out) != "print('hello from the module')\n700\n700\n" {
		t.Errorf("output %q", out)
	}
	// The content is cached under its hash; a second batch sends only the
	// reference and still gets the same bytes.
	ents, _ := os.ReadDir(blobDir(home))
	if len(ents) != 1 {
		t.Fatalf("blob cache holds %d entries", len(ents))
	}
	prep2 := []PrepOp{{Op: "write", Path: dir + "/again.py", Mode: 0o600, Data: module}}
	if _, err := h.c.Batch(ctxT(t), prep2, nil); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(dir + "/again.py")
	if string(b) != string(module) {
		t.Errorf("cached write differs")
	}
	// A pruned cache makes the client resend the data, with nothing
	// changed by the failed attempt.
	os.RemoveAll(blobDir(home))
	prep3 := []PrepOp{{Op: "mkdir", Path: dir + "/sub", Mode: 0o700}, {Op: "write", Path: dir + "/sub/third.py", Data: module}}
	if _, err := h.c.Batch(ctxT(t), prep3, nil); err != nil {
		t.Fatalf("resend after cache loss: %v", err)
	}
	if b, _ := os.ReadFile(dir + "/sub/third.py"); string(b) != string(module) {
		t.Errorf("resent write differs")
	}
	// remove_all ends the temp dir.
	if _, err := h.c.Batch(ctxT(t), []PrepOp{{Op: "remove_all", Path: dir}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dir not removed: %v", err)
	}
}

func TestBatchPrepFailureRunsNothing(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	h := startAgent(t, "")
	marker := filepath.Join(home, "ran")
	prep := []PrepOp{{Op: "mkdir", Path: "/nonexistent/parent/dir", Mode: 0o700}}
	_, err := h.c.Batch(ctxT(t), prep, &ExecRequest{Command: "touch " + marker})
	var re *RemoteError
	if !errors.As(err, &re) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err %v", err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("command ran after a failed prep")
	}
	if _, err := h.c.Batch(ctxT(t), []PrepOp{{Op: "write", Path: "x", SHA256: "nothex", Cached: true}}, nil); err == nil {
		t.Errorf("bad hash accepted")
	}
}

func TestBatchRunOp(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	h := startAgent(t, "")
	if _, err := h.c.Batch(ctxT(t), []PrepOp{{Op: "run", Argv: []string{"touch", "made"}}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(home, "made")); err != nil {
		t.Errorf("run op did not run in home: %v", err)
	}
	_, err := h.c.Batch(ctxT(t), []PrepOp{{Op: "run", Argv: []string{"sh", "-c", "echo nope >&2; exit 3"}}}, nil)
	if err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("failing run op: %v", err)
	}
}

// TestBatchRehashesCachedBlobs: a cached content is hashed again when a
// batch uses it. A corrupted (or planted) cache file is treated as a miss:
// nothing is changed by the failed attempt, the client resends the data,
// the file gets the right bytes and the cache is repaired.
func TestBatchRehashesCachedBlobs(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	h := startAgent(t, "")
	module := []byte("print('genuine')\n" + strings.Repeat("#", 100<<10))
	if _, err := h.c.Batch(ctxT(t), []PrepOp{{Op: "write", Path: "first.py", Data: module}}, nil); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(blobDir(home))
	if len(ents) != 1 {
		t.Fatalf("blob cache holds %d entries", len(ents))
	}
	blob := filepath.Join(blobDir(home), ents[0].Name())
	for _, bad := range [][]byte{
		[]byte("print('planted')\n"),                   // other content
		append([]byte(nil), module[:len(module)-1]...), // truncated
		append(append([]byte(nil), module...), 'x'),    // longer
	} {
		if err := os.WriteFile(blob, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		prep := []PrepOp{{Op: "mkdir", Path: "d", Mode: 0o700}, {Op: "write", Path: "d/second.py", Data: module}}
		if _, err := h.c.Batch(ctxT(t), prep, nil); err != nil {
			t.Fatalf("batch with a corrupted cache: %v", err)
		}
		if b, _ := os.ReadFile(filepath.Join(home, "d/second.py")); string(b) != string(module) {
			t.Fatalf("written from a corrupted cache: %q...", b[:min(len(b), 20)])
		}
		if b, _ := os.ReadFile(blob); string(b) != string(module) {
			t.Fatalf("cache not repaired")
		}
		os.RemoveAll(filepath.Join(home, "d"))
	}
}

// TestStartSendsStdinBehindTheCommand: Start returns before the agent
// answers, stdin written at once reaches the command, and output and exit
// are as with Batch. A content the agent has cached goes by reference, by
// way of Batch.
func TestStartSendsStdinBehindTheCommand(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	h := startAgent(t, "")
	module := []byte(strings.Repeat("m", 100<<10))
	dir := filepath.Join(home, "d")
	prep := []PrepOp{{Op: "mkdir", Path: dir, Mode: 0o700}, {Op: "write", Path: dir + "/f", Data: module}}
	p, err := h.c.Start(ctxT(t), prep, &ExecRequest{Command: "wc -c < " + dir + "/f; cat; echo err >&2; exit 3"})
	if err != nil {
		t.Fatal(err)
	}
	in := strings.Repeat("stdin line\n", 50000) // beyond one stream window
	go func() {
		io.WriteString(p.Stdin(), in)
		p.Stdin().Close()
	}()
	errc := make(chan []byte)
	go func() { b, _ := io.ReadAll(p.Stderr()); errc <- b }()
	out, _ := io.ReadAll(p.Stdout())
	stderr := <-errc
	st, err := p.Wait()
	if err != nil || st.Code != 3 {
		t.Fatalf("exit %+v %v", st, err)
	}
	if want := "102400\n" + in; string(out) != want || string(stderr) != "err\n" {
		t.Fatalf("stdout %d bytes (want %d), stderr %q", len(out), len(want), stderr)
	}
	sent, saved := h.c.BlobBytes()
	if sent != int64(len(module)) || saved != 0 {
		t.Fatalf("blob bytes sent %d saved %d after the first start", sent, saved)
	}
	p, err = h.c.Start(ctxT(t), []PrepOp{{Op: "write", Path: dir + "/g", Data: module}}, &ExecRequest{Command: "cmp " + dir + "/f " + dir + "/g"})
	if err != nil {
		t.Fatal(err)
	}
	p.Stdin().Close()
	io.ReadAll(p.Stdout())
	io.ReadAll(p.Stderr())
	if st, err := p.Wait(); err != nil || st.Code != 0 {
		t.Fatalf("second start: %+v %v", st, err)
	}
	if _, saved := h.c.BlobBytes(); saved != int64(len(module)) {
		t.Fatalf("a cached content was not sent by reference: saved %d", saved)
	}
}

// TestStartFailureIsNotStarted: a prep op that fails after Start returned
// ends the output empty, and Wait says the command never ran, with the
// agent's error.
func TestStartFailureIsNotStarted(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	h := startAgent(t, "")
	marker := filepath.Join(home, "ran")
	p, err := h.c.Start(ctxT(t), []PrepOp{{Op: "mkdir", Path: filepath.Join(home, "no/such/parent"), Mode: 0o700}},
		&ExecRequest{Command: "touch " + marker})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(p.Stdin(), "ignored")
	p.Stdin().Close()
	out, _ := io.ReadAll(p.Stdout())
	io.ReadAll(p.Stderr())
	_, err = p.Wait()
	var re *RemoteError
	if !errors.Is(err, ErrNotStarted) || !errors.As(err, &re) || len(out) != 0 {
		t.Fatalf("want ErrNotStarted with a RemoteError and no output, got %v, %q", err, out)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran after its prep failed")
	}
	if _, err := h.c.Start(ctxT(t), nil, nil); err == nil {
		t.Fatal("Start without a command accepted")
	}
}

// TestStartWholeStdin: a stdin given whole, in parts, reaches the
// command and is closed; the second time its parts go by reference, and a
// cache emptied meanwhile is answered by sending them again.
func TestStartWholeStdin(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	h := startAgent(t, "")
	archive := []byte(strings.Repeat("Z", 200<<10) + "\n")
	run := func(params string) string {
		t.Helper()
		parts := []PrepPart{{Data: []byte("head\n")}, {Data: archive}, {Data: []byte(params + "\n")}}
		p, err := h.c.Start(ctxT(t), nil, &ExecRequest{Command: "wc -c; echo done", Stdin: parts})
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan []byte)
		go func() { b, _ := io.ReadAll(p.Stderr()); errc <- b }()
		out, _ := io.ReadAll(p.Stdout())
		<-errc
		if st, err := p.Wait(); err != nil || st.Code != 0 {
			t.Fatalf("exit %+v %v", st, err)
		}
		return string(out)
	}
	want := func(params string) string { return fmt.Sprintf("%d\ndone\n", 5+len(archive)+len(params)+1) }
	if got := run("p1"); got != want("p1") {
		t.Fatalf("first: %q", got)
	}
	sent1, _ := h.c.BlobBytes()
	if got := run("p2"); got != want("p2") {
		t.Fatalf("second: %q", got)
	}
	sent2, saved2 := h.c.BlobBytes()
	if saved2 < int64(len(archive)) || sent2-sent1 > 16 {
		t.Fatalf("second run sent %d bytes, saved %d: the archive was not sent by reference", sent2-sent1, saved2)
	}
	os.RemoveAll(blobDir(home))
	if got := run("p3"); got != want("p3") {
		t.Fatalf("after the cache was emptied: %q", got)
	}
	// Start refuses a whole stdin for a terminal, where EOF cannot be sent.
	if _, err := h.c.Start(ctxT(t), nil, &ExecRequest{Command: "cat", Pty: &Pty{Term: "xterm"}, Stdin: []PrepPart{{Data: []byte("x")}}}); err == nil {
		t.Fatal("whole stdin with a pty accepted")
	}
}
