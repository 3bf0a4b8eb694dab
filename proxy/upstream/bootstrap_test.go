package upstream

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/gomux/gomux/agent"
	"github.com/gomux/gomux/agent/dist"
	"github.com/gomux/gomux/internal/fixedpath"
)

// fakeAgent is a shell script standing in for the agent binary: the
// launcher and upload scripts only care that it verifies and runs.
func fakeAgent(t *testing.T) dist.Binary {
	t.Helper()
	data := []byte("#!/bin/sh\necho \"" + agent.Banner + " 1 $1\"\n")
	sum := sha256.Sum256(data)
	arch := map[string]string{"x86_64": "amd64", "aarch64": "arm64"}[machine(t)]
	return dist.Binary{Arch: arch, SHA256: hex.EncodeToString(sum[:]), Data: data}
}

func machine(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("uname", "-m").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func runScript(t *testing.T, home, script string, stdin []byte) (string, int) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Env = []string{"HOME=" + home, "PATH=/usr/bin:/bin"}
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

func TestLauncherUploadAndVerify(t *testing.T) {
	home := t.TempDir()
	bin := fakeAgent(t)
	bins := map[string]dist.Binary{bin.Arch: bin}

	out, _ := runScript(t, home, launcherScript(bins, 30), nil)
	if !strings.HasPrefix(out, needAgentLine+" "+bin.SHA256) {
		t.Fatalf("cold launcher said %q", out)
	}
	// A corrupted transfer is refused and leaves nothing to run.
	out, code := runScript(t, home, uploadScript(bin.SHA256), bin.Data[:10])
	if code == 0 || strings.Contains(out, uploadedLine) {
		t.Fatalf("truncated upload accepted: %q %d", out, code)
	}
	if ents, _ := os.ReadDir(filepath.Join(home, ".cache/gomux")); len(ents) != 0 {
		t.Fatalf("truncated upload left %v", ents)
	}
	out, code = runScript(t, home, uploadScript(bin.SHA256), bin.Data)
	if code != 0 || !strings.Contains(out, uploadedLine) {
		t.Fatalf("upload: %q %d", out, code)
	}
	fi, err := os.Stat(filepath.Join(home, ".cache/gomux/agent-"+bin.SHA256))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("cached agent: %v %v", fi, err)
	}
	out, _ = runScript(t, home, launcherScript(bins, 30), nil)
	if out != agent.Banner+" 1 serve\n" {
		t.Fatalf("warm launcher said %q", out)
	}
	// A cached file that no longer matches its hash is never run.
	p := filepath.Join(home, ".cache/gomux/agent-"+bin.SHA256)
	os.WriteFile(p, []byte("#!/bin/sh\necho tampered\n"), 0o700)
	out, _ = runScript(t, home, launcherScript(bins, 30), nil)
	if !strings.HasPrefix(out, needAgentLine) {
		t.Fatalf("tampered agent: launcher said %q", out)
	}
}

func TestLauncherUnknownArch(t *testing.T) {
	out, _ := runScript(t, t.TempDir(), launcherScript(map[string]dist.Binary{"riscv64x": {Arch: "riscv64x"}}, 30), nil)
	if !strings.HasPrefix(out, noAgentLine) {
		t.Fatalf("launcher said %q", out)
	}
}

func TestReadLauncherStatusSkipsNoise(t *testing.T) {
	in := "Welcome to host\nlast login...\n" + agent.Banner + " 1\nrest"
	br := bufio.NewReader(strings.NewReader(in))
	st, err := readLauncherStatus(br)
	if err != nil || st != agent.Banner+" 1" {
		t.Fatalf("%q %v", st, err)
	}
	if rest, _ := br.ReadString(0); rest != "rest" {
		t.Errorf("consumed past the banner: %q", rest)
	}
	if _, err := readLauncherStatus(bufio.NewReader(strings.NewReader("just noise\n"))); err == nil {
		t.Error("EOF without banner accepted")
	}
	if _, err := readLauncherStatus(bufio.NewReader(strings.NewReader(strings.Repeat("x", 70<<10)))); err == nil {
		t.Error("endless noise accepted")
	}
}

