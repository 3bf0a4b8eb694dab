package proxy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// TestCAHostPatterns: `gomux ca -hosts` trusts the host CA only for gomux
// itself and the names the accelerate rules can reach; what known_hosts
// cannot express is left out, with a note, never widened to "*".
func TestCAHostPatterns(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules []TargetRule
		want  []string
		notes []string
	}{
		{"personal default", []TargetRule{{Hosts: []string{"*"}, Mode: ModeAccelerate}}, []string{"*"}, nil},
		{"several ports", []TargetRule{{Hosts: []string{"web"}, Ports: []int{2222, 8022, 22}, Mode: ModeAccelerate}},
			[]string{"gomux", "[web]:2222", "[web]:8022", "web"}, nil},
		{"accelerate only", []TargetRule{
			{Hosts: []string{"db*.prod.example.com"}, Mode: ModeDeny},
			{Hosts: []string{"*.Prod.Example.com."}, Mode: ModeAccelerate},
			{Hosts: []string{"legacy-*.example.com"}, Mode: ModeSplice},
			{Hosts: []string{"web?.lab"}, Ports: []int{22, 2222}, Mode: ModeAccelerate},
		}, []string{"gomux", "*.prod.example.com", "web?.lab", "[web?.lab]:2222"}, nil},
		{"cidrs only", []TargetRule{
			{CIDRs: []string{"10.0.0.0/8", "192.0.2.0/23", "198.51.100.7", "fd00::/8"}, Mode: ModeAccelerate},
		}, []string{"gomux", "10.*.*.*", "192.0.2.*", "192.0.3.*", "198.51.100.7"},
			[]string{"targets[0]: cidrs fd00::/8", "targets[0]: has cidrs but no hosts"}},
		{"hosts and cidrs", []TargetRule{
			{Hosts: []string{"*.lab"}, CIDRs: []string{"10.0.0.0/8"}, Mode: ModeAccelerate},
		}, []string{"gomux", "*.lab"}, nil},
		{"bracket", []TargetRule{
			{Hosts: []string{"web[0-9].lab", "db.lab"}, Mode: ModeAccelerate},
		}, []string{"gomux", "db.lab"}, []string{`targets[0]: host pattern "web[0-9].lab"`}},
	} {
		got, notes := CAHostPatterns(tc.rules)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: patterns %q, want %q", tc.name, got, tc.want)
		}
		if len(notes) != len(tc.notes) {
			t.Errorf("%s: notes %q, want %d", tc.name, notes, len(tc.notes))
			continue
		}
		for i, n := range tc.notes {
			if !strings.HasPrefix(notes[i], n) {
				t.Errorf("%s: note %q, want it to start %q", tc.name, notes[i], n)
			}
		}
	}
}

func TestIPv4Patterns(t *testing.T) {
	for _, tc := range []struct {
		cidr string
		want []string
	}{
		{"0.0.0.0/0", []string{"*.*.*.*"}},
		{"10.0.0.0/8", []string{"10.*.*.*"}},
		{"10.1.0.0/16", []string{"10.1.*.*"}},
		{"10.1.2.3/32", []string{"10.1.2.3"}},
		{"10.1.2.0/31", []string{"10.1.2.0", "10.1.2.1"}},
		{"255.255.255.254/31", []string{"255.255.255.254", "255.255.255.255"}},
		{"192.0.2.0/23", []string{"192.0.2.*", "192.0.3.*"}},
	} {
		if got := ipv4Patterns(netip.MustParsePrefix(tc.cidr)); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.cidr, got, tc.want)
		}
	}
	if got := ipv4Patterns(netip.MustParsePrefix("10.0.0.0/12")); len(got) != 16 || got[0] != "10.0.*.*" || got[15] != "10.15.*.*" {
		t.Errorf("10.0.0.0/12: %q", got)
	}
}
