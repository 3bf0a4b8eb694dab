// Package harness builds throwaway SSH targets for end-to-end tests: each
// target is a Linux network namespace with a real OpenSSH sshd, reached
// through a userspace relay that adds round-trip latency (the test kernel
// has no netem). Everything it creates is unique per run and removed by
// the test's cleanup, so runs never collide.
package harness

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// Options shape a lab.
type Options struct {
	// Targets is the number of target hosts (default 1).
	Targets int
	// RTT is the round-trip time each relay adds.
	RTT time.Duration
	// CPUAccounting puts every target's sshd, and so all it starts, in
	// one cgroup (Lab.TargetCPU) for benchmarks.
	CPUAccounting bool
	// PasswordSudoUser adds a login user whose sudo asks for a password
	// (Lab.PasswordUser, Lab.Password), so tests cover Ansible's
	// become-with-password path, where stdin carries the password first.
	PasswordSudoUser bool
	// SSHDConfig, when set, returns lines placed at the top of target i's
	// sshd_config, where they win over the harness's own (sshd keeps the
	// first value of a keyword): e.g. "AllowTcpForwarding no" or
	// "TrustedUserCAKeys FILE".
	SSHDConfig func(i int) string
}

// Lab is a set of targets sharing one bridge, one login user and one
// client key.
type Lab struct {
	// Dir holds keys, configs and logs.
	Dir string
	// User is an unprivileged login user with passwordless sudo.
	User string
	// Home is User's home directory.
	Home string
	// OtherUser is a second unprivileged user, for become_user tests.
	OtherUser string
	// PasswordUser, with Options.PasswordSudoUser, is a login user whose
	// sudo requires Password (empty otherwise).
	PasswordUser string
	// Password is PasswordUser's login password.
	Password string
	// ClientKey is the private key file authorized for User (0600).
	ClientKey string
	// ClientPub is its public key.
	ClientPub gossh.PublicKey
	// Targets are the hosts.
	Targets []*Target
	// Gateway is the bridge's address, the root namespace's side.
	Gateway string
	// TargetCPU, with Options.CPUAccounting, adds up the CPU time of
	// every process on every target; nil where cgroups are not writable.
	TargetCPU *CPUGroup

	token  string
	bridge string
	kh     string
}

// Target is one host: a namespace, its sshd and the relay in front of it.
type Target struct {
	// Name is the network namespace's name.
	Name string
	// Addr is the target's IP address.
	Addr string
	// Port is the relay's port, where clients connect (22).
	Port int
	// SSHDPort is where sshd itself listens (2222).
	SSHDPort int
	// HostKey is sshd's host key.
	HostKey gossh.PublicKey
	// Relay adds latency and can drop connections.
	Relay *Relay

	sshd    *exec.Cmd
	sshdLog string
}

// Start builds the lab or skips the test when root or a binary is missing.
func Start(tb testing.TB, opt Options) *Lab {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("harness: needs root to create network namespaces, users and sshd")
	}
	for _, b := range []string{"/usr/sbin/sshd", "ip", "ssh", "useradd", "ss"} {
		if _, err := exec.LookPath(b); err != nil {
			tb.Skipf("harness: %s not installed (apt-get install openssh-server openssh-client iproute2 passwd)", b)
		}
	}
	if opt.Targets <= 0 {
		opt.Targets = 1
	}
	tok := make([]byte, 3)
	rand.Read(tok)
	l := &Lab{token: hex.EncodeToString(tok)}
	dir, err := os.MkdirTemp("", "gmxlab-"+l.token+"-")
	if err != nil {
		tb.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	l.Dir = dir
	tb.Cleanup(func() { os.RemoveAll(dir) })

	l.createUsers(tb, opt.PasswordSudoUser)
	l.createKey(tb)
	subnet := pickSubnet(tb)
	l.Gateway = subnet + ".1"
	l.bridge = "gb" + l.token
	run(tb, "ip", "link", "add", l.bridge, "type", "bridge")
	tb.Cleanup(func() { exec.Command("ip", "link", "del", l.bridge).Run() })
	run(tb, "ip", "addr", "add", l.Gateway+"/24", "dev", l.bridge)
	run(tb, "ip", "link", "set", l.bridge, "up")
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		tb.Fatal(err)
	}
	for i := range opt.Targets {
		extra := ""
		if opt.SSHDConfig != nil {
			extra = opt.SSHDConfig(i)
		}
		l.Targets = append(l.Targets, l.startTarget(tb, i, fmt.Sprintf("%s.%d", subnet, i+2), opt.RTT, extra))
	}
	if opt.CPUAccounting {
		l.startCPUAccounting(tb)
	}
	return l
}

