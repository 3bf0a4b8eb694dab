package proxy

import (
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