// TestLauncherDistrustsOpenCache: an agent cache directory that others
// can write (a wider mode, a symlink) is never run from; the launcher
// says why, and the upload replaces the directory with a fresh 0700 one,
// dropping whatever others put there. A ~/.cache open to others cannot be
// fixed by gomux: no agent.
func TestLauncherDistrustsOpenCache(t *testing.T) {
	bin := fakeAgent(t)
	bins := map[string]dist.Binary{bin.Arch: bin}
	install := func(home string) string {
		t.Helper()
		if out, code := runScript(t, home, uploadScript(bin.SHA256), bin.Data); code != 0 || !strings.Contains(out, uploadedLine) {
			t.Fatalf("upload: %q %d", out, code)
		}
		return filepath.Join(home, ".cache/gomux")
	}
	for _, c := range []struct {
		name  string
		spoil func(home, d string)
	}{
		{"world-writable", func(home, d string) { os.Chmod(d, 0o777) }},
		{"group-writable", func(home, d string) { os.Chmod(d, 0o770) }},
		{"symlink", func(home, d string) {
			other := filepath.Join(home, "elsewhere")
			os.Rename(d, other)
			os.Chmod(other, 0o777)
			os.Symlink(other, d)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			home := t.TempDir()
			d := install(home)
			c.spoil(home, d)
			os.WriteFile(filepath.Join(d, "planted-by-someone-else"), []byte("x"), 0o644)
			out, _ := runScript(t, home, launcherScript(bins, 30), nil)
			if !strings.HasPrefix(out, needAgentLine+" "+bin.SHA256+" ") || !strings.Contains(out, "unsafe agent cache") {
				t.Fatalf("launcher with an open cache said %q", out)
			}
			install(home)
			st, err := os.Lstat(d)
			if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
				t.Fatalf("cache after upload: %v %v", st, err)
			}
			if _, err := os.Stat(filepath.Join(d, "planted-by-someone-else")); err == nil {
				t.Fatalf("the upload kept a file from the open cache")
			}
			if out, _ := runScript(t, home, launcherScript(bins, 30), nil); out != agent.Banner+" 1 serve\n" {
				t.Fatalf("launcher after the upload said %q", out)
			}
		})
	}
	t.Run("open ~/.cache", func(t *testing.T) {
		home := t.TempDir()
		d := install(home)
		os.Chmod(filepath.Dir(d), 0o777)
		out, _ := runScript(t, home, launcherScript(bins, 30), nil)
		if !strings.HasPrefix(out, noAgentLine+" unsafe agent cache: ") {
			t.Fatalf("launcher with an open ~/.cache said %q", out)
		}
		if out, code := runScript(t, home, uploadScript(bin.SHA256), bin.Data); code == 0 || strings.Contains(out, uploadedLine) {
			t.Fatalf("upload into an open ~/.cache: %q %d", out, code)
		}
	})
	t.Run("symlinked agent", func(t *testing.T) {
		home := t.TempDir()
		d := install(home)
		f := filepath.Join(d, "agent-"+bin.SHA256)
		real := filepath.Join(home, "real-agent")
		os.Rename(f, real)
		os.Symlink(real, f)
		if out, _ := runScript(t, home, launcherScript(bins, 30), nil); !strings.HasPrefix(out, needAgentLine) {
			t.Fatalf("launcher ran a symlinked agent: %q", out)
		}
	})
}

