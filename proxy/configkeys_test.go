package proxy

import (
	"reflect"
	"slices"
	"strings"
	"testing"
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
