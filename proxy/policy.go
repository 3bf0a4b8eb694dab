package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path"
	"strconv"
	"strings"
)

// Decision is what policy says about one forwarding request, with the rule
// that said it and the address it resolved, so the caller dials exactly
// what was checked and logs can show why.
type Decision struct {
	Mode Mode
	// Rule is the index of the matching rule, -1 when none matched.
	Rule int
	// Host is the normalized name: lowercased, without a trailing dot; an
	// IP literal in its canonical form.
	Host string
	// Addr is the address Host resolved to, the only one the caller may
	// dial. Invalid when resolution failed.
	Addr netip.Addr
	// Port is the requested port.
	Port int
	// RemoteUsers limits the login names on the target; nil means any
	// except root.
	RemoteUsers []string
	// Credential names the upstream credential (DefaultCredential when the
	// rule names none).
	Credential string
	// AgentDial lets a forward inside an accelerated session be dialled
	// by the agent instead of the target's sshd.
	AgentDial bool
	// Reason says why a request was denied, for the log and the client.
	Reason string
}

// DialAddr is the checked address and port, the only thing to dial.
func (d Decision) DialAddr() string {
	return netip.AddrPortFrom(d.Addr, uint16(d.Port)).String()
}

// HostPort is the normalized name with the port, as known_hosts looks it up.
func (d Decision) HostPort() string { return joinHostPort(d.Host, d.Port) }

// Resolver turns a host name into addresses; *net.Resolver is one. Tests
// inject a fake so policy needs no DNS.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Policy decides who may reach what. It is immutable once built, so one
// value is shared by every connection without locking.
type Policy struct {
	rules    []compiledRule
	resolver Resolver
	// balancers are proxy_protocol.trusted_networks: gomux never dials
	// there (a host there could send gomux a forged PROXY header).
	balancers []netip.Prefix
}

// withBalancers is p refusing, for every rule gomux dials itself
// (accelerate, splice), the networks of the balancers whose PROXY
// headers gomux trusts: a person who reached a host there could connect
// to gomux from it claiming any client address. Load refuses a rule whose
// cidrs name them; this holds for names that resolve there too.
func (p *Policy) withBalancers(nets []netip.Prefix) *Policy {
	q := *p
	q.balancers = nets
	return &q
}

type compiledRule struct {
	TargetRule
	nets  []netip.Prefix
	ports []int
}

// specialBlocks are the networks no rule reaches unless its cidrs name
// them: the bastion's or target's own loopback, link-local (cloud metadata
// at 169.254.169.254 included) and the unspecified address, which dials
// loopback; and the IPv6 forms that carry an IPv4 address a network may
// deliver to (NAT64's well-known and local-use prefixes, IPv4-compatible
// ::a.b.c.d), which no IPv4 cidrs rule would see: "64:ff9b::a32:5" is
// 10.50.0.5 wherever a NAT64 gateway (DNS64 in a cloud VPC) runs.
var specialBlocks = []netip.Prefix{
	netip.MustParsePrefix("64:ff9b::/96"),
	netip.MustParsePrefix("64:ff9b:1::/48"),
	netip.MustParsePrefix("::/96"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("224.0.0.0/24"),
	netip.MustParsePrefix("ff00::/8"),
}

// NewPolicy builds a policy from validated rules, as LoadConfig resolved
// them (each rule's AgentDial already holds upstream.agent_dial when the
// rule sets none).
func NewPolicy(rules []TargetRule, resolver Resolver) (*Policy, error) {
	p := &Policy{resolver: resolver}
	for i, r := range rules {
		cr := compiledRule{TargetRule: r, ports: r.Ports}
		cr.Hosts = nil
		for _, h := range r.Hosts {
			cr.Hosts = append(cr.Hosts, strings.TrimSuffix(strings.ToLower(h), "."))
		}
		if len(cr.ports) == 0 {
			cr.ports = []int{22}
		}
		for _, c := range r.CIDRs {
			n, err := parseCIDR(c)
			if err != nil {
				return nil, &FieldError{fmt.Sprintf("targets[%d].cidrs", i), err}
			}
			cr.nets = append(cr.nets, n)
		}
		p.rules = append(p.rules, cr)
	}
	return p, nil
}

// parseCIDR accepts a network or a single address (a /32 or /128).
func parseCIDR(s string) (netip.Prefix, error) {
	if n, err := netip.ParsePrefix(s); err == nil {
		if n.Addr().Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q: zones are not allowed", s)
		}
		return netip.PrefixFrom(n.Addr().Unmap(), unmappedBits(n)).Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not a network (e.g. 10.0.0.0/8) or an address", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func unmappedBits(n netip.Prefix) int {
	if n.Addr().Is4In6() {
		return max(n.Bits()-96, 0)
	}
	return n.Bits()
}

// NormalizeHost lowercases a requested host and drops one trailing dot;
// an IP literal (brackets allowed) becomes its canonical form, IPv4-mapped
// IPv6 as IPv4. It fails on names no resolver would accept, so odd spellings
// cannot slip past a rule.
func NormalizeHost(host string) (string, netip.Addr, error) {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	if a, err := netip.ParseAddr(h); err == nil {
		if a.Zone() != "" {
			return "", netip.Addr{}, fmt.Errorf("host %q: zoned addresses are not allowed", host)
		}
		a = a.Unmap()
		return a.String(), a, nil
	}
	if h == "" || len(h) > 253 {
		return "", netip.Addr{}, fmt.Errorf("host %q is not a host name", host)
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return "", netip.Addr{}, fmt.Errorf("host %q is not a host name", host)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", netip.Addr{}, fmt.Errorf("host %q is not a host name", host)
			}
		}
	}
	return h, netip.Addr{}, nil
}

