// Command image writes gomux's container image without a container
// daemon or a base image: one layer made here (the static gomux binary,
// a numeric non-root account, the state directory; no shell) on an
// empty OCI base, as an OCI image layout and as a tarball that
// `docker load` and `podman load` read. `make image` runs it.
//
// It is a module of its own so that go-containerregistry is a build
// tool's dependency, never gomux's.
package main

import (
	"bytes"
	"debug/elf"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// options are the command's flags.
type options struct {
	gomux    string // the binary `make build` wrote
	oci      string // OCI image layout directory to (re)write
	tarball  string // docker-load tarball to write ("" for none)
	rootfs   string // write the file tree here instead (for the Dockerfile)
	version  string
	revision string
	created  time.Time
}

func main() {
	var o options
	var epoch int64
	flag.StringVar(&o.gomux, "gomux", "bin/gomux", "the static gomux binary")
	flag.StringVar(&o.oci, "oci", "", "OCI image layout directory to write")
	flag.StringVar(&o.tarball, "tar", "", "image tarball (docker load) to write")
	flag.StringVar(&o.rootfs, "rootfs", "", "write the image's file tree to this directory and nothing else")
	flag.StringVar(&o.version, "version", "dev", "org.opencontainers.image.version")
	flag.StringVar(&o.revision, "revision", "unknown", "org.opencontainers.image.revision")
	flag.Int64Var(&epoch, "created", 0, "creation time, Unix seconds (the commit's, so builds repeat)")
	flag.Parse()
	o.created = time.Unix(epoch, 0).UTC()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	bin, err := os.ReadFile(o.gomux)
	if err != nil {
		return err
	}
	if o.rootfs != "" {
		return writeRootfs(o.rootfs, rootfs(bin))
	}
	if o.oci == "" {
		return fmt.Errorf("-oci or -rootfs is required")
	}
	img, err := build(bin, o.version, o.revision, o.created)
	if err != nil {
		return err
	}
	if err := writeLayout(o.oci, img, o.version); err != nil {
		return err
	}
	if o.tarball != "" {
		tag, err := name.NewTag("gomux:" + tagSafe(o.version))
		if err != nil {
			return err
		}
		if err := tarball.WriteToFile(o.tarball, tag, img); err != nil {
			return fmt.Errorf("tarball: %w", err)
		}
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("image %s (%s) in %s\n", d, tagSafe(o.version), o.oci)
	return nil
}

// build makes the image: an empty OCI base, one layer, the run config,
// the platform of the binary itself.
func build(bin []byte, version, revision string, created time.Time) (v1.Image, error) {
	arch, err := elfArch(bin)
	if err != nil {
		return nil, err
	}
	raw, err := layerTar(rootfs(bin), created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{Layer: layer, History: v1.History{
		Created: v1.Time{Time: created}, CreatedBy: "make image (tools/image)", Comment: "gomux " + version,
	}})
	if err != nil {
		return nil, fmt.Errorf("append: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config = runConfig(labels(version, revision))
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return mutate.CreatedAt(img, v1.Time{Time: created})
}

// writeLayout replaces dir with an OCI image layout holding img alone.
func writeLayout(dir string, img v1.Image, version string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("layout: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	ann := map[string]string{"org.opencontainers.image.ref.name": tagSafe(version)}
	if err := p.AppendImage(img, layout.WithAnnotations(ann), layout.WithPlatform(*cf.Platform())); err != nil {
		return fmt.Errorf("layout: %w", err)
	}
	return nil
}

// elfArch is the GOARCH of a Linux ELF binary: the image's platform is
// the binary's, whatever machine ran make.
func elfArch(bin []byte) (string, error) {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return "", fmt.Errorf("gomux binary: %w", err)
	}
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	}
	return "", fmt.Errorf("gomux binary: unsupported machine %s", f.Machine)
}

var tagUnsafe = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// tagSafe makes a version (git describe output) a valid image tag.
func tagSafe(v string) string {
	v = tagUnsafe.ReplaceAllString(v, "-")
	if v == "" || v[0] == '.' || v[0] == '-' {
		v = "v" + v
	}
	if len(v) > 128 {
		v = v[:128]
	}
	return v
}
