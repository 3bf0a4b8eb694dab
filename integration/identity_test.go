package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
)

// identityLab is one gomux set up as a shared bastion: a key file per
// login name, a shared file without %u, a user CA and revocation lists,
// re-checking open connections every two seconds.
type identityLab struct {
	t      *testing.T
	lab    *harness.Lab
	g      *Gomux
	dir    string
	users  string // the %u.keys directory
	caKey  string
	caPub  string
	revPub string // revoked keys, authorized_keys format
	revKRL string // revoked keys, binary KRL
	casts  string // audit.record_dir
}

func startIdentityLab(t *testing.T) *identityLab {
	t.Helper()
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("ssh-keygen not installed")
	}
	x := &identityLab{t: t, lab: harness.Start(t, harness.Options{Targets: 1}), dir: t.TempDir()}
	x.users = filepath.Join(x.dir, "users")
	must(t, os.MkdirAll(x.users, 0o700))
	x.caKey = x.keygen("user_ca")
	x.caPub = x.caKey + ".pub"
	x.revPub = filepath.Join(x.dir, "revoked_keys")
	x.revKRL = filepath.Join(x.dir, "revoked.krl")
	x.casts = filepath.Join(x.dir, "recordings")
	// A listed revocation file must exist: a missing one refuses logins.
	must(t, os.WriteFile(x.revPub, nil, 0o600))
	must(t, os.WriteFile(x.revKRL, nil, 0o600))
	// The lab's own key logs in as the lab's user (Ansible runs as it).
	x.authorize(x.lab.User, x.lab.ClientKey)
	x.g = startGomux(t, x.lab, gomuxOptions{Auth: fmt.Sprintf(`  authorized_keys: [%s, %s]
  user_ca_keys: [%s]
  revoked_keys: [%s, %s]
  recheck_interval: 2s
`, filepath.Join(x.users, "%u.keys"), filepath.Join(x.dir, "shared_keys"), x.caPub, x.revPub, x.revKRL),
		Extra: "audit:\n  record_dir: " + x.casts + "\n  record_max_mib: 1\n"})
	return x
}

// newRecording is the one recording made since the listing before, the
// test's failure if there is none or more than one.
func (x *identityLab) newRecording(t *testing.T, before []string) string {
	t.Helper()
	after, _ := filepath.Glob(filepath.Join(x.casts, "*.cast"))
	var fresh []string
	for _, a := range after {
		if !slices.Contains(before, a) {
			fresh = append(fresh, a)
		}
	}
	if len(fresh) != 1 {
		t.Fatalf("new recordings %v, want one", fresh)
	}
	return fresh[0]
}

// keygen makes an ed25519 key pair named name and returns the private key path.
func (x *identityLab) keygen(name string) string {
	x.t.Helper()
	p := filepath.Join(x.dir, name)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", p).CombinedOutput(); err != nil {
		x.t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	return p
}

// authorize appends key's public half to the key file of login name.
func (x *identityLab) authorize(name, key string) {
	appendFile(x.t, filepath.Join(x.users, name+".keys"), readFile(x.t, key+".pub"))
}

// sign issues a user certificate for key (written beside it, where ssh
// finds it) with the extra ssh-keygen options.
func (x *identityLab) sign(key string, opts ...string) {
	x.t.Helper()
	args := append([]string{"-q", "-s", x.caKey, "-I", filepath.Base(key) + "@test", "-V", "-5m:+1h"}, opts...)
	if out, err := exec.Command("ssh-keygen", append(args, key+".pub")...).CombinedOutput(); err != nil {
		x.t.Fatalf("ssh-keygen -s: %v\n%s", err, out)
	}
}

// config writes an ssh_config that logs in to gomux as frontUser and to
// targets as the lab's user, offering only the given identity files.
func (x *identityLab) config(name, frontUser string, identities ...string) string {
	var ids strings.Builder
	for _, k := range identities {
		fmt.Fprintf(&ids, "  IdentityFile %s\n", k)
	}
	p := filepath.Join(x.dir, "ssh_config_"+name)
	must(x.t, os.WriteFile(p, []byte(fmt.Sprintf(`Host gomux
  HostName 127.0.0.1
  Port %d
  HostKeyAlias gomux
  User %s
Host *
  User %s
%s  IdentitiesOnly yes
  UserKnownHostsFile %s
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 10
  LogLevel ERROR
`, x.g.Port, frontUser, x.lab.User, ids.String(), x.g.KnownHosts)), 0o600))
	return p
}