// Decide is the one function every forwarding request goes through: from
// the front and from inside an accelerated session. It normalizes host,
// resolves it once, and applies the first rule matching the person, name,
// address and port. No match denies: a bastion must not reach what no rule
// names.
func (p *Policy) Decide(ctx context.Context, person, host string, port int) Decision {
	deny := Decision{Mode: ModeDeny, Rule: -1, Host: host, Port: port}
	if port < 1 || port > 65535 {
		deny.Reason = fmt.Sprintf("port %d is not a TCP port", port)
		return deny
	}
	name, addr, reason := p.resolve(ctx, host)
	if name != "" {
		deny.Host = name
	}
	if reason != "" {
		deny.Reason = reason
		return deny
	}
	return p.decideResolved(person, name, addr, port)
}

// decideResolved applies the first rule matching the person, the
// normalized name, the address it resolved to and the port.
func (p *Policy) decideResolved(person, name string, addr netip.Addr, port int) Decision {
	special := isSpecial(addr)
	for i, r := range p.rules {
		if !r.matches(person, name, addr, port, special) {
			continue
		}
		d := Decision{Mode: r.Mode, Rule: i, Host: name, Addr: addr, Port: port,
			RemoteUsers: r.RemoteUsers, Credential: r.Credential, AgentDial: r.AgentDial}
		if d.Credential == "" {
			d.Credential = DefaultCredential
		}
		switch {
		case d.Mode == ModeDeny:
			d.Reason = fmt.Sprintf("denied by targets[%d]", i)
		case d.Mode != ModeForward && containsAddr(p.balancers, addr):
			d.Mode, d.RemoteUsers = ModeDeny, nil
			d.Reason = fmt.Sprintf("%s is in proxy_protocol.trusted_networks, which gomux never dials", addr)
		}
		return d
	}
	deny := Decision{Mode: ModeDeny, Rule: -1, Host: name, Addr: addr, Port: port, Reason: "no rule allows it"}
	if special {
		deny.Reason = "no rule names this loopback, link-local, unspecified or IPv4-embedding (NAT64) address in cidrs"
	}
	return deny
}

// GrantsForwarding says whether a forward rule applies to person, so the
// upstream certificates minted for them must permit port forwarding; for
// anyone else they do not.
func (p *Policy) GrantsForwarding(person string) bool {
	for _, r := range p.rules {
		if r.Mode == ModeForward && (len(r.Users) == 0 || matchAny(r.Users, person)) {
			return true
		}
	}
	return false
}

// Recheck decides again what was let through by d: the same person, name,
// address (the one dialled, not resolved again) and port, and, once the
// inner login is known, the remote user. It returns why the live policy
// would no longer open it as it is open ("" when it still would): denied
// now, or served another way (another mode, credential or dialler), which
// the open connection cannot become.
func (p *Policy) Recheck(person string, d Decision, remoteUser string) string {
	now := p.decideResolved(person, d.Host, d.Addr, d.Port)
	switch {
	case now.Mode == ModeDeny:
		return now.Reason
	case now.Mode != d.Mode:
		return fmt.Sprintf("targets[%d] now says %s, not %s", now.Rule, now.Mode, d.Mode)
	case now.Credential != d.Credential:
		return fmt.Sprintf("targets[%d] now logs in with credential %q, not %q", now.Rule, now.Credential, d.Credential)
	case d.Mode == ModeForward && now.AgentDial != d.AgentDial:
		return fmt.Sprintf("targets[%d] now changes agent_dial", now.Rule)
	case remoteUser != "" && !now.AllowsRemoteUser(remoteUser):
		return fmt.Sprintf("targets[%d] no longer lets %s in as %q", now.Rule, person, remoteUser)
	}
	return ""
}

