package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"sync"
	"syscall"
	"testing"

	"github.com/hashicorp/yamux"
)

// TestDecodeVersion1Request: the generic fields version 1 sent (path2,
// flag, bool) land in the named fields their op gives them; a version 2
// request's named fields are taken as they are.
func TestDecodeVersion1Request(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want request
	}{
		{`{"op":"rename","path":"a","path2":"b","bool":true}`, request{Op: "rename", Path: "a", NewPath: "b", Overwrite: true}},
		{`{"op":"rename","path":"a","path2":"b"}`, request{Op: "rename", Path: "a", NewPath: "b"}},
		{`{"op":"posix-rename","path":"a","path2":"b"}`, request{Op: "posix-rename", Path: "a", NewPath: "b"}},
		{`{"op":"link","path":"a","path2":"b"}`, request{Op: "link", Path: "a", NewPath: "b"}},
		{`{"op":"symlink","path":"t","path2":"l"}`, request{Op: "symlink", Path: "t", Link: "l"}},
		{`{"op":"open","path":"f","flag":577,"mode":420}`, request{Op: "open", Path: "f", Flags: 577, Mode: 420}},
		{`{"op":"rename","path":"a","new_path":"b","overwrite":true}`, request{Op: "rename", Path: "a", NewPath: "b", Overwrite: true}},
		{`{"op":"symlink","path":"t","link":"l"}`, request{Op: "symlink", Path: "t", Link: "l"}},
		{`{"op":"open","path":"f","flags":577,"mode":420}`, request{Op: "open", Path: "f", Flags: 577, Mode: 420}},
	} {
		got, err := decodeRequest([]byte(tc.in))
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if !reflect.DeepEqual(*got, tc.want) {
			t.Errorf("%s: got %+v, want %+v", tc.in, *got, tc.want)
		}
	}
}

// rawSession starts a real Server and opens a bare yamux session to it,
// for requests written as raw JSON.
func rawSession(t *testing.T) (*yamux.Session, string) {
	t.Helper()
	c2sR, c2sW := io.Pipe()
	s2cR, s2cW := io.Pipe()
	srv := &Server{Log: slog.New(slog.DiscardHandler)}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(context.Background(), c2sR, s2cW) }()
	br := bufio.NewReader(s2cR)
	oldest, err := readBanner(br)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := yamux.Client(rwc{Reader: br, Writer: c2sW, close: c2sW.Close}, YamuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close(); <-done })
	return sess, strconv.Itoa(oldest)
}

// rawCall sends one request header as written and reads its reply.
func rawCall(t *testing.T, sess *yamux.Session, header string, out any) error {
	t.Helper()
	st, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := writeFrame(st, frameRequest, []byte(header)); err != nil {
		t.Fatal(err)
	}
	return result(st, out)
}

// TestAgentServesVersion1Client: a client of version 1 (its banner check
// wants "1", its hello says 1, its requests carry path2, flag and bool)
// is served by this agent as before.
func TestAgentServesVersion1Client(t *testing.T) {
	sess, banner := rawSession(t)
	if banner != "1" {
		t.Fatalf("banner announces %s; a version 1 client accepts only 1", banner)
	}
	var info Info
	if err := rawCall(t, sess, `{"op":"hello","version":1}`, &info); err != nil {
		t.Fatalf("hello version 1: %v", err)
	}
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	must := func(header string) {
		t.Helper()
		if err := rawCall(t, sess, header, nil); err != nil {
			t.Fatalf("%s: %v", header, err)
		}
	}
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	// open with O_WRONLY|O_CREAT|O_TRUNC as flag: the file is created.
	st, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	writeFrame(st, frameRequest, []byte(`{"op":"open","path":`+q(a)+`,"flag":`+strconv.Itoa(os.O_WRONLY|os.O_CREATE|os.O_TRUNC)+`,"mode":384}`))
	if err := result(st, nil); err != nil {
		t.Fatalf("open with flag: %v", err)
	}
	st.Close()
	if fi, err := os.Stat(a); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("open with flag did not create the file: %v %v", fi, err)
	}
	os.WriteFile(b, []byte("b"), 0o600)
	// rename without bool: an existing path2 is kept (EEXIST).
	err = rawCall(t, sess, `{"op":"rename","path":`+q(a)+`,"path2":`+q(b)+`}`, nil)
	if !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("rename onto an existing path2 without bool: %v, want EEXIST", err)
	}
	must(`{"op":"rename","path":` + q(a) + `,"path2":` + q(b) + `,"bool":true}`)
	if _, err := os.Stat(a); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("rename with bool left %s: %v", a, err)
	}
	must(`{"op":"posix-rename","path":` + q(b) + `,"path2":` + q(a) + `}`)
	must(`{"op":"link","path":` + q(a) + `,"path2":` + q(b) + `}`)
	must(`{"op":"symlink","path":"a","path2":` + q(c) + `}`)
	if l, err := os.Readlink(c); err != nil || l != "a" {
		t.Fatalf("symlink with path2: %q %v", l, err)
	}
	if fa, _ := os.Stat(a); fa == nil {
		t.Fatalf("posix-rename with path2 did not bring %s back", a)
	} else if fb, _ := os.Stat(b); fb == nil || !os.SameFile(fa, fb) {
		t.Fatalf("link with path2 did not link %s", b)
	}
}

