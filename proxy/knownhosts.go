package proxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	gossh "golang.org/x/crypto/ssh"
)

// KnownHostsLineFor is the @cert-authority line trusting gomux's host CA
// only for the given known_hosts host patterns, so a client does not
// trust it for names gomux never serves.
func (h *HostCA) KnownHostsLineFor(patterns []string) string {
	return "@cert-authority " + strings.Join(patterns, ",") + " " + string(gossh.MarshalAuthorizedKey(h.ca.PublicKey()))
}

// CAHostPatterns turns the accelerate rules into OpenSSH known_hosts host
// patterns covering every name gomux presents a certificate for: gomux
// itself (as clients alias it, HostKeyAlias gomux), each rule's hosts
// patterns, and, for a rule with only cidrs, the IP literals of its IPv4
// networks (octet by octet: 10.0.0.0/12 is 10.0.*.* to 10.15.*.*). ssh
// looks a host on another port up as [name]:port, so those are written so.
// What known_hosts cannot say is left out, so clients refuse those names
// rather than trust the CA more widely; notes say what was left out. OpenSSH's
// * crosses dots, so a pattern there is wider than the rule's, but only
// under the same suffix the operator wrote.
func CAHostPatterns(rules []TargetRule) (patterns, notes []string) {
	patterns = []string{frontName()}
	add := func(p string, ports []int) {
		for _, port := range ports {
			q := p
			if port != 22 {
				q = fmt.Sprintf("[%s]:%d", p, port)
			}
			if !slices.Contains(patterns, q) {
				patterns = append(patterns, q)
			}
		}
	}
	for i, r := range rules {
		if r.Mode != ModeAccelerate {
			continue
		}
		f := fmt.Sprintf("targets[%d]", i)
		ports := r.Ports
		if len(ports) == 0 {
			ports = []int{22}
		}
		for _, h := range r.Hosts {
			h = strings.TrimSuffix(strings.ToLower(h), ".")
			if strings.ContainsAny(h, "[]\\,! \t") || h == "" {
				notes = append(notes, fmt.Sprintf("%s: host pattern %q cannot be written in known_hosts ([..] and escapes are not OpenSSH patterns); left out: list the names it stands for", f, h))
				continue
			}
			add(h, ports)
		}
		if len(r.Hosts) > 0 {
			// Every name and IP literal the rule takes matches hosts.
			continue
		}
		for _, c := range r.CIDRs {
			n, err := parseCIDR(c)
			if err != nil || !n.Addr().Is4() {
				notes = append(notes, fmt.Sprintf("%s: cidrs %s cannot be written in known_hosts (only IPv4 networks can); left out", f, c))
				continue
			}
			for _, p := range ipv4Patterns(n) {
				add(p, ports)
			}
		}
		notes = append(notes, fmt.Sprintf("%s: has cidrs but no hosts, so only its IP literals are covered; names that resolve into it are left out: add hosts patterns for them", f))
	}
	if slices.Contains(patterns, "*") {
		return []string{"*"}, notes
	}
	return patterns, notes
}

// ipv4Patterns writes an IPv4 network as known_hosts patterns, one per
// network of the next whole octet inside it: 10.0.0.0/8 is "10.*.*.*",
// 192.0.2.0/23 is "192.0.2.*" and "192.0.3.*".
func ipv4Patterns(n netip.Prefix) []string {
	bits := (n.Bits() + 7) / 8 * 8
	var out []string
	for a := n.Masked().Addr(); n.Contains(a); {
		b := a.As4()
		labels := make([]string, 4)
		for i := range labels {
			labels[i] = "*"
			if i < bits/8 {
				labels[i] = fmt.Sprint(b[i])
			}
		}
		out = append(out, strings.Join(labels, "."))
		// The next network of that size, if still inside n.
		if bits == 0 {
			break
		}
		step := uint32(1) << (32 - bits)
		v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		if v+step < v {
			break
		}
		v += step
		a = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	return out
}
