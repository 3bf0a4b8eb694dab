package proxy

import (
	"reflect"
	"strings"
	"testing"
)

func TestAdmissionLimits(t *testing.T) {
	var l AdmissionLimits
	l.applyDefaults()
	if l.LoginGraceTime.D().Seconds() != 60 || l.MaxStartups != "100:30:1000" || l.MaxChannelsPerConnection != 64 {
		t.Fatalf("defaults: %+v", l)
	}
	l.MaxStartups = "x"
	if err := l.validate(); err == nil || !strings.Contains(err.Error(), "limits.max_startups") {
		t.Fatalf("bad max_startups: %v", err)
	}
}

// TestAdmissionLimitsFilled: admissionLimits copies every field of
// admission.Limits from the config field of the same name, so a cap
// added to one is never left at zero by the other.
func TestAdmissionLimitsFilled(t *testing.T) {
	var l AdmissionLimits
	l.applyDefaults()
	l.MaxMemoryMiB = 1
	got, src := reflect.ValueOf(admissionLimits(l)), reflect.ValueOf(l)
	for i := range got.NumField() {
		name := got.Type().Field(i).Name
		want := src.FieldByName(name)
		if !want.IsValid() {
			t.Errorf("admission.Limits.%s has no field of its name in AdmissionLimits", name)
			continue
		}
		if got.Field(i).IsZero() || got.Field(i).Interface() != want.Interface() {
			t.Errorf("admission.Limits.%s = %v, want %v", name, got.Field(i), want)
		}
	}
}