// startCPUAccounting moves every sshd into the lab's CPU group; sessions,
// agents and modules they start are counted with them. Without writable
// cgroups the lab runs without it and says so.
func (l *Lab) startCPUAccounting(tb testing.TB) {
	tb.Helper()
	g, err := NewCPUGroup("gmx-" + l.token + "-targets")
	if err != nil {
		tb.Logf("harness: target CPU not measured: %v", err)
		return
	}
	tb.Cleanup(g.Close)
	for _, t := range l.Targets {
		if err := g.Add(t.sshd.Process.Pid); err != nil {
			tb.Fatal(err)
		}
	}
	l.TargetCPU = g
}

func run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// pickSubnet returns a 10.x.y /24 prefix that no address or route here uses.
func pickSubnet(tb testing.TB) string {
	tb.Helper()
	routes, _ := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	addrs, _ := exec.Command("ip", "-4", "addr").Output()
	used := string(routes) + string(addrs)
	var nets []*net.IPNet
	for _, f := range strings.Fields(used) {
		if _, n, err := net.ParseCIDR(f); err == nil {
			nets = append(nets, n)
		}
	}
	for range 200 {
		var b [2]byte
		rand.Read(b[:])
		prefix := fmt.Sprintf("10.%d.%d", 100+int(b[0])%150, b[1])
		ip := net.ParseIP(prefix + ".1")
		clash := strings.Contains(used, prefix+".")
		for _, n := range nets {
			if n.Contains(ip) && n.String() != "0.0.0.0/0" {
				clash = true
			}
		}
		if !clash {
			return prefix
		}
	}
	tb.Fatal("harness: no free 10.x.y.0/24 subnet")
	return ""
}

func (l *Lab) createUsers(tb testing.TB, passwordUser bool) {
	tb.Helper()
	l.User = "gmx" + l.token
	l.OtherUser = "gmo" + l.token
	users := []string{l.User, l.OtherUser}
	if passwordUser {
		l.PasswordUser = "gmp" + l.token
		pw := make([]byte, 12)
		rand.Read(pw)
		l.Password = hex.EncodeToString(pw)
		users = append(users, l.PasswordUser)
	}
	for _, u := range users {
		run(tb, "useradd", "-m", "-s", "/bin/bash", u)
		user := u
		tb.Cleanup(func() {
			killUserProcesses(user)
			exec.Command("userdel", "-f", "-r", user).Run()
		})
		if u == l.PasswordUser {
			cmd := exec.Command("chpasswd")
			cmd.Stdin = strings.NewReader(u + ":" + l.Password + "\n")
			if out, err := cmd.CombinedOutput(); err != nil {
				tb.Fatalf("chpasswd: %v %s", err, out)
			}
			continue
		}
		// A locked password ("!") makes sshd refuse the account.
		run(tb, "usermod", "-p", "*", u)
	}
	l.Home = "/home/" + l.User
	rules := l.User + " ALL=(ALL:ALL) NOPASSWD: ALL\n"
	if passwordUser {
		rules += l.PasswordUser + " ALL=(ALL:ALL) ALL\n"
	}
	sudoers := "/etc/sudoers.d/gomux-test-" + l.token
	if err := os.WriteFile(sudoers, []byte(rules), 0o440); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.Remove(sudoers) })
	if out, err := exec.Command("visudo", "-cf", sudoers).CombinedOutput(); err != nil {
		tb.Fatalf("sudoers: %v %s", err, out)
	}
}

