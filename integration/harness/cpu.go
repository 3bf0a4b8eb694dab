package harness

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// CPUGroup is a cgroup that adds up the CPU time of every process put in
// it and of all their descendants, including daemons that left their
// parent (an ssh ControlMaster, a fork server) and processes that already
// exited. The benchmark uses one for the controller, one for its ssh
// processes and one for the targets, so CPU is measured where it is spent.
type CPUGroup struct {
	dir   string
	root  string // the hierarchy's root, where members go back on Close
	usage func() (time.Duration, error)
}

// ErrNoCPUAccounting means neither a cgroup v2 hierarchy with the cpu
// controller nor a v1 cpuacct hierarchy is writable here.
var ErrNoCPUAccounting = errors.New("no writable cgroup with CPU accounting")

// NewCPUGroup makes a cgroup named name (unique per run: callers put the
// lab token in it).
func NewCPUGroup(name string) (*CPUGroup, error) {
	// cgroup v1: the cpuacct hierarchy counts nanoseconds in cpuacct.usage.
	for _, root := range []string{"/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/cpu,cpuacct"} {
		if _, err := os.Stat(filepath.Join(root, "cpuacct.usage")); err != nil {
			continue
		}
		dir := filepath.Join(root, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, fmt.Errorf("cgroup %s: %w", dir, err)
		}
		return &CPUGroup{dir: dir, root: root, usage: func() (time.Duration, error) {
			b, err := os.ReadFile(filepath.Join(dir, "cpuacct.usage"))
			if err != nil {
				return 0, err
			}
			ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			return time.Duration(ns), err
		}}, nil
	}
	// cgroup v2: cpu.stat's usage_usec is there even without enabling the
	// cpu controller for the children.
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err != nil {
			continue
		}
		dir := filepath.Join(root, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, fmt.Errorf("cgroup %s: %w", dir, err)
		}
		g := &CPUGroup{dir: dir, root: root}
		g.usage = func() (time.Duration, error) {
			b, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
			if err != nil {
				return 0, err
			}
			sc := bufio.NewScanner(bytes.NewReader(b))
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if len(f) == 2 && f[0] == "usage_usec" {
					us, err := strconv.ParseInt(f[1], 10, 64)
					return time.Duration(us) * time.Microsecond, err
				}
			}
			return 0, fmt.Errorf("%s: no usage_usec", dir)
		}
		if _, err := g.usage(); err != nil {
			os.Remove(dir)
			continue
		}
		return g, nil
	}
	return nil, ErrNoCPUAccounting
}

// ProcsFile is the file a process writes its PID to to join the group
// (`echo $$ > FILE; exec ...` in a wrapper).
func (g *CPUGroup) ProcsFile() string { return filepath.Join(g.dir, "cgroup.procs") }

// Add moves a running process into the group; processes it starts from
// then on are counted too.
func (g *CPUGroup) Add(pid int) error {
	if err := os.WriteFile(g.ProcsFile(), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("cgroup add %d: %w", pid, err)
	}
	return nil
}

// Usage is the CPU time (user and system) used in the group so far.
func (g *CPUGroup) Usage() time.Duration {
	d, err := g.usage()
	if err != nil {
		return 0
	}
	return d
}

// Close moves what still runs in the group back to the root and removes
// the group.
func (g *CPUGroup) Close() {
	for range 3 {
		b, _ := os.ReadFile(g.ProcsFile())
		for _, pid := range strings.Fields(string(b)) {
			os.WriteFile(filepath.Join(g.root, "cgroup.procs"), []byte(pid), 0o644)
		}
		if err := os.Remove(g.dir); err == nil || os.IsNotExist(err) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
