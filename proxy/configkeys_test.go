package proxy

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// leafKeys are the dotted keys of struct type t, sections opened.
func leafKeys(t reflect.Type, prefix string) []string {
	var out []string
	for _, f := range yamlFields(t) {
		if f.typ.Kind() == reflect.Struct && f.typ != reflect.TypeFor[Duration]() {
			out = append(out, leafKeys(f.typ, prefix+f.name+".")...)
			continue
		}
		out = append(out, prefix+f.name)
	}
	return out
}

// TestConfigHalvesShareNoKey: no key is in both StartConfig and
// LiveConfig, so the copy a server started with holds nothing a reload
// replaces, and the live one nothing a reload keeps.
func TestConfigHalvesShareNoKey(t *testing.T) {
	start := leafKeys(reflect.TypeFor[StartConfig](), "")
	live := leafKeys(reflect.TypeFor[LiveConfig](), "")
	for _, k := range start {
		if slices.Contains(live, k) {
			t.Errorf("%s is in both halves", k)
		}
	}
	if len(start) < 20 || len(live) < 20 || !slices.Contains(start, "upstream.connect_timeout") || !slices.Contains(live, "limits.max_startups") {
		t.Fatalf("keys not found: start %v, live %v", start, live)
	}
}

// TestRestartOnlyKeys: the list is StartConfig's keys, a section only it
// has as one key, a shared one key by key; it is the list Reload kept by
// hand before the split, so no key changed sides.
func TestRestartOnlyKeys(t *testing.T) {
	got := strings.Join(RestartOnlyKeys(), ",")
	want := "listen,state_dir,host_cert_validity,stats_interval,metrics_listen,admin_socket,proxy_protocol,upstream," +
		"limits.max_staged_mib,limits.max_sftp_handles,limits.temp_dir_idle,limits.shim_state_idle,limits.max_shim_states," +
		"limits.agent_reply_timeout,limits.agent_cache_days,limits.login_backoff,limits.login_backoff_max," +
		"limits.max_login_backoffs,limits.upstream_dials_per_second,limits.upstream_dial_burst"
	if got != want {
		t.Fatalf("RestartOnlyKeys:\n got %s\nwant %s", got, want)
	}
}

// change sets v to a value other than its own.
func change(v reflect.Value) {
	switch v.Kind() {
	case reflect.String:
		v.SetString(v.String() + "x")
	case reflect.Int, reflect.Int64:
		v.SetInt(v.Int() + 1)
	case reflect.Bool:
		v.SetBool(!v.Bool())
	case reflect.Slice:
		v.Set(reflect.Append(v, reflect.Zero(v.Type().Elem())))
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		m.SetMapIndex(reflect.ValueOf("x"), reflect.Zero(v.Type().Elem()))
		v.Set(m)
	case reflect.Struct:
		change(v.Field(0))
	default:
		panic("change: " + v.Kind().String())
	}
}

// TestReloadKeepsEveryRestartOnlyKey: a reload whose file changes each
// restart-only key in turn names that key, and only it, and the server
// keeps running with its start-up value.
func TestReloadKeepsEveryRestartOnlyKey(t *testing.T) {
	rules := "targets:\n  - hosts: [a.example.com]\n    remote_users: [deploy]\n"
	s, p := opsServer(t, rules)
	running := s.start
	for _, k := range restartKeys() {
		cfg, err := LoadConfig(p)
		if err != nil {
			t.Fatal(err)
		}
		cfg.StateDir = s.start.StateDir // as -state does
		change(reflect.ValueOf(&cfg.StartConfig).Elem().FieldByIndex(k.index))
		got, err := s.Reload(cfg)
		if err != nil {
			t.Fatalf("%s: %v", k.name, err)
		}
		if strings.Join(got, ",") != k.name {
			t.Errorf("changed %s: reload said %v", k.name, got)
		}
		if !reflect.DeepEqual(s.start, running) {
			t.Fatalf("changed %s: the server's start-up config changed", k.name)
		}
	}
}

// TestParseConfigSplitsOneFile: one file fills both halves, a key of
// the limits section each into its own.
func TestParseConfigSplitsOneFile(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	c, err := ParseConfig("f.yaml", []byte("listen: 127.0.0.1:2022\nlog_level: debug\nlimits:\n  max_staged_mib: 7\n  max_startups: \"9\"\n"+
		"upstream:\n  connect_timeout: 3s\n  agent_dial: true\ntargets: [{hosts: [a], remote_users: [deploy]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:2022" || c.LogLevel != "debug" || c.StartConfig.Limits.MaxStagedMiB != 7 ||
		c.LiveConfig.Limits.MaxStartups != "9" || c.Upstream.ConnectTimeout.D().Seconds() != 3 || !c.Targets[0].AgentDial {
		t.Fatalf("not split as written: %+v", c)
	}
}

// keyRE is a config key as the docs write it: listen, limits.max_staged_mib.
var keyRE = regexp.MustCompile(`^[a-z_]+(\.[a-z_]+)*$`)

// sameKeys reports what want has that got lacks and the other way round.
func sameKeys(t *testing.T, where string, got []string) {
	t.Helper()
	want := RestartOnlyKeys()
	for _, k := range want {
		if !slices.Contains(got, k) {
			t.Errorf("%s does not say %s needs a restart", where, k)
		}
	}
	for _, k := range got {
		if !slices.Contains(want, k) {
			t.Errorf("%s says %s needs a restart; RestartOnlyKeys does not", where, k)
		}
	}
}

// TestREADMERestartOnlyKeys: the README's sentence "Only a restart
// changes ..." lists exactly the restart-only keys, in backticks.
func TestREADMERestartOnlyKeys(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	const marker = "Only a restart changes"
	text := strings.Join(strings.Fields(string(b)), " ")
	if strings.Count(text, marker) != 1 {
		t.Fatalf("README.md: want one sentence starting %q (the restart-only keys), found %d", marker, strings.Count(text, marker))
	}
	rest := text[strings.Index(text, marker):]
	// The sentence ends at the first full stop outside backticks.
	var keys []string
	quoted, start := false, 0
	for i, r := range rest {
		switch {
		case r == '`' && !quoted:
			quoted, start = true, i+1
		case r == '`':
			quoted = false
			if k := rest[start:i]; keyRE.MatchString(k) {
				keys = append(keys, k)
			}
		case r == '.' && !quoted:
			sameKeys(t, "README.md", keys)
			return
		}
	}
	t.Fatal("README.md: the restart-only sentence does not end")
}

// TestDeployConfigMarksRestartOnlyKeys: deploy/gomux.yaml, which shows
// every key, marks exactly the restart-only ones with "# restart" at
// the end of their line.
func TestDeployConfigMarksRestartOnlyKeys(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "deploy", "gomux.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		t.Fatal(err)
	}
	var marked []string
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		for _, c := range n.Content {
			if n.Kind == yaml.DocumentNode {
				walk(c, prefix)
			}
		}
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.LineComment == "# restart" || v.LineComment == "# restart" {
				marked = append(marked, prefix+k.Value)
			}
			walk(v, prefix+k.Value+".")
		}
	}
	walk(&root, "")
	sameKeys(t, "deploy/gomux.yaml", marked)
}
