package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// TestImage runs `make image` and checks what it wrote as a runtime
// would read it: the OCI layout's one manifest and config (numeric
// non-root user, gomux serve as entrypoint and command, the exposed
// ports, the state volume, the labels), every file of the flattened
// layers (exactly the expected tree, no shell anywhere), and the
// unpacked gomux binary itself, which must be static and answer
// `gomux version` as the image's user.
func TestImage(t *testing.T) {
	dir := t.TempDir()
	// The unpacked binary runs as the image's user: let it reach it.
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	oci, tb := filepath.Join(dir, "oci"), filepath.Join(dir, "gomux.tar")
	cmd := exec.Command("make", "-C", "../..", "image", "IMAGE_DIR="+oci, "IMAGE_TAR="+tb)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	img := readLayout(t, oci)
	if err := validate.Image(img); err != nil {
		t.Fatalf("invalid image: %v", err)
	}
	cf := checkConfig(t, img)
	files := unpack(t, img, filepath.Join(dir, "root"))
	checkTree(t, files)
	checkBinary(t, filepath.Join(dir, "root", binPath), cf.Config.Labels["org.opencontainers.image.version"])

	// The tarball for docker/podman load holds the very same config
	// (the image ID) and layer; only the manifest is made on load.
	ti, err := tarball.ImageFromPath(tb, nil)
	if err != nil {
		t.Fatalf("tarball: %v", err)
	}
	if a, b := ids(t, img), ids(t, ti); !slices.Equal(a, b) {
		t.Errorf("tarball image config and layers %s, layout image %s", b, a)
	}
}

// readLayout opens the layout's only image and checks its media types.
func readLayout(t *testing.T, dir string) v1.Image {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("layout: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].MediaType != types.OCIManifestSchema1 {
		t.Fatalf("index: want one OCI manifest, got %+v", im.Manifests)
	}
	d := im.Manifests[0]
	if d.Platform == nil || d.Platform.OS != "linux" || d.Annotations["org.opencontainers.image.ref.name"] == "" {
		t.Errorf("index descriptor: platform %+v, annotations %v", d.Platform, d.Annotations)
	}
	img, err := idx.Image(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.MediaType != types.OCIConfigJSON || len(m.Layers) != 1 || m.Layers[0].MediaType != types.OCILayer {
		t.Errorf("manifest: config %s, layers %+v; want OCI config and one OCI gzip layer", m.Config.MediaType, m.Layers)
	}
	return img
}

// checkConfig checks the run config a container runtime would use.
func checkConfig(t *testing.T, img v1.Image) *v1.ConfigFile {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	raw, _ := json.MarshalIndent(cf, "", "  ")
	t.Logf("image config:\n%s", raw)
	uid, gid, ok := strings.Cut(c.User, ":")
	u, err1 := strconv.Atoi(uid)
	g, err2 := strconv.Atoi(gid)
	if !ok || err1 != nil || err2 != nil || u == 0 || g == 0 {
		t.Errorf("user %q: want numeric non-root uid:gid", c.User)
	}
	if cf.OS != "linux" || cf.Architecture == "" {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}
	if !slices.Equal(c.Entrypoint, []string{binPath}) || len(c.Cmd) == 0 || c.Cmd[0] != "serve" {
		t.Errorf("entrypoint %q cmd %q: want %s serve ...", c.Entrypoint, c.Cmd, binPath)
	}
	if i := slices.Index(c.Cmd, "-state"); i < 0 || i+1 >= len(c.Cmd) || c.Cmd[i+1] != stateDir {
		t.Errorf("cmd %q: want -state %s", c.Cmd, stateDir)
	}
	for _, p := range []string{"2222/tcp", "9222/tcp"} {
		if _, ok := c.ExposedPorts[p]; !ok {
			t.Errorf("port %s not exposed: %v", p, c.ExposedPorts)
		}
	}
	if _, ok := c.Volumes[stateDir]; !ok {
		t.Errorf("volumes %v: want %s", c.Volumes, stateDir)
	}
	for _, k := range []string{"source", "version", "revision"} {
		if c.Labels["org.opencontainers.image."+k] == "" {
			t.Errorf("label org.opencontainers.image.%s missing: %v", k, c.Labels)
		}
	}
	return cf
}

// file is what the layers say about one path.
type file struct {
	typ      byte
	mode     int64
	uid, gid int
}

// unpack flattens the image's layers as a runtime would and writes its
// regular files under root; it returns every path with its header.
func unpack(t *testing.T, img v1.Image, root string) map[string]file {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	files := map[string]file{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("layers: %v", err)
		}
		name := path.Clean("/" + h.Name)
		files[name] = file{typ: h.Typeflag, mode: h.Mode, uid: h.Uid, gid: h.Gid}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, os.FileMode(h.Mode&0o777)); err != nil {
			t.Fatal(err)
		}
	}
	return files
}

