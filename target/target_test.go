package target

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"reflect"
	"strings"
	"testing"
)

// TestQuote: Quote is Python's shlex.quote byte for byte (Ansible quotes
// with it, and the shim compares bytes), and what it quotes reads back
// as the value in /bin/sh.
func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"":                      "''",
		"abc":                   "abc",
		"/usr/bin/x":            "/usr/bin/x",
		"a-b_c@d%e+f=g:h,i.j/k": "a-b_c@d%e+f=g:h,i.j/k",
		"a b":                   "'a b'",
		"/x/my agent":           "'/x/my agent'",
		"it's":                  `'it'"'"'s'`,
		"$HOME":                 "'$HOME'",
		"*":                     "'*'",
		"~":                     "'~'",
		"a\nb":                  "'a\nb'",
	} {
		if got := Quote(in); got != want {
			t.Errorf("Quote(%q) = %s, want %s", in, got, want)
		}
	}
	for _, in := range []string{"", "it's", "a b\n$x `y` \"z\" \\ *", "'''"} {
		out, err := runSh(t, "", "printf %s "+Quote(in), nil)
		if err != nil || out != in {
			t.Errorf("sh read %q back as %q (%v)", Quote(in), out, err)
		}
	}
}

// TestLayoutNames: the names the cache holds, as the agent's cleaning
// and the shim recognize them.
func TestLayoutNames(t *testing.T) {
	sha := strings.Repeat("0123456789abcdef", 4)
	if got, ok := AgentSHA(AgentName(sha)); !ok || got != sha {
		t.Errorf("AgentSHA(AgentName) = %q %v", got, ok)
	}
	for _, bad := range []string{"agent-" + sha[:63], "agent-" + strings.ToUpper(sha), "xagent-" + sha, "agent-" + sha + ".1"} {
		if _, ok := AgentSHA(bad); ok {
			t.Errorf("AgentSHA(%q) accepted", bad)
		}
	}
	yes := map[string]bool{
		".agent-" + sha + ".123": true, ".agent-" + sha + ".": false, ".agent-" + sha: false, ".agent-" + sha + ".1x": false,
		"agent-" + sha + ".1": false,
	}
	for n, want := range yes {
		if IsAgentTemp(n) != want {
			t.Errorf("IsAgentTemp(%q) = %v", n, !want)
		}
	}
	blobs := map[string]bool{
		sha: true, BlobTempName(sha, 42): true, sha + ".tmp": false, sha + "..tmp": false, sha + ".4x.tmp": false,
		sha + "x": false, sha[:63]: false, "agent-" + sha: false,
	}
	for n, want := range blobs {
		if IsBlobName(n) != want {
			t.Errorf("IsBlobName(%q) = %v", n, !want)
		}
	}
	if BlobTempName(sha, 42) != sha+".42.tmp" || CachePath("/home/u") != "/home/u/.cache/gomux" ||
		BlobPath("/home/u") != "/home/u/.cache/gomux/blobs" || !IsCachePath("/h/.cache/gomux") || IsCachePath("/h/.cache") {
		t.Error("layout paths changed")
	}
	if FallbackRunDir(1000) != "/tmp/gomux-1000" || ForkServerSocket("k") != "py-k.sock" || ForkServerLock("k") != "py-k.lock" {
		t.Error("fork server names changed")
	}
}

// TestArches: the arches file lists amd64 and arm64 with the names
// uname -m prints for them; the Makefile reads the same file.
func TestArches(t *testing.T) {
	want := []Arch{{"amd64", []string{"x86_64", "amd64"}}, {"arm64", []string{"aarch64", "arm64"}}}
	if got := Arches(); !reflect.DeepEqual(got, want) {
		t.Errorf("Arches() = %v, want %v", got, want)
	}
	for m, want := range map[string]string{"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "riscv64": ""} {
		if got, ok := ArchOf(m); got != want || ok != (want != "") {
			t.Errorf("ArchOf(%q) = %q %v", m, got, ok)
		}
	}
	for _, bad := range []string{"amd64 x86_64\namd64", "amd64 'x'", "amd64 x86_64 amd64"} {
		if _, err := parseArches(bad); err == nil {
			t.Errorf("parseArches(%q) accepted", bad)
		}
	}
	mk, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mk), "target/arches") {
		t.Error("the Makefile does not take ARCHES from target/arches")
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
