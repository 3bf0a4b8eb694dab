package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The image's layout. The Dockerfile copies the same tree (written by
// -rootfs) and sets the same config; TestDockerfileMatches holds them
// together.
const (
	// imageUID and imageGID are the numeric non-root account gomux runs as, the
	// one deploy/kubernetes/gomux.yaml names in runAsUser.
	imageUID = 65532
	imageGID = 65532
	// binPath is where the static gomux binary (agents embedded) lives.
	binPath = "/usr/local/bin/gomux"
	// stateDir is the volume for the host CA, host keys and known_hosts,
	// owned by imageUID with mode 0700, so a fresh volume starts right.
	stateDir = "/var/lib/gomux"
)

// passwd and group name the account, so gomux can tell whose
// authorized_keys files without %u are (os/user reads /etc/passwd).
const (
	passwd = "root:x:0:0:root:/root:/sbin/nologin\ngomux:x:65532:65532:gomux:/var/lib/gomux:/sbin/nologin\n"
	group  = "root:x:0:\ngomux:x:65532:\n"
)

// entry is one file or directory of the image's only layer.
type entry struct {
	name string // without the leading slash
	dir  bool
	mode int64
	uid  int
	body []byte
}

// rootfs is the whole file system: no shell, no package manager, no
// certificates (gomux speaks no TLS), only the binary, the account and
// the directories it writes to.
func rootfs(gomux []byte) []entry {
	d := func(name string, mode int64, uid int) entry {
		return entry{name: name, dir: true, mode: mode, uid: uid}
	}
	f := func(name string, mode int64, body []byte) entry { return entry{name: name, mode: mode, body: body} }
	return []entry{
		d("etc", 0o755, 0),
		f("etc/group", 0o644, []byte(group)),
		f("etc/passwd", 0o644, []byte(passwd)),
		d("tmp", 0o1777, 0),
		d("usr", 0o755, 0),
		d("usr/local", 0o755, 0),
		d("usr/local/bin", 0o755, 0),
		f(binPath[1:], 0o755, gomux),
		d("var", 0o755, 0),
		d("var/lib", 0o755, 0),
		d(stateDir[1:], 0o700, imageUID),
	}
}

// layerTar writes entries as an uncompressed tar, every time stamp set
// to created, so the same inputs give the same layer digest.
func layerTar(entries []entry, created time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, Uid: e.uid, Gid: e.uid, ModTime: created, Format: tar.FormatPAX}
		if e.dir {
			h.Typeflag, h.Name = tar.TypeDir, e.name+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("tar %s: %w", e.name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, fmt.Errorf("tar %s: %w", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("tar: %w", err)
	}
	return buf.Bytes(), nil
}

// writeRootfs writes entries under dir, for the Dockerfile's build stage
// to copy into a scratch image. Ownership is set when running as root.
func writeRootfs(dir string, entries []entry) error {
	for _, e := range entries {
		p := filepath.Join(dir, e.name)
		var err error
		if e.dir {
			err = os.MkdirAll(p, 0o755)
		} else {
			err = os.WriteFile(p, e.body, 0o644)
		}
		if err == nil {
			err = os.Chmod(p, os.FileMode(e.mode&0o777)|modeBits(e.mode))
		}
		if err == nil && os.Geteuid() == 0 {
			err = os.Lchown(p, e.uid, e.uid)
		}
		if err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
	}
	return nil
}

// modeBits turns the tar sticky bit into Go's.
func modeBits(mode int64) os.FileMode {
	if mode&0o1000 != 0 {
		return os.ModeSticky
	}
	return 0
}

// labels are the OCI annotations every build carries.
func labels(version, revision string) map[string]string {
	return map[string]string{
		"org.opencontainers.image.source":      "https://github.com/gomux/gomux",
		"org.opencontainers.image.title":       "gomux",
		"org.opencontainers.image.description": "Multiplexing SSH proxy and bastion for Ansible",
		"org.opencontainers.image.version":     version,
		"org.opencontainers.image.revision":    revision,
	}
}

// runConfig is the image's run config: the Dockerfile's USER, ENV,
// VOLUME, EXPOSE, ENTRYPOINT and CMD say the same.
func runConfig(labels map[string]string) v1.Config {
	return v1.Config{
		User:         fmt.Sprintf("%d:%d", imageUID, imageGID),
		Env:          []string{"XDG_STATE_HOME=/var/lib"},
		Entrypoint:   []string{binPath},
		Cmd:          []string{"serve", "-config", "/etc/gomux/gomux.yaml", "-listen", "0.0.0.0:2222", "-state", stateDir},
		ExposedPorts: map[string]struct{}{"2222/tcp": {}, "9222/tcp": {}},
		Volumes:      map[string]struct{}{stateDir: {}},
		WorkingDir:   "/",
		Labels:       labels,
	}
}