// shells are the names of every shell or multi-call binary that could
// give one.
var shells = []string{"sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "busybox", "toybox"}

// checkTree checks the image holds exactly the expected files, with
// their owners and modes, and no shell under any name or path.
func checkTree(t *testing.T, files map[string]file) {
	t.Helper()
	for name, f := range files {
		if slices.Contains(shells, path.Base(name)) {
			t.Errorf("shell in the image: %s", name)
		}
		if f.typ == tar.TypeSymlink || f.typ == tar.TypeLink {
			t.Errorf("link in the image: %s", name)
		}
		if f.uid != 0 && name != stateDir {
			t.Errorf("%s owned by %d: only the state dir belongs to the user", name, f.uid)
		}
	}
	want := []string{"/etc", "/etc/group", "/etc/passwd", "/tmp", "/usr", "/usr/local", "/usr/local/bin", binPath, "/var", "/var/lib", stateDir}
	if got := slices.Sorted(maps.Keys(files)); !slices.Equal(got, want) {
		t.Errorf("image files:\n%q\nwant\n%q", got, want)
	}
	if f := files[stateDir]; f.typ != tar.TypeDir || f.mode&0o777 != 0o700 || f.uid != imageUID || f.gid != imageGID {
		t.Errorf("state dir %+v: want a 0700 directory owned by %d:%d", f, imageUID, imageGID)
	}
	if f := files["/tmp"]; f.mode&0o1777 != 0o1777 {
		t.Errorf("/tmp mode %o, want 1777", f.mode)
	}
	if f := files[binPath]; f.typ != tar.TypeReg || f.mode&0o777 != 0o755 {
		t.Errorf("gomux %+v: want a 0755 regular file", f)
	}
}

// checkBinary checks the unpacked gomux is static (no interpreter, no
// shared libraries: it runs on an empty base) and runs it, as the image's
// user when the test is root.
func checkBinary(t *testing.T, bin, version string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("gomux in the image is not static: program header %s", p.Type)
		}
	}
	cmd := exec.Command(bin, "version")
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: imageUID, Gid: imageGID}}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("gomux version: %v\n%s", err, out)
	}
	t.Logf("unpacked gomux version: %s", bytes.TrimSpace(out))
	if got := strings.TrimSpace(string(out)); got != "gomux "+version {
		t.Errorf("gomux version = %q, want %q (the version label)", got, "gomux "+version)
	}
}

func digest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// ids are an image's config digest and layer digests.
func ids(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	c, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	out := []v1.Hash{c}
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

// TestReproducible: the same binary, version, revision and time give the
// same image digest, so an image can be rebuilt from its commit and
// compared.
func TestReproducible(t *testing.T) {
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1700000000, 0)
	a, err := build(self, "v1", "abc", at)
	if err != nil {
		t.Fatal(err)
	}
	b, err := build(self, "v1", "abc", at)
	if err != nil {
		t.Fatal(err)
	}
	if digest(t, a) != digest(t, b) {
		t.Errorf("two builds of the same inputs differ: %s, %s", digest(t, a), digest(t, b))
	}
}
