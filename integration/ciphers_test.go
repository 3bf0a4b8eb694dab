package integration

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
)

// TestOfferedCiphers: the front and the inner session agree on AES (GCM or
// CTR) with the real OpenSSH client, and a client that insists on
// chacha20-poly1305 (which Go computes without assembly on amd64) is
// refused at key exchange with OpenSSH's own "no matching cipher" error,
// on either leg.
func TestOfferedCiphers(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	g := startGomux(t, lab, gomuxOptions{})
	host := lab.Targets[0].Addr
	ctx := ctxT(t, 2*time.Minute)

	// Options after the destination apply to the inner session only: the
	// ProxyJump leg to gomux takes its options from the config file.
	for _, c := range []string{"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr"} {
		got := runCmd(g.SSH(ctx, host, "-o", "Ciphers="+c, "echo ok"), nil)
		if got.Code != 0 || got.Stdout != "ok\n" {
			t.Errorf("inner session with %s: %+v", c, got)
		}
	}
	// At LogLevel INFO OpenSSH prints why the negotiation failed.
	got := runCmd(g.SSHVerbose(ctx, host, "-o", "Ciphers=chacha20-poly1305@openssh.com", "echo ok"), nil)
	if got.Code == 0 || !strings.Contains(got.Stderr, "no matching cipher") {
		t.Errorf("inner session with chacha20-poly1305 only: want a key exchange failure, got %+v", got)
	}

	// The front: gomux itself, logged in to directly (it refuses shell
	// sessions, so only the negotiation is compared).
	front := func(cipher string) result {
		return runCmd(exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig+".info", "-o", "Ciphers="+cipher, "gomux", "true"), nil)
	}
	if got := front("chacha20-poly1305@openssh.com"); got.Code == 0 || !strings.Contains(got.Stderr, "no matching cipher") {
		t.Errorf("front with chacha20-poly1305 only: want a key exchange failure, got %+v", got)
	}
	if got := front("aes128-gcm@openssh.com"); strings.Contains(got.Stderr, "no matching cipher") {
		t.Errorf("front with aes128-gcm: %+v", got)
	}
}
