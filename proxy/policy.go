package proxy

import (
	"fmt"
	"net"
	"path"
	"strconv"
)

// Decision is what policy says about one forwarding request, with the rule
// that said it so logs can show why.
type Decision struct {
	Mode Mode
	// Rule is the index of the matching rule, -1 when none matched.
	Rule int
	// RemoteUsers limits the login names on the target; nil means any.
	RemoteUsers []string
}

// Policy decides who may reach what. It is immutable once built, so one
// value is shared by every connection without locking.
type Policy struct {
	rules []TargetRule
}

// NewPolicy builds a policy from validated rules.
func NewPolicy(rules []TargetRule) *Policy {
	return &Policy{rules: append([]TargetRule(nil), rules...)}
}

// Decide applies the first rule matching the front user, host and port.
// No match denies: a bastion must not reach what no rule names.
func (p *Policy) Decide(frontUser, host string, port int) Decision {
	for i, r := range p.rules {
		if !matchAny(r.Hosts, host) {
			continue
		}
		if len(r.Ports) > 0 && !containsInt(r.Ports, port) {
			continue
		}
		if len(r.Users) > 0 && !matchAny(r.Users, frontUser) {
			continue
		}
		return Decision{Mode: r.Mode, Rule: i, RemoteUsers: r.RemoteUsers}
	}
	return Decision{Mode: ModeDeny, Rule: -1}
}

// AllowsRemoteUser says whether the decision lets the client log in to the
// target as user.
func (d Decision) AllowsRemoteUser(user string) bool {
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