// fakeV1Agent is an agent of protocol version 1 as it answered: banner
// "1", a hello of any other version refused with an error naming hello,
// and every other request recorded and answered ok.
type fakeV1Agent struct {
	mu   sync.Mutex
	seen []map[string]any
}

func (f *fakeV1Agent) serve(r io.ReadCloser, w io.WriteCloser) {
	if _, err := io.WriteString(w, Banner+" 1\n"); err != nil {
		return
	}
	sess, err := yamux.Server(rwc{Reader: r, Writer: w, close: func() error { r.Close(); return w.Close() }}, YamuxConfig())
	if err != nil {
		return
	}
	defer sess.Close()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		_, p, err := readFrame(st)
		if err != nil {
			st.Close()
			continue
		}
		var m map[string]any
		json.Unmarshal(p, &m)
		f.mu.Lock()
		f.seen = append(f.seen, m)
		f.mu.Unlock()
		switch {
		case m["op"] == "hello" && m["version"] != 1.0:
			writeJSON(st, frameError, &RemoteError{Op: "hello", Msg: "protocol version " + strconv.Itoa(int(m["version"].(float64))) + " not supported, agent speaks 1"})
		case m["op"] == "hello":
			writeJSON(st, frameOK, Info{ProtocolVersion: 1, User: "u", Home: "/home/u"})
		default:
			writeJSON(st, frameOK, struct{}{})
		}
		st.Close()
	}
}

// TestClientTalksToVersion1Agent: against an agent that announces and
// speaks version 1, this client falls back to version 1 at the hello and
// sends each request in version 1's shape (path2, flag, bool).
func TestClientTalksToVersion1Agent(t *testing.T) {
	c2sR, c2sW := io.Pipe()
	s2cR, s2cW := io.Pipe()
	fake := &fakeV1Agent{}
	done := make(chan struct{})
	go func() { defer close(done); fake.serve(c2sR, s2cW) }()
	c, err := NewClient(ctxT(t), s2cR, c2sW)
	if err != nil {
		t.Fatalf("NewClient against a version 1 agent: %v", err)
	}
	defer func() { c.Close(); <-done }()
	if c.version != 1 {
		t.Fatalf("negotiated version %d, want 1", c.version)
	}
	ctx := ctxT(t)
	for _, err := range []error{
		c.Rename(ctx, "a", "b", true),
		c.Symlink(ctx, "t", "l"),
		c.Link(ctx, "a", "h"),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	f, err := c.Open(ctx, "f", os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	_ = f
	fake.mu.Lock()
	defer fake.mu.Unlock()
	want := []map[string]any{
		{"op": "hello", "version": 2.0},
		{"op": "hello", "version": 1.0},
		{"op": "rename", "path": "a", "path2": "b", "bool": true},
		{"op": "symlink", "path": "t", "path2": "l"},
		{"op": "link", "path": "a", "path2": "h"},
		{"op": "open", "path": "f", "flag": float64(os.O_WRONLY | os.O_CREATE), "mode": 384.0},
	}
	if len(fake.seen) != len(want) {
		t.Fatalf("requests %v, want %v", fake.seen, want)
	}
	for i := range want {
		got, _ := json.Marshal(fake.seen[i])
		exp, _ := json.Marshal(want[i])
		if string(got) != string(exp) {
			t.Errorf("request %d: %s, want %s", i, got, exp)
		}
	}
}

// TestClientSpeaksVersion2ToThisAgent: against an agent of this build the
// client keeps its own version and the named fields.
func TestClientSpeaksVersion2ToThisAgent(t *testing.T) {
	h := startAgent(t, "")
	if h.c.version != ProtocolVersion || h.c.Info().ProtocolVersion != ProtocolVersion {
		t.Fatalf("negotiated %d, agent says %d; want %d", h.c.version, h.c.Info().ProtocolVersion, ProtocolVersion)
	}
	b, _ := json.Marshal(h.c.wire(&request{Op: "rename", Path: "a", NewPath: "b", Overwrite: true}))
	if string(b) != `{"op":"rename","path":"a","new_path":"b","overwrite":true}` {
		t.Fatalf("version 2 rename on the wire: %s", b)
	}
}
