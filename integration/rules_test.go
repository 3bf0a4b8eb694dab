package integration

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
)

// rulesLab is two targets with names only gomux resolves: gmxok1.lab is
// t0, what the rules allow; gmxok.evil.lab and other.lab are t1, a host a
// person points a name of their own at. gomux's upstream known_hosts
// knows every name, so nothing but policy stands between a person and t1.
type rulesLab struct {
	lab        *harness.Lab
	t0, t1     *harness.Target
	hosts      string
	knownHosts string
}

func startRulesLab(t *testing.T) *rulesLab {
	t.Helper()
	lab := harness.Start(t, harness.Options{Targets: 2})
	r := &rulesLab{lab: lab, t0: lab.Targets[0], t1: lab.Targets[1]}
	dir := t.TempDir()
	r.hosts = filepath.Join(dir, "hosts")
	r.knownHosts = filepath.Join(dir, "known_hosts")
	names := map[*harness.Target]string{r.t0: "gmxok1.lab", r.t1: "gmxok.evil.lab other.lab"}
	var hosts, kh strings.Builder
	hosts.WriteString("127.0.0.1 localhost\n::1 localhost\n")
	for _, tg := range []*harness.Target{r.t0, r.t1} {
		fmt.Fprintf(&hosts, "%s %s\n", tg.Addr, names[tg])
		fmt.Fprintf(&kh, "%s,%s\n", strings.ReplaceAll(names[tg], " ", ","), tg.KnownHostsLine())
	}
	must(t, os.WriteFile(r.hosts, []byte(hosts.String()), 0o644))
	must(t, os.WriteFile(r.knownHosts, []byte(kh.String()), 0o644))
	return r
}

// serveExit runs `gomux serve` on a config body (listen and state_dir
// added) and returns how it ended: a config it refuses exits 2 at once; one
// it accepts runs until the context ends.
func serveExit(t *testing.T, body string) result {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gomux.yaml")
	must(t, os.WriteFile(cfg, []byte(fmt.Sprintf("listen: 127.0.0.1:%d\nstate_dir: %s\n%s", freePort(t), dir, body)), 0o600))
	cmd := exec.CommandContext(ctxT(t, 15*time.Second), gomuxBinary(t), "serve", "-config", cfg)
	cmd.WaitDelay = 5 * time.Second
	return runCmd(cmd, nil)
}

