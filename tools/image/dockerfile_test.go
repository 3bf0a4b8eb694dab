package main

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// TestDockerfileMatches holds the Dockerfile to the image `make image`
// builds: its final stage starts from scratch, copies the tree this
// tool writes (-rootfs), and sets the same user, environment, volume,
// ports, working directory, entrypoint, command and label keys.
func TestDockerfileMatches(t *testing.T) {
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	build, final := dockerStages(string(b))
	want := runConfig(labels("v", "r"))
	if !slices.ContainsFunc(build["RUN"], func(s string) bool { return strings.Contains(s, "go run . -gomux /src/bin/gomux -rootfs /rootfs") }) {
		t.Errorf("build stage does not write the image tree with tools/image -rootfs: %q", build["RUN"])
	}
	check := func(key string, got, want any) {
		t.Helper()
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		if string(g) != string(w) {
			t.Errorf("Dockerfile %s: %s, make image: %s", key, g, w)
		}
	}
	check("FROM", final["FROM"], []string{"scratch"})
	check("COPY", final["COPY"][0], "--from=build /rootfs/ /")
	check("USER", final["USER"], []string{want.User})
	check("ENV", final["ENV"], want.Env)
	check("WORKDIR", final["WORKDIR"], []string{want.WorkingDir})
	check("VOLUME", jsonArgs(t, final["VOLUME"]), slices.Sorted(maps.Keys(want.Volumes)))
	check("ENTRYPOINT", jsonArgs(t, final["ENTRYPOINT"]), want.Entrypoint)
	check("CMD", jsonArgs(t, final["CMD"]), want.Cmd)
	var ports []string
	for _, e := range final["EXPOSE"] {
		for _, p := range strings.Fields(e) {
			ports = append(ports, p+"/tcp")
		}
	}
	check("EXPOSE", ports, slices.Sorted(maps.Keys(want.ExposedPorts)))
	var keys []string
	for _, l := range final["LABEL"] {
		for _, kv := range strings.Fields(l) {
			if k, _, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "org.opencontainers.") {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	check("LABEL keys", keys, slices.Sorted(maps.Keys(want.Labels)))
}

// dockerStages splits a Dockerfile into its first and last stage, each
// instruction's arguments in order, continuation lines joined and
// comments dropped.
func dockerStages(text string) (first, last map[string][]string) {
	var stages []map[string][]string
	var line string
	for _, l := range strings.Split(text, "\n") {
		if t := strings.TrimSpace(l); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if strings.HasSuffix(l, "\\") {
			line += strings.TrimSuffix(l, "\\") + " "
			continue
		}
		line += l
		inst, args, _ := strings.Cut(strings.TrimSpace(line), " ")
		line = ""
		if inst == "FROM" {
			stages = append(stages, map[string][]string{})
		}
		if len(stages) > 0 {
			st := stages[len(stages)-1]
			st[inst] = append(st[inst], strings.TrimSpace(args))
		}
	}
	if len(stages) == 0 {
		return map[string][]string{}, map[string][]string{}
	}
	return stages[0], stages[len(stages)-1]
}

// jsonArgs decodes an instruction's one JSON (exec form) argument list.
func jsonArgs(t *testing.T, args []string) []string {
	t.Helper()
	if len(args) != 1 {
		t.Errorf("want one instruction, got %q", args)
		return nil
	}
	var v []string
	if err := json.Unmarshal([]byte(args[0]), &v); err != nil {
		t.Errorf("%q: not the exec (JSON) form: %v", args[0], err)
	}
	return v
}

// TestRootfsDir: the tree -rootfs writes for the Dockerfile has the
// layer's modes, and its owners when written as root.
func TestRootfsDir(t *testing.T) {
	dir := t.TempDir()
	entries := rootfs([]byte("binary"))
	if err := writeRootfs(dir, entries); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fi, err := os.Lstat(filepath.Join(dir, e.name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.IsDir() != e.dir || fi.Mode().Perm() != os.FileMode(e.mode&0o777) || (e.mode&0o1000 != 0) != (fi.Mode()&os.ModeSticky != 0) {
			t.Errorf("%s: mode %v, want %o (dir %v)", e.name, fi.Mode(), e.mode, e.dir)
		}
		if st := fi.Sys().(*syscall.Stat_t); os.Geteuid() == 0 && int(st.Uid) != e.uid {
			t.Errorf("%s: owner %d, want %d", e.name, st.Uid, e.uid)
		}
	}
}
