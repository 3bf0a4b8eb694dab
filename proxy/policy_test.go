package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// fakeResolver answers from a table, so policy tests need no DNS.
type fakeResolver map[string][]string

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	addrs, ok := f[host]
	if !ok {
		return nil, fmt.Errorf("no such host %s", host)
	}
	var out []netip.Addr
	for _, a := range addrs {
		out = append(out, netip.MustParseAddr(a))
	}
	return out, nil
}

var lab = fakeResolver{
	"db1.example.com":     {"10.1.0.5"},
	"web.example.com":     {"10.2.0.7"},
	"alias.example.com":   {"10.1.0.9"}, // a name for a host in the denied network
	"metadata.example":    {"169.254.169.254"},
	"localhost":           {"127.0.0.1", "::1"},
	"v6only.example.com":  {"fe80::1"},
	"mapped.example.com":  {"::ffff:10.1.0.6"},
	"elsewhere.example":   {"192.0.2.1"},
	"loopy.example.com":   {"127.0.0.2"},
	"bastion.example.com": {"10.9.0.1"},
}

func mustPolicy(t *testing.T, rules []TargetRule) *Policy {
	t.Helper()
	for i := range rules {
		if rules[i].Mode == "" {
			rules[i].Mode = ModeAccelerate
		}
	}
	p, err := NewPolicy(rules, lab)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPolicyTable(t *testing.T) {
	p := mustPolicy(t, []TargetRule{
		/*0*/ {Hosts: []string{"DB*.Example.com."}, Mode: ModeDeny},
		/*1*/ {CIDRs: []string{"10.1.0.0/16"}, Mode: ModeDeny},
		/*2*/ {Hosts: []string{"*.example.com"}, Users: []string{"alice"}, RemoteUsers: []string{"deploy"}},
		/*3*/ {Hosts: []string{"10.3.0.*"}, Mode: ModeSplice},
		/*4*/ {Hosts: []string{"web.example.com"}, CIDRs: []string{"10.2.0.0/24"}, Ports: []int{22, 8080}, Credential: "ops", AgentDial: true},
		/*5*/ {CIDRs: []string{"127.0.0.1"}, Ports: []int{18080}},
		/*6*/ {Hosts: []string{"*"}, Ports: []int{22, 80, 2222}},
	})
	ctx := context.Background()
	for _, tc := range []struct {
		user, host string
		port       int
		mode       Mode
		rule       int
		addr       string
	}{
		{"alice", "db1.example.com", 22, ModeDeny, 0, "10.1.0.5"},
		{"alice", "DB1.EXAMPLE.COM", 22, ModeDeny, 0, "10.1.0.5"},
		{"alice", "db1.example.com.", 22, ModeDeny, 0, "10.1.0.5"},
		// A cidrs-only deny holds for an alias, an IP literal and an
		// IPv4-mapped spelling of an address in its network.
		{"alice", "alias.example.com", 22, ModeDeny, 1, "10.1.0.9"},
		{"alice", "10.1.0.9", 22, ModeDeny, 1, "10.1.0.9"},
		{"alice", "::ffff:10.1.0.9", 22, ModeDeny, 1, "10.1.0.9"},
		{"alice", "[::ffff:10.1.0.9]", 22, ModeDeny, 1, "10.1.0.9"},
		{"alice", "mapped.example.com", 22, ModeDeny, 1, "10.1.0.6"},
		{"alice", "web.example.com", 22, ModeAccelerate, 2, "10.2.0.7"},
		{"bob", "web.example.com", 22, ModeAccelerate, 4, "10.2.0.7"},
		{"bob", "WEB.example.com.", 8080, ModeAccelerate, 4, "10.2.0.7"},
		{"bob", "web.example.com", 8081, ModeDeny, -1, "10.2.0.7"},
		{"bob", "10.3.0.7", 22, ModeSplice, 3, "10.3.0.7"},
		// A rule without ports means port 22 only.
		{"bob", "10.3.0.7", 2222, ModeAccelerate, 6, "10.3.0.7"},
		{"bob", "10.3.0.7", 3306, ModeDeny, -1, "10.3.0.7"},
		{"bob", "elsewhere.example", 22, ModeAccelerate, 6, "192.0.2.1"},
		// "*" does not reach loopback, link-local or unspecified.
		{"bob", "127.0.0.1", 22, ModeDeny, -1, "127.0.0.1"},
		{"bob", "localhost", 22, ModeDeny, -1, "127.0.0.1"},
		{"bob", "LOCALHOST.", 2222, ModeDeny, -1, "127.0.0.1"},
		{"bob", "loopy.example.com", 22, ModeDeny, -1, "127.0.0.2"},
		{"bob", "::1", 22, ModeDeny, -1, "::1"},
		{"bob", "::ffff:127.0.0.1", 22, ModeDeny, -1, "127.0.0.1"},
		{"bob", "0.0.0.0", 22, ModeDeny, -1, "0.0.0.0"},
		{"bob", "::", 22, ModeDeny, -1, "::"},
		{"bob", "169.254.169.254", 80, ModeDeny, -1, "169.254.169.254"},
		{"bob", "metadata.example", 80, ModeDeny, -1, "169.254.169.254"},
		{"bob", "v6only.example.com", 22, ModeDeny, -1, "fe80::1"},
		// IPv6 that carries an IPv4 address (NAT64, IPv4-compatible):
		// 10.1.0.9 is denied by rule 1, and these must not reach it.
		{"alice", "64:ff9b::10.1.0.9", 22, ModeDeny, -1, "64:ff9b::a01:9"},
		{"alice", "[64:ff9b:1::a01:9]", 22, ModeDeny, -1, "64:ff9b:1::a01:9"},
		{"alice", "::10.1.0.9", 22, ModeDeny, -1, "::a01:9"},
		// ...unless a rule names it in cidrs.
		{"bob", "localhost", 18080, ModeAccelerate, 5, "127.0.0.1"},
		{"bob", "127.0.0.1", 18080, ModeAccelerate, 5, "127.0.0.1"},
		// Unresolvable and malformed names are denied.
		{"bob", "nowhere.example", 22, ModeDeny, -1, ""},
		{"bob", "a..b", 22, ModeDeny, -1, ""},
		{"bob", "evil host", 22, ModeDeny, -1, ""},
		{"bob", "fe80::1%eth0", 22, ModeDeny, -1, ""},
		{"bob", "elsewhere.example", 0, ModeDeny, -1, ""},
	} {
		d := p.Decide(ctx, tc.user, tc.host, tc.port)
		got := ""
		if d.Addr.IsValid() {
			got = d.Addr.String()
		}
		if d.Mode != tc.mode || d.Rule != tc.rule || got != tc.addr {
			t.Errorf("%s→%s:%d = %s rule %d addr %q (%s), want %s rule %d addr %q",
				tc.user, tc.host, tc.port, d.Mode, d.Rule, got, d.Reason, tc.mode, tc.rule, tc.addr)
		}
		if d.Mode == ModeDeny && d.Reason == "" {
			t.Errorf("%s: denied without a reason", tc.host)
		}
	}
	d := p.Decide(ctx, "bob", "WEB.Example.COM.", 22)
	if d.Host != "web.example.com" || d.DialAddr() != "10.2.0.7:22" || d.HostPort() != "web.example.com:22" {
		t.Errorf("normalized %q dial %q hostport %q", d.Host, d.DialAddr(), d.HostPort())
	}
	if d.Credential != "ops" || !d.AgentDial {
		t.Errorf("rule credential/agent_dial not carried: %+v", d)
	}
	if d := p.Decide(ctx, "bob", "elsewhere.example", 22); d.Credential != DefaultCredential || d.AgentDial {
		t.Errorf("defaults not applied: %+v", d)
	}
}

func TestPolicyResolvesOnceAndDialsThatAddress(t *testing.T) {
	calls := 0
	r := countingResolver{fakeResolver{"flip.example.com": {"10.2.0.1"}}, &calls}
	p, err := NewPolicy([]TargetRule{{CIDRs: []string{"10.2.0.0/24"}, Mode: ModeSplice}}, r)
	if err != nil {
		t.Fatal(err)
	}
	d := p.Decide(context.Background(), "bob", "flip.example.com", 22)
	if d.Mode != ModeSplice || d.DialAddr() != "10.2.0.1:22" || calls != 1 {
		t.Errorf("decision %+v after %d lookups", d, calls)
	}
}

type countingResolver struct {
	fakeResolver
	n *int
}

func (c countingResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	*c.n++
	return c.fakeResolver.LookupNetIP(ctx, network, host)
}

func TestPolicyLoopbackNeedsANarrowCIDR(t *testing.T) {
	p := mustPolicy(t, []TargetRule{
		{CIDRs: []string{"0.0.0.0/0", "::/0"}},
		{CIDRs: []string{"169.254.169.254/32"}, Ports: []int{80}},
	})
	ctx := context.Background()
	if d := p.Decide(ctx, "bob", "127.0.0.1", 22); d.Mode != ModeDeny {
		t.Errorf("0.0.0.0/0 reached loopback: %+v", d)
	}
	if d := p.Decide(ctx, "bob", "::1", 22); d.Mode != ModeDeny {
		t.Errorf("::/0 reached loopback: %+v", d)
	}
	if d := p.Decide(ctx, "bob", "10.0.0.1", 22); d.Mode != ModeAccelerate {
		t.Errorf("0.0.0.0/0 did not reach 10.0.0.1: %+v", d)
	}
	if d := p.Decide(ctx, "bob", "169.254.169.254", 80); d.Mode != ModeAccelerate || d.Rule != 1 {
		t.Errorf("named metadata address not reached: %+v", d)
	}
}

func TestPolicyNoRulesDeniesAll(t *testing.T) {
	p := mustPolicy(t, nil)
	if d := p.Decide(context.Background(), "bob", "web.example.com", 22); d.Mode != ModeDeny {
		t.Errorf("empty policy allowed: %+v", d)
	}
}

func TestPolicyRootOnlyWhenNamed(t *testing.T) {
	for _, tc := range []struct {
		remote []string
		user   string
		ok     bool
	}{
		{nil, "deploy", true},
		{nil, "root", false},
		{[]string{"*"}, "root", false},
		{[]string{"r*"}, "root", false},
		{[]string{"*"}, "deploy", true},
		{[]string{"deploy"}, "ops", false},
		{[]string{"deploy", "root"}, "root", true},
		// sshd cuts a name at ':' (BSD auth style): "root:x" is root.
		{nil, "root:x", false},
		{[]string{"*"}, "root:", false},
		{[]string{"deploy*"}, "deploy:x", false},
		{[]string{"*"}, "root\x00", false},
		{[]string{"*"}, "", false},
	} {
		d := Decision{RemoteUsers: tc.remote}
		if got := d.AllowsRemoteUser(tc.user); got != tc.ok {
			t.Errorf("remote_users %v, %s: %v want %v", tc.remote, tc.user, got, tc.ok)
		}
	}
}

func TestNewPolicyRejectsBadCIDR(t *testing.T) {
	if _, err := NewPolicy([]TargetRule{{CIDRs: []string{"10.0.0.0/40"}}}, lab); err == nil {
		t.Error("bad cidr accepted")
	}
}

// TestPolicyGrantsForwarding: only a forward rule that applies to the
// person asks for certificates that permit port forwarding.
func TestPolicyGrantsForwarding(t *testing.T) {
	p := mustPolicy(t, []TargetRule{
		{Hosts: []string{"*.example.com"}, RemoteUsers: []string{"*"}},
		{Hosts: []string{"db1.example.com"}, Users: []string{"alice"}, Ports: []int{5432}, Mode: ModeForward},
		{Hosts: []string{"web.example.com"}, Users: []string{"carol"}, Ports: []int{80}, Mode: ModeDeny},
	})
	for person, want := range map[string]bool{"alice": true, "bob": false, "carol": false} {
		if got := p.GrantsForwarding(person); got != want {
			t.Errorf("GrantsForwarding(%s) = %v", person, got)
		}
	}
}

// TestPolicyRecheck: what was let through is decided again against a
// new policy, by the name, address and port it was opened for (no new
// lookup) and the remote user it logged in as; anything the new policy
// would not open the same way is reported with a reason.
func TestPolicyRecheck(t *testing.T) {
	ctx := context.Background()
	before := mustPolicy(t, []TargetRule{
		{Hosts: []string{"web.example.com"}, Users: []string{"alice", "bob"}, RemoteUsers: []string{"deploy", "ops"}},
		{Hosts: []string{"db1.example.com"}, Ports: []int{5432}, Mode: ModeForward},
	})
	web := before.Decide(ctx, "bob", "web.example.com", 22)
	db := before.Decide(ctx, "bob", "db1.example.com", 5432)
	if web.Mode != ModeAccelerate || db.Mode != ModeForward {
		t.Fatalf("decisions %+v %+v", web, db)
	}
	for _, tc := range []struct {
		name   string
		rules  []TargetRule
		person string
		d      Decision
		user   string
		cut    bool
	}{
		{"unchanged", nil, "bob", web, "deploy", false},
		{"person removed", []TargetRule{{Hosts: []string{"web.example.com"}, Users: []string{"alice"}, RemoteUsers: []string{"deploy"}}}, "bob", web, "deploy", true},
		{"remote user removed", []TargetRule{{Hosts: []string{"web.example.com"}, RemoteUsers: []string{"ops"}}}, "bob", web, "deploy", true},
		{"remote user not known yet", []TargetRule{{Hosts: []string{"web.example.com"}, RemoteUsers: []string{"ops"}}}, "bob", web, "", false},
		{"now spliced", []TargetRule{{Hosts: []string{"web.example.com"}, Mode: ModeSplice}}, "bob", web, "deploy", true},
		{"other credential", []TargetRule{{Hosts: []string{"web.example.com"}, RemoteUsers: []string{"*"}, Credential: "ops"}}, "bob", web, "deploy", true},
		{"denied first", []TargetRule{{CIDRs: []string{"10.2.0.7"}, Mode: ModeDeny}, {Hosts: []string{"*"}, RemoteUsers: []string{"*"}}}, "bob", web, "deploy", true},
		{"forward removed", []TargetRule{{Hosts: []string{"web.example.com"}, RemoteUsers: []string{"*"}}}, "bob", db, "", true},
		{"forward kept", []TargetRule{{CIDRs: []string{"10.1.0.0/16"}, Ports: []int{5432}, Mode: ModeForward}}, "bob", db, "", false},
		{"forward now dialled by the agent", []TargetRule{{CIDRs: []string{"10.1.0.0/16"}, Ports: []int{5432}, Mode: ModeForward, AgentDial: true}}, "bob", db, "", true},
		// agent_dial means nothing for a session gomux terminates: a
		// reload of upstream.agent_dial must not cut it.
		{"agent_dial on a session's rule", []TargetRule{{Hosts: []string{"web.example.com"}, Users: []string{"bob"}, RemoteUsers: []string{"deploy"}, AgentDial: true}}, "bob", web, "deploy", false},
	} {
		p := before
		if tc.rules != nil {
			p = mustPolicy(t, tc.rules)
		}
		if why := p.Recheck(tc.person, tc.d, tc.user); (why != "") != tc.cut {
			t.Errorf("%s: Recheck = %q, want cut %v", tc.name, why, tc.cut)
		}
	}
}

// TestHostPatternsMatchWithinOneLabel: in a host pattern, *, ? and [..]
// match within one DNS label, as in TLS, so a rule about a zone or a
// name prefix never reaches a deeper name a person's own DNS could
// point anywhere. "*" alone still means every host.
func TestHostPatternsMatchWithinOneLabel(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"*.prod.example.com", "web.prod.example.com", true},
		{"*.prod.example.com", "a.b.prod.example.com", false},
		{"*.prod.example.com", "prod.example.com", false},
		{"*.*.prod.example.com", "a.b.prod.example.com", true},
		{"build-*", "build-7", true},
		{"build-*", "build.attacker.example", false},
		{"build-*", "build-7.attacker.example", false},
		{"gmxok*.test", "gmxok1.test", true},
		{"gmxok*.test", "gmxok.evil.test", false},
		{"web?.lab", "web1.lab", true},
		{"web?.lab", "web.x.lab", false},
		{"web[0-9].lab", "web3.lab", true},
		{"web[^a].lab", "web..lab", false},
		{"10.0.0.*", "10.0.0.7", true},
		{"10.0.*", "10.0.0.7", false},
		{"10.*.*.*", "10.0.0.7", true},
		{"*", "a.b.c.example.com", true},
		{"*", "10.0.0.7", true},
		{"*", "fd00::5", true},
		{"fd00::*", "fd00::5", true},
		{"web.lab", "web.lab", true},
		{"web.lab", "web.lab.evil", false},
	} {
		if got := matchHost(tc.pattern, tc.name); got != tc.want {
			t.Errorf("matchHost(%q, %q) = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
	// Through Decide: the rule's wildcard does not carry a request for a
	// deeper name to the address it resolves to.
	res := fakeResolver{"gmxok.evil.test": {"192.0.2.66"}, "gmxok1.test": {"192.0.2.1"}}
	p, err := NewPolicy([]TargetRule{{Hosts: []string{"gmxok*.test"}, Mode: ModeAccelerate}}, res)
	if err != nil {
		t.Fatal(err)
	}
	if d := p.Decide(context.Background(), "bob", "gmxok.evil.test", 22); d.Mode != ModeDeny {
		t.Errorf("gmxok.evil.test under gmxok*.test: %s rule %d", d.Mode, d.Rule)
	}
	if d := p.Decide(context.Background(), "bob", "gmxok1.test", 22); d.Mode != ModeAccelerate {
		t.Errorf("gmxok1.test under gmxok*.test: %s (%s)", d.Mode, d.Reason)
	}
}

// TestPolicyNeverDialsBalancers: a name that resolves into the networks
// whose PROXY headers gomux trusts is refused by every rule gomux dials
// itself; a forward rule (dialled from a target) is not affected.
func TestPolicyNeverDialsBalancers(t *testing.T) {
	p := mustPolicy(t, []TargetRule{
		{Hosts: []string{"web.example.com"}, Ports: []int{8080}, Mode: ModeForward},
		{Hosts: []string{"*.example.com"}, RemoteUsers: []string{"*"}},
		{Hosts: []string{"elsewhere.example"}, Mode: ModeSplice},
	}).withBalancers([]netip.Prefix{netip.MustParsePrefix("10.2.0.0/24"), netip.MustParsePrefix("192.0.2.1/32")})
	ctx := context.Background()
	for host, port := range map[string]int{"web.example.com": 22, "elsewhere.example": 22} {
		if d := p.Decide(ctx, "alice", host, port); d.Mode != ModeDeny || !strings.Contains(d.Reason, "trusted_networks") {
			t.Errorf("%s:%d resolving into a balancer network: %+v", host, port, d)
		}
	}
	if d := p.Decide(ctx, "alice", "db1.example.com", 22); d.Mode != ModeAccelerate {
		t.Errorf("a host outside the balancer networks: %+v", d)
	}
	if d := p.Decide(ctx, "alice", "web.example.com", 8080); d.Mode != ModeForward {
		t.Errorf("a forward rule's destination: %+v", d)
	}
}