// TestRules attacks the rules themselves with the real ssh client: a
// wildcard stretched across a person's own DNS name, a list emptied in the
// file, a rule silent on remote users, a splice rule naming a credential,
// a revocation file gone missing, a trusted balancer network a person
// could send from; and checks that
// `gomux ca -hosts` trusts the CA for the rules' names only.
func TestRules(t *testing.T) {
	r := startRulesLab(t)
	lab := r.lab

	t.Run("wildcard-stays-in-one-label", func(t *testing.T) {
		// Before: "*" crossed dots, and gmxok.evil.lab (t1, which no rule
		// allows) was accelerated under gmxok*.lab.
		g := startGomux(t, lab, gomuxOptions{KnownHosts: r.knownHosts, HostsFile: r.hosts,
			Targets: "  - hosts: [\"gmxok*.lab\"]\n    remote_users: [\"*\"]\n"})
		ctx := ctxT(t, 2*time.Minute)
		if res := runCmd(g.SSH(ctx, "gmxok1.lab", "echo ok"), nil); res.Stdout != "ok\n" {
			t.Fatalf("gmxok1.lab under gmxok*.lab: %+v", res)
		}
		for _, name := range []string{"gmxok.evil.lab", "GMXOK.EVIL.LAB."} {
			res := runCmd(g.SSHVerbose(ctx, name, "echo reached"), nil)
			if res.Code == 0 || strings.Contains(res.Stdout, "reached") || !strings.Contains(res.Stderr, "may not reach") {
				t.Errorf("%s under gmxok*.lab: %+v", name, res)
			}
		}
		if res := stdioForward(ctx, g, "gmxok.evil.lab:22"); strings.HasPrefix(res.Stdout, "SSH-") {
			t.Errorf("ssh -W gmxok.evil.lab:22 reached t1's sshd: %+v", res)
		}
		ds := decisions(g, "front", "gmxok.evil.lab")
		if len(ds) == 0 || ds[0]["mode"] != "deny" || ds[0]["rule"] != float64(-1) {
			t.Errorf("decision for gmxok.evil.lab not a deny by no rule: %v", ds)
		}
	})

	t.Run("emptied-list-exits-2", func(t *testing.T) {
		rule := "targets:\n  - hosts: [web]\n    users: [alice]\n    remote_users: [deploy]\n"
		for _, field := range []string{"users", "remote_users"} {
			for _, empty := range []string{"", " []", " null"} {
				body := strings.Replace(rule, "    "+field+": ", "    "+field+":"+empty+"\n    #", 1)
				if res := serveExit(t, body); res.Code != 2 || !strings.Contains(res.Stderr, "targets[0]."+field) || !strings.Contains(res.Stderr, "empty") {
					t.Errorf("gomux serve with %s:%s: %+v", field, empty, res)
				}
			}
		}
	})

	t.Run("accelerate-rule-needs-remote-users", func(t *testing.T) {
		res := serveExit(t, "targets:\n  - hosts: [web]\n    users: [alice]\n")
		if res.Code != 2 || !strings.Contains(res.Stderr, "targets[0].remote_users: required") {
			t.Errorf("gomux serve with an accelerate rule without remote_users: %+v", res)
		}
	})

	t.Run("splice-rule-with-credential-exits-2", func(t *testing.T) {
		// A spliced connection is the client's own login: a credential
		// there would read as "gomux logs in with legacy" and do nothing.
		res := serveExit(t, "upstream:\n  credentials:\n    legacy: {identity_files: [/nonexistent/key]}\n"+
			"targets:\n  - hosts: [legacy]\n    mode: splice\n    credential: legacy\n")
		if res.Code != 2 || !strings.Contains(res.Stderr, "targets[0].credential: a splice rule") {
			t.Errorf("gomux serve with a splice rule naming a credential: %+v", res)
		}
	})

	t.Run("emptied-users-reload-refused", func(t *testing.T) {
		// Before: a users: list that lost its last entry loaded as "any
		// person", so mallory got in after the reload.
		g := startGomux(t, lab, gomuxOptions{Persons: []string{"mallory"},
			Targets: fmt.Sprintf("  - hosts: [%q]\n    users: [%s]\n    remote_users: [\"*\"]\n", r.t0.Addr, lab.User)})
		ctx := ctxT(t, 2*time.Minute)
		as := func(person string) result {
			return runCmd(exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-J", person+"@gomux", r.t0.Addr, "echo in"), nil)
		}
		if res := as(lab.User); res.Stdout != "in\n" {
			t.Fatalf("%s before the reload: %+v", lab.User, res)
		}
		if res := as("mallory"); res.Code == 0 {
			t.Fatalf("mallory, not in users, got in: %+v", res)
		}
		cfgPath := filepath.Join(g.Dir, "gomux.yaml")
		orig := readFile(t, cfgPath)
		emptied := strings.Replace(orig, "    users: ["+lab.User+"]\n", "    users:\n", 1)
		if emptied == orig {
			t.Fatalf("users line not found in:\n%s", orig)
		}
		must(t, os.WriteFile(cfgPath, []byte(emptied), 0o600))
		must(t, g.cmd.Process.Signal(syscall.SIGHUP))
		waitFor(t, 20*time.Second, func() bool { return len(g.Events(proxy.EventReload)) > 0 })
		for _, e := range g.Events(proxy.EventReload) {
			if e["result"] == "ok" {
				t.Errorf("the emptied users list was applied: %v", e)
			}
			if e["result"] == "failed" && !strings.Contains(fmt.Sprint(e["error"]), "targets[0].users") {
				t.Errorf("reload failure does not name targets[0].users: %v", e)
			}
		}
		if res := as(lab.User); res.Stdout != "in\n" {
			t.Errorf("%s after the refused reload: %+v", lab.User, res)
		}
		if res := as("mallory"); res.Code == 0 || strings.Contains(res.Stdout, "in") {
			t.Errorf("mallory got in after the emptied list: %+v", res)
		}
	})

	t.Run("revoked-keys-file-missing", func(t *testing.T) {
		dir := t.TempDir()
		users := filepath.Join(dir, "users")
		must(t, os.MkdirAll(users, 0o700))
		must(t, os.WriteFile(filepath.Join(users, lab.User+".keys"), []byte(readFile(t, lab.ClientKey+".pub")), 0o600))
		rev := filepath.Join(dir, "revoked_keys")
		must(t, os.WriteFile(rev, nil, 0o600))
		auth := fmt.Sprintf("  authorized_keys: [%s]\n  revoked_keys: [%s]\n", filepath.Join(users, "%u.keys"), rev)
		// Missing at start: gomux does not start.
		if res := serveExit(t, fmt.Sprintf("auth:\n  authorized_keys: [%s]\n  revoked_keys: [%s]\ntargets:\n  - hosts: [web]\n    remote_users: [deploy]\n",
			filepath.Join(users, "%u.keys"), filepath.Join(dir, "absent"))); res.Code != 2 || !strings.Contains(res.Stderr, "missing") {
			t.Errorf("gomux serve with a missing revoked_keys file: %+v", res)
		}
		g := startGomux(t, lab, gomuxOptions{Auth: auth,
			Targets: fmt.Sprintf("  - hosts: [%q]\n    remote_users: [\"*\"]\n", r.t0.Addr)})
		ctx := ctxT(t, 2*time.Minute)
		if res := runCmd(g.SSH(ctx, r.t0.Addr, "echo in"), nil); res.Stdout != "in\n" {
			t.Fatalf("login with an empty revoked_keys: %+v", res)
		}
		// Before: a deleted revocation file revoked nothing.
		must(t, os.Remove(rev))
		if res := runCmd(g.SSH(ctx, r.t0.Addr, "echo in"), nil); !denied(res) {
			t.Errorf("login with revoked_keys missing: %+v", res)
		}
		found := false
		for _, e := range g.Events(proxy.EventFrontAuth) {
			found = found || (e["result"] == "refused" && strings.Contains(fmt.Sprint(e["reason"], e["error"]), "missing"))
		}
		if !found {
			t.Errorf("no front_auth refusal saying revoked_keys is missing")
		}
		must(t, os.WriteFile(rev, nil, 0o600))
		if res := runCmd(g.SSH(ctx, r.t0.Addr, "echo in"), nil); res.Stdout != "in\n" {
			t.Errorf("login once revoked_keys is back: %+v", res)
		}
	})

	t.Run("trusted-network-a-person-could-send-from", func(t *testing.T) {
		pp := func(trusted string) string {
			return fmt.Sprintf("proxy_protocol:\n  trusted_networks: [%s]\ntargets:\n  - cidrs: [%s/32]\n    mode: splice\n", trusted, r.t1.Addr)
		}
		if res := serveExit(t, pp(r.t1.Addr+"/32")); res.Code != 2 || !strings.Contains(res.Stderr, "proxy_protocol.trusted_networks[0]") ||
			!strings.Contains(res.Stderr, "targets[0].cidrs") {
			t.Errorf("trusted network a splice rule reaches: %+v", res)
		}
		if own := ownNonLoopback(t); own.IsValid() {
			if res := serveExit(t, pp(own.String())); res.Code != 2 || !strings.Contains(res.Stderr, "own address") {
				t.Errorf("trusted network holding gomux's own %s: %+v", own, res)
			}
		}
		// A reload that makes a rule reach the running trusted network is
		// refused, and the running rules stay.
		g := startGomux(t, lab, gomuxOptions{Extra: "proxy_protocol:\n  trusted_networks: [127.0.0.2/32]\n",
			Targets: fmt.Sprintf("  - hosts: [%q]\n    remote_users: [\"*\"]\n", r.t0.Addr)})
		cfgPath := filepath.Join(g.Dir, "gomux.yaml")
		appendFile(t, cfgPath, "  - cidrs: [127.0.0.0/8]\n    mode: splice\n")
		must(t, g.cmd.Process.Signal(syscall.SIGHUP))
		waitFor(t, 20*time.Second, func() bool { return len(g.Events(proxy.EventReload)) > 0 })
		if hasEvent(g, proxy.EventReload, "result", "ok") || !hasEvent(g, proxy.EventReload, "result", "failed") {
			t.Errorf("a rule reaching the trusted network was applied")
		}
		if res := runCmd(g.SSH(ctxT(t, time.Minute), r.t0.Addr, "echo in"), nil); res.Stdout != "in\n" {
			t.Errorf("after the refused reload: %+v", res)
		}
	})

	t.Run("ca-hosts-scopes-the-line", func(t *testing.T) {
		g := startGomux(t, lab, gomuxOptions{KnownHosts: r.knownHosts, HostsFile: r.hosts,
			Targets: fmt.Sprintf("  - hosts: [\"gmxok*.lab\"]\n    remote_users: [\"*\"]\n  - cidrs: [%s/32]\n    remote_users: [\"*\"]\n", r.t1.Addr)})
		cmd := exec.Command(gomuxBinary(t), "ca", "-hosts", "-config", filepath.Join(g.Dir, "gomux.yaml"), "-state", filepath.Join(g.Dir, "state"))
		res := runCmd(cmd, nil)
		want := fmt.Sprintf("@cert-authority gomux,gmxok*.lab,%s ssh-ed25519 ", r.t1.Addr)
		if res.Code != 0 || !strings.HasPrefix(res.Stdout, want) || !strings.Contains(res.Stderr, "targets[1]") {
			t.Fatalf("gomux ca -hosts: %+v, want a line starting %q and a note on targets[1]", res, want)
		}
		must(t, os.WriteFile(g.KnownHosts, []byte(res.Stdout), 0o600))
		ctx := ctxT(t, 2*time.Minute)
		// gomux itself (HostKeyAlias gomux), a rule's name and a cidrs
		// rule's IP literal verify against the scoped line...
		for _, host := range []string{"gmxok1.lab", r.t1.Addr} {
			if res := runCmd(g.SSH(ctx, host, "echo ok"), nil); res.Stdout != "ok\n" {
				t.Errorf("%s with the scoped line: %+v", host, res)
			}
		}
		// ...a name outside it does not, though gomux accelerates it.
		res = runCmd(g.SSHVerbose(ctx, "other.lab", "echo reached"), nil)
		if res.Code == 0 || strings.Contains(res.Stdout, "reached") || !strings.Contains(strings.ToLower(res.Stderr), "host key") {
			t.Errorf("other.lab outside the scoped line: %+v", res)
		}
	})
}

// ownNonLoopback is one of this machine's non-loopback, non-link-local
// addresses, or the zero Addr when it has none.
func ownNonLoopback(t *testing.T) netip.Addr {
	t.Helper()
	as, err := net.InterfaceAddrs()
	must(t, err)
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() {
				return ip.Unmap()
			}
		}
	}
	return netip.Addr{}
}