// ssh runs a command on the lab's target through gomux with cfg.
func (x *identityLab) ssh(ctx context.Context, cfg string, args ...string) result {
	return runCmd(exec.CommandContext(ctx, "ssh", append([]string{"-F", cfg, "-J", "gomux", x.lab.Targets[0].Addr}, args...)...), nil)
}

// logins counts successful front logins logged for user.
func (x *identityLab) logins(user string) []map[string]any {
	var out []map[string]any
	for _, e := range x.g.Events(proxy.EventFrontAuth) {
		if e["accepted"] == true && e["user"] == user {
			out = append(out, e)
		}
	}
	return out
}

func fingerprint(t *testing.T, pub string) string {
	t.Helper()
	out, err := exec.Command("ssh-keygen", "-l", "-E", "sha256", "-f", pub).Output()
	must(t, err)
	return strings.Fields(string(out))[1]
}

func appendFile(t *testing.T, p, s string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	must(t, err)
	_, err = f.WriteString(s)
	must(t, err)
	must(t, f.Close())
}

// denied says whether ssh failed to log in.
func denied(r result) bool {
	return r.Code == 255 && strings.Contains(r.Stderr, "Permission denied")
}

// TestIdentity attacks who-you-are on a shared gomux with the real ssh
// client: every subtest is a login that must not get a shell, next to the
// one that must.
func TestIdentity(t *testing.T) {
	x := startIdentityLab(t)

	t.Run("key-counts-only-for-its-name", func(t *testing.T) {
		ctx := ctxT(t, 2*time.Minute)
		alice, bob := x.keygen("alice"), x.keygen("bob")
		x.authorize("alice", alice)
		x.authorize("bob", bob)
		before := len(x.g.Events(proxy.EventFrontAuth))
		// bob's key claiming alice's name.
		if r := x.ssh(ctx, x.config("bob-as-alice", "alice", bob), "echo in"); !denied(r) {
			t.Fatalf("bob's key as alice@gomux: %+v", r)
		}
		if n := len(x.logins("alice")); n != 0 {
			t.Errorf("%d accepted logins logged for alice after bob's attempt", n)
		}
		if r := x.ssh(ctx, x.config("bob-as-bob", "bob", bob), "echo in"); r.Code != 0 || r.Stdout != "in\n" {
			t.Fatalf("bob as bob: %+v", r)
		}
		// Exactly one audit event for bob's login, with his fingerprint.
		ls := x.logins("bob")
		if len(ls) != 1 || ls[0]["fingerprint"] != fingerprint(t, bob+".pub") || ls[0]["method"] != "publickey" || ls[0]["source"] == nil {
			t.Errorf("bob's login events: %v", ls)
		}
		var inner int
		for _, e := range x.g.Events(proxy.EventInnerAuth) {
			if e["user"] == "bob" && e["result"] == "accepted" && e["remote_user"] == x.lab.User {
				inner++
			}
		}
		if inner != 1 {
			t.Errorf("%d inner logins logged for bob, want 1", inner)
		}
		if len(x.g.Events(proxy.EventFrontAuth)) == before {
			t.Errorf("the refused attempt was not logged")
		}
	})

	t.Run("key-query-is-not-a-login", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		// alice's public key without its private half: ssh offers it, gomux
		// says it would do, and ssh cannot sign. Nothing logged in.
		carol := x.keygen("carol")
		x.authorize("carol", carol)
		pubOnly := filepath.Join(x.dir, "carol-pub-only")
		must(t, os.WriteFile(pubOnly+".pub", []byte(readFile(t, carol+".pub")), 0o600))
		stranger := x.keygen("stranger")
		if r := x.ssh(ctx, x.config("query", "carol", pubOnly, stranger), "echo in"); !denied(r) {
			t.Fatalf("login without the private key: %+v", r)
		}
		if ls := x.logins("carol"); len(ls) != 0 {
			t.Errorf("a key query was logged as a login: %v", ls)
		}
		offered := false
		for _, e := range x.g.Events(proxy.EventFrontAuthOffer) {
			offered = offered || e["user"] == "carol"
		}
		if !offered {
			t.Errorf("the query never reached gomux; the test proves nothing")
		}
	})

	t.Run("shared-file-only-for-gomux-account", func(t *testing.T) {
		ctx := ctxT(t, 2*time.Minute)
		me, err := user.Current()
		must(t, err)
		shared := x.keygen("shared")
		appendFile(t, filepath.Join(x.dir, "shared_keys"), readFile(t, shared+".pub"))
		if r := x.ssh(ctx, x.config("shared-as-alice", "alice", shared), "echo in"); !denied(r) {
			t.Fatalf("shared-file key as alice: %+v", r)
		}
		if r := x.ssh(ctx, x.config("shared-as-me", me.Username, shared), "echo in"); r.Code != 0 || r.Stdout != "in\n" {
			t.Fatalf("shared-file key as %s: %+v", me.Username, r)
		}
	})

	t.Run("certificates", func(t *testing.T) {
		ctx := ctxT(t, 2*time.Minute)
		noPrincipals := x.keygen("cert-no-principals")
		x.sign(noPrincipals)
		noForwarding := x.keygen("cert-no-forwarding")
		x.sign(noForwarding, "-n", "alice", "-O", "clear", "-O", "permit-pty")
		good := x.keygen("cert-alice")
		x.sign(good, "-n", "alice", "-z", "4242")
		if r := x.ssh(ctx, x.config("cert-none", "alice", noPrincipals), "echo in"); !denied(r) {
			t.Errorf("certificate without principals: %+v", r)
		}
		if r := x.ssh(ctx, x.config("cert-nofwd", "alice", noForwarding), "echo in"); !denied(r) {
			t.Errorf("certificate without permit-port-forwarding: %+v", r)
		}
		if r := x.ssh(ctx, x.config("cert-bob", "bob", good), "echo in"); !denied(r) {
			t.Errorf("alice's certificate as bob: %+v", r)
		}
		if r := x.ssh(ctx, x.config("cert-good", "alice", good), "echo in"); r.Code != 0 || r.Stdout != "in\n" {
			t.Fatalf("alice's certificate as alice: %+v", r)
		}
		var found bool
		for _, e := range x.logins("alice") {
			found = found || (e["method"] == "publickey-cert" && e["cert_key_id"] == "cert-alice@test" &&
				e["cert_serial"] == float64(4242) && e["ca_fingerprint"] == fingerprint(t, x.caPub))
		}
		if !found {
			t.Errorf("certificate login not logged with key id, serial and CA: %v", x.logins("alice"))
		}
		// Revoked by serial in a KRL: refused from then on.
		spec := filepath.Join(x.dir, "krl-spec")
		must(t, os.WriteFile(spec, []byte("serial: 4242\n"), 0o600))
		if out, err := exec.Command("ssh-keygen", "-k", "-f", x.revKRL, "-s", x.caPub, spec).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen -k: %v\n%s", err, out)
		}
		defer os.WriteFile(x.revKRL, nil, 0o600)
		if r := x.ssh(ctx, x.config("cert-revoked", "alice", good), "echo in"); !denied(r) {
			t.Errorf("certificate revoked by serial: %+v", r)
		}
	})

	t.Run("revoked-key", func(t *testing.T) {
		ctx := ctxT(t, 2*time.Minute)
		dave := x.keygen("dave")
		x.authorize("dave", dave)
		cfg := x.config("dave", "dave", dave)
		if r := x.ssh(ctx, cfg, "echo in"); r.Code != 0 {
			t.Fatalf("dave before revocation: %+v", r)
		}
		appendFile(t, x.revPub, readFile(t, dave+".pub"))
		if r := x.ssh(ctx, cfg, "echo in"); !denied(r) {
			t.Errorf("revoked key still logs in: %+v", r)
		}
	})

	// Access withdrawn while a connection is open ends that connection.
	for _, c := range []struct {
		name, person, reason string
		withdraw             func(key string)
		sign                 []string
	}{
		{"open-connection-ends-on-revocation", "erin", "revoked",
			func(key string) { appendFile(t, x.revPub, readFile(t, key+".pub")) }, nil},
		{"open-connection-ends-on-key-removal", "hank", "not authorized",
			func(string) { must(t, os.WriteFile(filepath.Join(x.users, "hank.keys"), nil, 0o600)) }, nil},
		{"open-connection-ends-on-certificate-expiry", "ivy", "expired",
			func(string) {}, []string{"-n", "ivy", "-V", "-1m:+20s"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxT(t, 3*time.Minute)
			key := x.keygen(c.person)
			if c.sign != nil {
				// Replaces the 1h certificate sign() would issue.
				if out, err := exec.Command("ssh-keygen", append(append([]string{"-q", "-s", x.caKey, "-I", c.person}, c.sign...), key+".pub")...).CombinedOutput(); err != nil {
					t.Fatalf("ssh-keygen -s: %v\n%s", err, out)
				}
			} else {
				x.authorize(c.person, key)
			}
			cmd := exec.CommandContext(ctx, "ssh", "-F", x.config(c.person, c.person, key), "-J", "gomux", x.lab.Targets[0].Addr, "echo started; sleep 300")
			out, err := cmd.StdoutPipe()
			must(t, err)
			must(t, cmd.Start())
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			buf := make([]byte, 8)
			if n, _ := out.Read(buf); string(buf[:n]) != "started\n" {
				cmd.Process.Kill()
				<-done
				t.Fatalf("session did not start: %q", buf[:n])
			}
			c.withdraw(key)
			select {
			case err := <-done:
				if err == nil {
					t.Errorf("ssh exited cleanly after access was withdrawn, want the connection cut")
				}
			case <-time.After(90 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("connection still open 90s after access was withdrawn")
			}
			// gomux logs before it closes, but its log is read from a pipe
			// that may lag the client's exit a little.
			logged := func() bool {
				for _, e := range x.g.Events(proxy.EventFrontRevoked) {
					if e["user"] == c.person && strings.Contains(fmt.Sprint(e["reason"]), c.reason) {
						return true
					}
				}
				return false
			}
			for deadline := time.Now().Add(10 * time.Second); !logged() && time.Now().Before(deadline); {
				time.Sleep(50 * time.Millisecond)
			}
			if !logged() {
				t.Errorf("no front_revoked event naming %s with reason %q", c.person, c.reason)
			}
		})
	}

	t.Run("inner-session-must-use-the-front-key", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		frank, grace := x.keygen("frank"), x.keygen("grace")
		x.authorize("frank", frank)
		x.authorize("grace", grace)
		jump := x.config("frank-jump", "frank", frank)
		// The jump leg is frank's; the inner login offers grace's key,
		// which gomux knows (for grace).
		inner := x.config("grace-inner", "grace", grace)
		proxyCmd := fmt.Sprintf("ProxyCommand=ssh -F %s -W %%h:%%p gomux", jump)
		r := runCmd(exec.CommandContext(ctx, "ssh", "-F", inner, "-o", proxyCmd, x.lab.Targets[0].Addr, "echo in"), nil)
		if !denied(r) {
			t.Fatalf("inner login with another key than the front one: %+v", r)
		}
		var refused bool
		for _, e := range x.g.Events(proxy.EventInnerAuth) {
			refused = refused || (e["user"] == "frank" && e["accepted"] == false && e["fingerprint"] == fingerprint(t, grace+".pub"))
		}
		if !refused {
			t.Errorf("no inner_auth refusal naming frank and grace's key")
		}
		// The same shape with the front key works: the refusal is the key.
		inner = x.config("frank-inner", "frank", frank)
		if r := runCmd(exec.CommandContext(ctx, "ssh", "-F", inner, "-o", proxyCmd, x.lab.Targets[0].Addr, "echo in"), nil); r.Code != 0 || r.Stdout != "in\n" {
			t.Fatalf("inner login with the front key: %+v", r)
		}
	})

	t.Run("audit-trail", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		cfg := x.config("audit", x.lab.User, x.lab.ClientKey)
		local := filepath.Join(x.dir, "upload.txt")
		const content = "file-content-never-logged-7731"
		must(t, os.WriteFile(local, []byte(content), 0o600))
		name := fmt.Sprintf("gomux-audit-%d", time.Now().UnixNano())
		batch := filepath.Join(x.dir, "batch")
		must(t, os.WriteFile(batch, []byte(fmt.Sprintf("put %s %s\nrename %s %s.2\nrm %s.2\n", local, name, name, name, name)), 0o600))
		r := runCmd(exec.CommandContext(ctx, "sftp", "-F", cfg, "-J", "gomux", "-b", batch, x.lab.Targets[0].Addr), nil)
		if r.Code != 0 {
			t.Fatalf("sftp: %+v", r)
		}
		ops := map[string]bool{}
		for _, e := range x.g.Events(proxy.EventSFTP) {
			if strings.Contains(fmt.Sprint(e["path"]), name) && e["user"] == x.lab.User {
				ops[fmt.Sprint(e["op"])] = true
			}
		}
		// OpenSSH's sftp renames with posix-rename@openssh.com.
		ops["Rename"] = ops["Rename"] || ops["PosixRename"]
		for _, op := range []string{"open-write", "Rename", "Remove"} {
			if !ops[op] {
				t.Errorf("sftp %s of %s not logged with its path (logged: %v)", op, name, ops)
			}
		}
		if strings.Contains(x.g.Log(), content) {
			t.Errorf("file content in gomux's log")
		}
		if r := x.ssh(ctx, cfg, "exit 3"); r.Code != 3 {
			t.Fatalf("exit 3: %+v", r)
		}
		var found bool
		for _, e := range x.g.Events(proxy.EventChannel) {
			found = found || (e["command"] == "exit 3" && e["exit_status"] == float64(3) && e["user"] == x.lab.User &&
				e["bytes_out"] != nil && e["duration"] != nil)
		}
		if !found {
			t.Errorf("exec not logged with person, exit status, bytes and duration")
		}
	})

	t.Run("pty-session-recorded", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		cfg := x.config("record", x.lab.User, x.lab.ClientKey)
		before, _ := filepath.Glob(filepath.Join(x.casts, "*.cast"))
		cmd := exec.CommandContext(ctx, "ssh", "-tt", "-F", cfg, "-J", "gomux", x.lab.Targets[0].Addr, "read line; echo output-$line-marker")
		cmd.Env = append(os.Environ(), "TERM=xterm-256color")
		r := runCmd(cmd, strings.NewReader("typed-secret-input\n"))
		if r.Code != 0 || !strings.Contains(r.Stdout, "output-typed-secret-input-marker") {
			t.Fatalf("ssh -tt: %+v", r)
		}
		after, _ := filepath.Glob(filepath.Join(x.casts, "*.cast"))
		p := x.newRecording(t, before)
		fi, err := os.Stat(p)
		must(t, err)
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("recording mode %v", fi.Mode())
		}
		lines := strings.Split(strings.TrimSpace(readFile(t, p)), "\n")
		var h map[string]any
		if err := json.Unmarshal([]byte(lines[0]), &h); err != nil || h["version"] != float64(2) || h["width"] == nil ||
			h["height"] == nil || h["timestamp"] == nil || h["env"].(map[string]any)["TERM"] != "xterm-256color" || h["gomux_user"] != x.lab.User {
			t.Errorf("header %s: %v", lines[0], err)
		}
		var output strings.Builder
		for _, l := range lines[1:] {
			var e []any
			if err := json.Unmarshal([]byte(l), &e); err != nil || len(e) != 3 {
				t.Fatalf("event %q: %v", l, err)
			}
			if e[1] == "i" {
				t.Errorf("input recorded: %q", l)
			}
			if e[1] == "o" {
				output.WriteString(e[2].(string))
			}
		}
		// The pty echoes what was typed, so it is in the output, as on
		// the person's screen; it is never an input event.
		if !strings.Contains(output.String(), "output-typed-secret-input-marker") {
			t.Errorf("output not recorded: %q", output.String())
		}
		// A session without a pty is not recorded.
		if r := x.ssh(ctx, cfg, "echo no-pty"); r.Code != 0 {
			t.Fatalf("no pty: %+v", r)
		}
		if again, _ := filepath.Glob(filepath.Join(x.casts, "*.cast")); len(again) != len(after) {
			t.Errorf("session without a pty recorded")
		}
	})

	t.Run("keyless-attempt-logged", func(t *testing.T) {
		// A client that offers no key at all is refused, and the audit
		// names the login it tried, as sshd's "Connection closed by
		// authenticating user".
		ctx := ctxT(t, time.Minute)
		cfg := x.config("keyless", "mallory-keyless")
		r := runCmd(exec.CommandContext(ctx, "ssh", "-F", cfg, "-o", "PubkeyAuthentication=no", "gomux", "true"), nil)
		if r.Code != 255 || !strings.Contains(r.Stderr, "Permission denied") {
			t.Fatalf("keyless login: %+v", r)
		}
		logged := func() bool {
			for _, e := range x.g.Events(proxy.EventFrontAuth) {
				if e["user"] == "mallory-keyless" && e["accepted"] == false && e["reason"] == "no public key offered" &&
					e["source"] != nil {
					return true
				}
			}
			return false
		}
		waitFor(t, 10*time.Second, logged)
	})

	t.Run("pty-recording-capped", func(t *testing.T) {
		// A session that prints without end must not fill the disk the
		// recordings share: at record_max_mib the recording stops with a
		// marker and a warning, and the person still gets every byte.
		ctx := ctxT(t, time.Minute)
		cfg := x.config("flood", x.lab.User, x.lab.ClientKey)
		before, _ := filepath.Glob(filepath.Join(x.casts, "*.cast"))
		const n = 3 << 20
		cmd := exec.CommandContext(ctx, "ssh", "-tt", "-F", cfg, "-J", "gomux", x.lab.Targets[0].Addr,
			fmt.Sprintf("stty -opost; head -c %d /dev/zero | tr '\\0' x; echo; echo flood-done", n))
		r := runCmd(cmd, nil)
		if r.Code != 0 || strings.Count(r.Stdout, "x") != n || !strings.Contains(r.Stdout, "flood-done") {
			t.Fatalf("ssh -tt: exit %d, %d of %d bytes, done marker %v; stderr %q", r.Code, strings.Count(r.Stdout, "x"), n,
				strings.Contains(r.Stdout, "flood-done"), r.Stderr)
		}
		p := x.newRecording(t, before)
		fi, err := os.Stat(p)
		must(t, err)
		if fi.Size() > 1<<20 {
			t.Errorf("recording is %d bytes, past the 1 MiB limit", fi.Size())
		}
		lines := strings.Split(strings.TrimSpace(readFile(t, p)), "\n")
		var last []any
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || len(last) != 3 || last[1] != "m" ||
			!strings.Contains(fmt.Sprint(last[2]), "1 MiB limit") {
			t.Errorf("recording does not end with the limit marker: %q (%v)", lines[len(lines)-1], err)
		}
		var warned bool
		for _, e := range x.g.Events(proxy.EventRecording) {
			warned = warned || (e["level"] == "warn" && e["recording"] == p && e["limit_mib"] == float64(1))
		}
		if !warned {
			t.Errorf("no warning logged for the stopped recording")
		}
	})

	t.Run("no-secrets-in-the-log", func(t *testing.T) {
		ctx := ctxT(t, 5*time.Minute)
		const secret = "s3cr3t-value-xyz"
		cfg := x.config("secrets", x.lab.User, x.lab.ClientKey)
		r := runCmd(exec.CommandContext(ctx, "ssh", "-F", cfg, "-o", "SetEnv=LC_GOMUX_SECRET="+secret, "-J", "gomux",
			x.lab.Targets[0].Addr, "FOO="+secret+" env"), nil)
		if r.Code != 0 || !strings.Contains(r.Stdout, "FOO="+secret) || !strings.Contains(r.Stdout, "LC_GOMUX_SECRET="+secret) {
			t.Fatalf("ssh FOO=... env: %+v", r)
		}
		play := filepath.Join(x.dir, "secret.yml")
		must(t, os.WriteFile(play, []byte(`- hosts: all
  gather_facts: false
  tasks:
    - name: command with a secret in its environment
      command: printenv GOMUX_SECRET
      environment:
        GOMUX_SECRET: "`+secret+`"
      register: plain
    - name: the same with become
      command: printenv GOMUX_SECRET
      become: true
      environment:
        GOMUX_SECRET: "`+secret+`"
      register: become
    - assert:
        that:
          - plain.stdout == "`+secret+`"
          - become.stdout == "`+secret+`"
`), 0o600))
		for _, pipelining := range []string{"False", "True"} {
			run := runPlaybook(ctx, t, x.lab, x.g, play, "ANSIBLE_PIPELINING="+pipelining)
			if run.Err != nil {
				t.Fatalf("playbook (pipelining %s): %v\n%s", pipelining, run.Err, run.Output)
			}
		}
		if log := x.g.Log(); strings.Contains(log, secret) {
			for _, l := range strings.Split(log, "\n") {
				if strings.Contains(l, secret) {
					t.Errorf("secret in gomux's log: %s", l)
				}
			}
		}
		if !strings.Contains(x.g.Log(), "GOMUX_SECRET=***") {
			t.Errorf("no redacted command in the log; the grep proves nothing")
		}
	})
}