// resolve normalizes host and finds the address to check and dial: host
// itself when it is an address, else the first address it resolves to.
// reason says why there is none; name is "" when host is not a name.
func (p *Policy) resolve(ctx context.Context, host string) (name string, addr netip.Addr, reason string) {
	name, addr, err := NormalizeHost(host)
	if err != nil {
		return "", addr, err.Error()
	}
	if addr.IsValid() {
		return name, addr, ""
	}
	addrs, err := p.resolver.LookupNetIP(ctx, "ip", name)
	if err != nil {
		return name, addr, fmt.Sprintf("cannot resolve %s: %v", name, err)
	}
	if len(addrs) == 0 {
		return name, addr, fmt.Sprintf("cannot resolve %s: no addresses", name)
	}
	// The first address is the one dialled; only it is checked.
	addr = addrs[0].Unmap()
	if addr.Zone() != "" {
		return name, addr, fmt.Sprintf("%s resolves to a zoned address %s", name, addr)
	}
	return name, addr, ""
}

// matches says whether the rule applies to person going to name (addr)
// on port. Loopback, link-local and unspecified addresses (special) are
// reached only by a rule that names them in cidrs; a "*" does not.
func (r *compiledRule) matches(person, name string, addr netip.Addr, port int, special bool) bool {
	switch {
	case len(r.Users) > 0 && !matchAny(r.Users, person),
		len(r.Hosts) > 0 && !matchAnyHost(r.Hosts, name),
		len(r.nets) > 0 && !containsAddr(r.nets, addr),
		!containsInt(r.ports, port):
		return false
	}
	return r.Mode == ModeDeny || !special || namesSpecial(r.nets, addr)
}

// isSpecial reports an address only an explicit cidrs entry may reach.
func isSpecial(a netip.Addr) bool {
	return containsAddr(specialBlocks, a) || a.IsLoopback() || a.IsLinkLocalUnicast() ||
		a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast() || a.IsUnspecified()
}

// namesSpecial reports whether a network in nets holding a lies wholly in
// a special block: 127.0.0.0/8 names loopback, 0.0.0.0/0 does not.
func namesSpecial(nets []netip.Prefix, a netip.Addr) bool {
	for _, n := range nets {
		if !n.Contains(a) {
			continue
		}
		for _, b := range specialBlocks {
			if b.Bits() <= n.Bits() && b.Contains(n.Addr()) {
				return true
			}
		}
	}
	return false
}

func containsAddr(nets []netip.Prefix, a netip.Addr) bool {
	for _, n := range nets {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// AllowsRemoteUser says whether the decision lets the client log in to the
// target as user. Root is allowed only where the rule lists "root"
// literally: no pattern reaches it. A name that is not a plain login name
// (ValidLoginName) is refused whatever the rule says: sshd cuts a name at
// its first ':' (a BSD auth style, on every platform), so "root:x" would
// log in as root past a rule that allows any user but root.
func (d Decision) AllowsRemoteUser(user string) bool {
	if ValidLoginName(user) != nil {
		return false
	}
	if user == "root" {
		for _, u := range d.RemoteUsers {
			if u == "root" {
				return true
			}
		}
		return false
	}
	return len(d.RemoteUsers) == 0 || matchAny(d.RemoteUsers, user)
}

func matchAny(patterns []string, s string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, s); ok {
			return true
		}
	}
	return false
}

// matchAnyHost says whether name matches one of the host patterns.
func matchAnyHost(patterns []string, name string) bool {
	for _, p := range patterns {
		if matchHost(p, name) {
			return true
		}
	}
	return false
}

// matchHost matches a normalized name against a host pattern label by
// label, as TLS matches wildcard names: *, ? and [..] never cross a dot,
// so *.prod.example.com does not match a.b.prod.example.com and build-*
// does not match build.attacker.example, names whose DNS the person
// asking may control. A pattern that is exactly "*" matches every host.
// Deeper names are matched on purpose by more labels (*.*.prod.example.com)
// or by cidrs.
func matchHost(pattern, name string) bool {
	if pattern == "*" {
		return true
	}
	pl, nl := strings.Split(pattern, "."), strings.Split(name, ".")
	if len(pl) != len(nl) {
		return false
	}
	for i := range pl {
		if ok, _ := path.Match(pl[i], nl[i]); !ok {
			return false
		}
	}
	return true
}

// checkHostPattern checks a host pattern label by label, so a [..] or
// an escape that would have to hold a dot is refused at load instead of
// never matching.
func checkHostPattern(p string) error {
	for _, l := range strings.Split(p, ".") {
		if _, err := path.Match(l, ""); err != nil {
			return fmt.Errorf("bad host pattern %q (*, ? and [..] match within one DNS label; a dot cannot be inside [..] or escaped): %w", p, err)
		}
	}
	return nil
}

func containsInt(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func checkPattern(p string) error {
	if _, err := path.Match(p, ""); err != nil {
		return fmt.Errorf("bad pattern %q: %w", p, err)
	}
	return nil
}

func splitHostPort(addr string) (string, int, error) {
	h, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.Atoi(ps)
	if err != nil || p < 0 || p > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", addr)
	}
	return h, p, nil
}
