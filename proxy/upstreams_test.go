package proxy

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestAgentCacheDaysConfig: 30 days by default, a negative value refused,
// and a reload names a change as waiting for a restart (the pool holds
// the value).
func TestAgentCacheDaysConfig(t *testing.T) {
	var l LimitsConfig
	l.applyDefaults()
	if l.AgentCacheDays != 30 {
		t.Errorf("default agent_cache_days %d, want 30", l.AgentCacheDays)
	}
	l.AgentCacheDays = -1
	if err := l.validate(); err == nil || !strings.Contains(err.Error(), "agent_cache_days") {
		t.Errorf("negative agent_cache_days: %v", err)
	}
	old := &StartConfig{Limits: LimitsConfig{AgentCacheDays: 30}}
	cfg := *old
	cfg.Limits.AgentCacheDays = 7
	if got := strings.Join(restartOnly(old, &cfg), ","); got != "limits.agent_cache_days" {
		t.Errorf("restart needed for %q", got)
	}
}

// TestLoginGuardLimitsNeedRestart: the pool holds the guard's limits, so
// a reload names them as waiting for a restart instead of claiming them.
func TestLoginGuardLimitsNeedRestart(t *testing.T) {
	old := &StartConfig{}
	old.Limits.applyDefaults()
	cfg := *old
	cfg.Limits.LoginBackoff = Duration(time.Second)
	cfg.Limits.UpstreamDialBurst = 5
	got := strings.Join(restartOnly(old, &cfg), ",")
	if got != "limits.login_backoff,limits.upstream_dial_burst" {
		t.Errorf("restart needed for %q", got)
	}
}

// TestPoolConfigCopiesEveryField: every field of upstream.Config and
// upstream.Limits is filled from the config field of the same name, so a
// setting added to both is not silently dropped on its way to the pool.
func TestPoolConfigCopiesEveryField(t *testing.T) {
	var cfg StartConfig
	setAll(t, reflect.ValueOf(&cfg.Upstream).Elem())
	setAll(t, reflect.ValueOf(&cfg.Limits).Elem())
	cfg.Upstream.Credentials = map[string]Credential{"c": {IdentityFiles: []string{"f"}, UseSSHAgent: true, UserCA: "ca", UserPrincipalPrefix: "p"}}
	pc := poolConfig(&cfg, nil, nil, nil)
	for _, v := range []reflect.Value{reflect.ValueOf(pc.Upstream), reflect.ValueOf(pc.Limits), reflect.ValueOf(pc.Upstream.Credentials["c"])} {
		for i := range v.NumField() {
			if v.Field(i).IsZero() {
				t.Errorf("%s.%s is not filled from the config", v.Type().Name(), v.Type().Field(i).Name)
			}
		}
	}
}

// setAll gives every settable scalar and slice field of v a non-zero value.
func setAll(t *testing.T, v reflect.Value) {
	t.Helper()
	for i := range v.NumField() {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.Bool:
			f.SetBool(true)
		case reflect.Int, reflect.Int64:
			f.SetInt(7)
		case reflect.String:
			f.SetString("x")
		case reflect.Slice:
			if f.Type().Elem().Kind() == reflect.String {
				f.Set(reflect.ValueOf([]string{"x"}))
			}
		}
	}
}
