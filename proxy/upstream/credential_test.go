package upstream

import (
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// TestSignUserCertNamesPerson: a minted user certificate names the
// person in its key ID, is valid for the one principal and a short
// time, has a fresh serial, and permits port forwarding only when asked.
func TestSignUserCertNamesPerson(t *testing.T) {
	ca := newSigner(t)
	s, err := signUserCert(ca, "alice", "deploy", false, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cert, ok := s.PublicKey().(*gossh.Certificate)
	if !ok {
		t.Fatalf("not a certificate: %T", s.PublicKey())
	}
	now := time.Now()
	if cert.KeyId != "gomux:alice" || len(cert.ValidPrincipals) != 1 || cert.ValidPrincipals[0] != "deploy" ||
		cert.CertType != gossh.UserCert || time.Unix(int64(cert.ValidBefore), 0).After(now.Add(6*time.Minute)) ||
		time.Unix(int64(cert.ValidAfter), 0).After(now) {
		t.Errorf("certificate %+v", cert)
	}
	checker := gossh.CertChecker{IsUserAuthority: func(k gossh.PublicKey) bool {
		return string(k.Marshal()) == string(ca.PublicKey().Marshal())
	}}
	if err := checker.CheckCert("deploy", cert); err != nil {
		t.Errorf("CA does not verify: %v", err)
	}
	if err := checker.CheckCert("root", cert); err == nil {
		t.Error("certificate valid for another user")
	}
	s2, _ := signUserCert(ca, "alice", "deploy", true, 5*time.Minute)
	c2 := s2.PublicKey().(*gossh.Certificate)
	if c2.Serial == cert.Serial {
		t.Error("serials repeat")
	}
	// Port forwarding only where a forward rule needs it.
	if _, ok := cert.Extensions["permit-port-forwarding"]; ok {
		t.Error("certificate without forwarding permits port forwarding")
	}
	if _, ok := c2.Extensions["permit-port-forwarding"]; !ok {
		t.Error("certificate with forwarding lacks permit-port-forwarding")
	}
}