// killUserProcesses ends whatever the test user still runs (agents,
// sessions), found by uid in /proc: by PID, never by name.
func killUserProcesses(user string) {
	out, err := exec.Command("id", "-u", user).Output()
	if err != nil {
		return
	}
	uid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// By the Uid line of status, not the owner of /proc/PID: that is
		// root for a process that is not dumpable, as the agent is.
		if procUID(pid) == uid {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// procUID is the real uid of process pid, or -1.
func procUID(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			if uid, err := strconv.Atoi(f[1]); err == nil {
				return uid
			}
		}
	}
	return -1
}

func writeKey(tb testing.TB, path, comment string) gossh.PublicKey {
	tb.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	blk, err := gossh.MarshalPrivateKey(priv, comment)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
		tb.Fatal(err)
	}
	s, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path+".pub", gossh.MarshalAuthorizedKey(s.PublicKey()), 0o644); err != nil {
		tb.Fatal(err)
	}
	return s.PublicKey()
}

func (l *Lab) createKey(tb testing.TB) {
	tb.Helper()
	l.ClientKey = filepath.Join(l.Dir, "client_ed25519")
	l.ClientPub = writeKey(tb, l.ClientKey, "gomux-test-client")
	ak := filepath.Join(l.Dir, "authorized_keys")
	if err := os.MkdirAll(ak, 0o755); err != nil {
		tb.Fatal(err)
	}
	for _, u := range []string{l.User, l.OtherUser, l.PasswordUser} {
		if u == "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(ak, u), gossh.MarshalAuthorizedKey(l.ClientPub), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
}

func (l *Lab) startTarget(tb testing.TB, i int, addr string, rtt time.Duration, extra string) *Target {
	tb.Helper()
	t := &Target{Name: fmt.Sprintf("gmx-%s-%d", l.token, i), Addr: addr, Port: 22, SSHDPort: 2222}
	run(tb, "ip", "netns", "add", t.Name)
	tb.Cleanup(func() { exec.Command("ip", "netns", "del", t.Name).Run() })
	host, peer := fmt.Sprintf("gv%s%d", l.token, i), fmt.Sprintf("gp%s%d", l.token, i)
	run(tb, "ip", "link", "add", host, "type", "veth", "peer", "name", peer)
	tb.Cleanup(func() { exec.Command("ip", "link", "del", host).Run() })
	run(tb, "ip", "link", "set", peer, "netns", t.Name)
	run(tb, "ip", "link", "set", host, "master", l.bridge, "up")
	run(tb, "ip", "netns", "exec", t.Name, "ip", "addr", "add", addr+"/24", "dev", peer)
	run(tb, "ip", "netns", "exec", t.Name, "ip", "link", "set", peer, "up")
	run(tb, "ip", "netns", "exec", t.Name, "ip", "link", "set", "lo", "up")

	hk, cmd, logPath := l.sshd(tb, t.Name, net.JoinHostPort(addr, strconv.Itoa(t.SSHDPort)), []string{"ip", "netns", "exec", t.Name}, extra)
	t.HostKey, t.sshd, t.sshdLog = hk, cmd, logPath
	sshdAddr := net.JoinHostPort(addr, strconv.Itoa(t.SSHDPort))
	relay, err := startRelay(t.Name, net.JoinHostPort(addr, "22"), sshdAddr, rtt)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(relay.Close)
	t.Relay = relay
	return t
}

// sshd starts an sshd listening on listen, wrapped by prefix (e.g. ip
// netns exec), and waits until it accepts connections.
func (l *Lab) sshd(tb testing.TB, name, listen string, prefix []string, extra string) (gossh.PublicKey, *exec.Cmd, string) {
	tb.Helper()
	tdir := filepath.Join(l.Dir, name)
	if err := os.MkdirAll(tdir, 0o755); err != nil {
		tb.Fatal(err)
	}
	hk := filepath.Join(tdir, "ssh_host_ed25519_key")
	pub := writeKey(tb, hk, "host "+name)
	cfg := filepath.Join(tdir, "sshd_config")
	logPath := filepath.Join(tdir, "sshd.log")
	host, port, _ := net.SplitHostPort(listen)
	if extra != "" && !strings.HasSuffix(extra, "\n") {
		extra += "\n"
	}
	conf := extra + fmt.Sprintf(`Port %s
ListenAddress %s
HostKey %s
PidFile none
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
AuthorizedKeysFile %s/%%u
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
MaxSessions 200
MaxStartups 100:30:200
LogLevel VERBOSE
UseDNS no
PrintMotd no
PrintLastLog no
AllowTcpForwarding yes
`, port, host, hk, filepath.Join(l.Dir, "authorized_keys"))
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		tb.Fatal(err)
	}
	if out, err := exec.Command("/usr/sbin/sshd", "-t", "-f", cfg).CombinedOutput(); err != nil {
		tb.Fatalf("sshd config: %v %s", err, out)
	}
	argv := append(append([]string(nil), prefix...), "/usr/sbin/sshd", "-D", "-f", cfg, "-E", logPath)
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			tb.Fatalf("sshd %s did not listen on %s: %v\n%s", name, listen, err, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return pub, cmd, logPath
}

// JumpHost is a plain OpenSSH sshd on loopback in the root namespace: the
// reference a benchmark compares gomux with, placed where gomux runs.
type JumpHost struct {
	Addr    string
	HostKey gossh.PublicKey
}

// StartJumpHost starts a plain sshd on 127.0.0.1 that the lab's users and
// key can log in to.
func (l *Lab) StartJumpHost(tb testing.TB) *JumpHost {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	hk, _, _ := l.sshd(tb, "jump", addr, nil, "")
	return &JumpHost{Addr: addr, HostKey: hk}
}

// SSHDLog returns what sshd logged.
func (t *Target) SSHDLog() string {
	b, _ := os.ReadFile(t.sshdLog)
	return string(b)
}

// KnownHostsLine is the target's key as known_hosts has it.
func (t *Target) KnownHostsLine() string {
	return t.Addr + " " + strings.TrimSpace(string(gossh.MarshalAuthorizedKey(t.HostKey)))
}

// Exec runs a command inside the target's namespace.
func (t *Target) Exec(ctx context.Context, argv ...string) ([]byte, error) {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", t.Name}, argv...)...).CombinedOutput()
}

// KnownHostsFile writes (once) a known_hosts with every target's key.
func (l *Lab) KnownHostsFile() string {
	if l.kh != "" {
		return l.kh
	}
	var b bytes.Buffer
	for _, t := range l.Targets {
		b.WriteString(t.KnownHostsLine() + "\n")
	}
	p := filepath.Join(l.Dir, "known_hosts")
	os.WriteFile(p, b.Bytes(), 0o644)
	l.kh = p
	return p
}

// ClientOptions are the OpenSSH options for a direct, verified,
// non-interactive connection to the lab's targets.
func (l *Lab) ClientOptions() []string {
	return []string{
		"-F", "/dev/null",
		"-o", "BatchMode=yes",
		"-o", "UserKnownHostsFile=" + l.KnownHostsFile(),
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "IdentitiesOnly=yes",
		"-o", "ConnectTimeout=10",
		"-o", "LogLevel=ERROR",
		"-o", "User=" + l.User,
		"-i", l.ClientKey,
	}
}

// SSHCommand is a real ssh run straight to a target (args start with the
// destination).
func (l *Lab) SSHCommand(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ssh", append(l.ClientOptions(), args...)...)
}

// SFTPCommand is a real sftp run straight to a target.
func (l *Lab) SFTPCommand(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "sftp", append(l.ClientOptions(), args...)...)
}

// SCPCommand is a real scp run straight to a target.
func (l *Lab) SCPCommand(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "scp", append(l.ClientOptions(), args...)...)
}