// TestLaunchersAndUploadsOnASharedHome starts agents on many targets
// that share one home (an NFS home, or a lab's targets): every connection
// uploads and launches at once, and every launcher must still start the
// agent, though the others replace the cached file under it.
func TestLaunchersAndUploadsOnASharedHome(t *testing.T) {
	home := t.TempDir()
	bin := fakeAgent(t)
	bins := map[string]dist.Binary{bin.Arch: bin}
	const n = 12
	var wg sync.WaitGroup
	outs := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// As startAgent: launch, and after an upload launch once more.
			for try := 0; try < 2; try++ {
				out, _ := runScript(t, home, launcherScript(bins, 30), nil)
				if !strings.HasPrefix(out, needAgentLine) {
					outs[i] = out
					return
				}
				if o, code := runScript(t, home, uploadScript(bin.SHA256), bin.Data); code != 0 {
					outs[i] = "upload failed: " + o
					return
				}
			}
			outs[i] = "not started after an upload"
		}()
	}
	wg.Wait()
	for i, out := range outs {
		if out != agent.Banner+" 1 serve\n" {
			t.Errorf("connection %d: %q", i, out)
		}
	}
}

// TestTargetProgramsFixPath: every shell program gomux runs on a target
// parses (sh -n) and runs no tool by a bare name before it has fixed
// PATH (fixedpath.Unfixed).
func TestTargetProgramsFixPath(t *testing.T) {
	bin := fakeAgent(t)
	for name, prog := range map[string]string{
		"launcher": launcherScript(map[string]dist.Binary{bin.Arch: bin, "arm64": {Arch: "arm64", SHA256: bin.SHA256}}, 30),
		"upload":   uploadScript(bin.SHA256),
	} {
		if out, err := exec.Command("/bin/sh", "-n", "-c", prog).CombinedOutput(); err != nil {
			t.Errorf("%s: sh -n: %v %s", name, err, out)
		}
		if bare, err := fixedpath.Unfixed(prog); err != nil || len(bare) > 0 {
			t.Errorf("%s runs %q through the PATH it was given (%v):\n%s", name, bare, err, prog)
		}
	}
}

// TestBootstrapIgnoresHostilePath runs the upload and the launcher with a
// directory of fake tools first in PATH: none of them runs, and the
// agent is started with the PATH the launcher was given, unchanged.
func TestBootstrapIgnoresHostilePath(t *testing.T) {
	home, hostile, marks := t.TempDir(), t.TempDir(), t.TempDir()
	for _, tool := range []string{"uname", "id", "stat", "sha256sum", "cut", "mkdir", "cat", "chmod", "mv", "rm"} {
		fake := "#!/bin/sh\n: > " + marks + "/" + tool + "\nexec /usr/bin/" + tool + " \"$@\"\n"
		if err := os.WriteFile(filepath.Join(hostile, tool), []byte(fake), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data := []byte("#!/bin/sh\necho \"" + agent.Banner + " 1 $1 $PATH\"\n")
	sum := sha256.Sum256(data)
	bin := dist.Binary{Arch: fakeAgent(t).Arch, SHA256: hex.EncodeToString(sum[:]), Data: data}
	path := hostile + ":/usr/bin:/bin"
	run := func(script string, stdin []byte) string {
		cmd := exec.Command("/bin/sh", "-c", script)
		cmd.Env = []string{"HOME=" + home, "PATH=" + path}
		cmd.Stdin = bytes.NewReader(stdin)
		out, _ := cmd.Output()
		return string(out)
	}
	if out := run(uploadScript(bin.SHA256), bin.Data); !strings.Contains(out, uploadedLine) {
		t.Fatalf("upload: %q", out)
	}
	if out := run(launcherScript(map[string]dist.Binary{bin.Arch: bin}, 30), nil); out != agent.Banner+" 1 serve "+path+"\n" {
		t.Errorf("launcher said %q, want the agent run with PATH %s", out, path)
	}
	if ents, _ := os.ReadDir(marks); len(ents) > 0 {
		var ran []string
		for _, e := range ents {
			ran = append(ran, e.Name())
		}
		t.Errorf("fake tools ran: %v", ran)
	}
}
