package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/gomux/gomux/proxy/admission"
)

// ProxyProtocolConfig lets gomux sit behind a TCP load balancer (HAProxy,
// an AWS NLB, a Kubernetes Service with a proxy-protocol annotation) and
// still see each client's own address: in its logs, its per-source
// limits and a certificate's source-address option.
type ProxyProtocolConfig struct {
	// TrustedNetworks are the load balancers' addresses. A connection from
	// one must start with a PROXY protocol v1 or v2 header (as HAProxy and
	// nginx require once it is on), or it is closed. A connection from any
	// other address is served as it is, with its own address, and is
	// closed if it sends a PROXY header: nobody else may claim a source.
	// Default none: PROXY protocol off.
	TrustedNetworks []string `yaml:"trusted_networks"`
}

// validateOps checks the fields of running gomux for a team: metrics and
// the PROXY protocol.
func (c *Config) validateOps() error {
	if c.MetricsListen != "" {
		if _, _, err := splitHostPort(c.MetricsListen); err != nil {
			return &FieldError{"metrics_listen", err}
		}
	}
	nets, err := c.ProxyProtocol.networks()
	if err != nil {
		return err
	}
	if len(nets) == 0 {
		return nil
	}
	own, err := ownAddrs()
	if err != nil {
		return &FieldError{"proxy_protocol.trusted_networks", fmt.Errorf("cannot list gomux's own addresses to check against: %w", err)}
	}
	return checkTrustedNetworks(nets, c.Targets, c.Listen, own)
}

// ownAddrs are the addresses of this machine's interfaces.
func ownAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// checkTrustedNetworks refuses a trusted network from which a person
// could send gomux a PROXY header of their choosing, and so any client
// address (past per-source limits, a certificate's source-address, the
// logs): one that a non-deny rule's cidrs reach (a host there is one a
// person may log in to, then connect to gomux from), or one holding
// gomux's own listen or interface address (a splice to gomux's own
// listener arrives from it). Loopback is allowed, for a balancer on the
// same machine: no rule reaches loopback unless its cidrs name it, which
// the first check refuses.
func checkTrustedNetworks(nets []netip.Prefix, rules []TargetRule, listen string, own []netip.Addr) error {
	type self struct {
		what string
		addr netip.Addr
	}
	var selves []self
	if h, _, err := splitHostPort(listen); err == nil {
		if a, err := netip.ParseAddr(h); err == nil {
			selves = append(selves, self{"listen address", a.Unmap()})
		}
	}
	for _, a := range own {
		selves = append(selves, self{"own address", a})
	}
	for i, n := range nets {
		f := fmt.Sprintf("proxy_protocol.trusted_networks[%d]", i)
		for j, r := range rules {
			if r.Mode == ModeDeny || r.Mode == ModeForward {
				// A forward rule's destination is dialled from the
				// session's target, where its addresses (its loopback)
				// are the target's own.
				continue
			}
			for _, c := range r.CIDRs {
				if rn, err := parseCIDR(c); err == nil && rn.Overlaps(n) {
					return &FieldError{f, fmt.Errorf("%s overlaps targets[%d].cidrs %s: a person that rule lets reach a host there could connect to gomux from it with a forged PROXY header; list only the balancers' own addresses", n, j, rn)}
				}
			}
		}
		for _, s := range selves {
			if s.addr.IsLoopback() || s.addr.IsUnspecified() || !n.Contains(s.addr) {
				continue
			}
			return &FieldError{f, fmt.Errorf("%s holds gomux's %s %s: a connection gomux itself makes (a splice to its own listener) would come from a trusted address and could carry a forged PROXY header; list only the balancers' own addresses", n, s.what, s.addr)}
		}
	}
	return nil
}

func (p ProxyProtocolConfig) networks() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, n := range p.TrustedNetworks {
		pr, err := parseCIDR(n)
		if err != nil {
			return nil, &FieldError{fmt.Sprintf("proxy_protocol.trusted_networks[%d]", i), err}
		}
		out = append(out, pr)
	}
	return out, nil
}

// withProxyProtocol wraps ln when proxy_protocol lists trusted networks.
func (s *Server) withProxyProtocol(ln net.Listener) net.Listener {
	nets, _ := s.start.ProxyProtocol.networks() // validated with the config
	if len(nets) == 0 {
		return ln
	}
	return admission.NewListener(ln, admission.ListenerConfig{
		Trusted: nets,
		Grace:   func() time.Duration { return s.live().cfg.Limits.LoginGraceTime.D() },
		Limits:  s.limits,
		Metrics: admissionMetrics{s.metrics},
		Log:     s.log,
		Events:  admission.Events{ProxyProtocol: EventProxyProtocol, Limit: EventLimit},
	})
}

// admissionMetrics counts what the PROXY protocol listener reports in
// gomux's metrics.
type admissionMetrics struct{ m *metrics }

func (a admissionMetrics) ProxyHeader(result string) { a.m.proxyHeader(result) }
func (a admissionMetrics) FrontConn(result string)   { a.m.frontConn(result) }
func (a admissionMetrics) Limit(stage string)        { a.m.limit(stage) }
