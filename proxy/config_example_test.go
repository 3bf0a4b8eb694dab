package proxy

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// exampleSiteValues are the settings deploy/gomux.yaml fills with a
// site's values instead of the default; its header names them, and the
// comment above each gives the default.
var exampleSiteValues = []string{
	"auth.authorized_keys",
	"state_dir",
	"targets",
	"upstream.credentials",
	"upstream.identity_files",
	"upstream.known_hosts",
}

// TestConfigExampleShowsDefaults holds deploy/gomux.yaml to its header:
// it names every setting, and each value it shows is the default except
// the site values the header lists, so an operator can read the defaults
// off the file.
func TestConfigExampleShowsDefaults(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	t.Setenv("XDG_STATE_HOME", "")
	path := filepath.Join("..", "deploy", "gomux.yaml")
	example, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	defaults, err := LoadConfig(writeConfig(t, "targets:\n  - hosts: [a]\n    remote_users: [deploy]\n"))
	if err != nil {
		t.Fatal(err)
	}
	var settings, differ []string
	walkSettings(reflect.ValueOf(*example), reflect.ValueOf(*defaults), "", func(p string, a, b reflect.Value) {
		settings = append(settings, p)
		if !sameSetting(a, b) {
			differ = append(differ, p)
		}
	})
	slices.Sort(differ)
	if !slices.Equal(differ, exampleSiteValues) {
		t.Errorf("settings whose example value is not the default: %v, want exactly the site values %v", differ, exampleSiteValues)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	written := map[string]bool{}
	fileKeys(doc.Content[0], "", written)
	for _, s := range settings {
		if !written[s] {
			t.Errorf("deploy/gomux.yaml does not show %s", s)
		}
	}
}

// walkSettings calls leaf for each setting of two configs, by its dotted
// yaml path; targets and credentials are leaves.
func walkSettings(a, b reflect.Value, prefix string, leaf func(string, reflect.Value, reflect.Value)) {
	ty := a.Type()
	for i := range ty.NumField() {
		f := ty.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		p := prefix
		if name != "" {
			p = strings.TrimPrefix(prefix+"."+name, ".")
		}
		if f.Type.Kind() == reflect.Struct {
			walkSettings(a.Field(i), b.Field(i), p, leaf)
			continue
		}
		leaf(p, a.Field(i), b.Field(i))
	}
}

// sameSetting compares two values, an empty list equal to none.
func sameSetting(a, b reflect.Value) bool {
	if (a.Kind() == reflect.Slice || a.Kind() == reflect.Map) && a.Len() == 0 && b.Len() == 0 {
		return true
	}
	return reflect.DeepEqual(a.Interface(), b.Interface())
}

// fileKeys records the dotted path of every key in a yaml mapping, not
// descending into targets or the named credentials.
func fileKeys(n *yaml.Node, prefix string, out map[string]bool) {
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		p := strings.TrimPrefix(prefix+"."+n.Content[i].Value, ".")
		out[p] = true
		if p != "targets" && p != "upstream.credentials" {
			fileKeys(n.Content[i+1], p, out)
		}
	}
}
