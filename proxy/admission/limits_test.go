package admission

import (
	"strings"
	"testing"
)

func testLimits() Limits {
	return Limits{MaxStartups: "2:50:4", PerSourceMaxStartups: 3, MaxConnectionsPerUser: 2, MaxConnectionsPerSource: 5,
		MaxChannelsPerConnection: 2, MaxChannelsPerUser: 3, MaxChannelsPerSource: 4, PersonMemoryMiB: 512}
}

// defaultLimits are proxy.AdmissionLimits' defaults.
func defaultLimits() Limits {
	return Limits{MaxStartups: "100:30:1000", PerSourceMaxStartups: 50, MaxConnectionsPerUser: 500, MaxConnectionsPerSource: 1000,
		MaxChannelsPerConnection: 64, MaxChannelsPerUser: 2000, MaxChannelsPerSource: 4000, PersonMemoryMiB: 512}
}

func TestParseStartups(t *testing.T) {
	for in, want := range map[string]Startups{"10:30:100": {10, 30, 100}, "7": {7, 100, 7}} {
		got, err := ParseStartups(in)
		if err != nil || got != want {
			t.Errorf("ParseStartups(%q) = %v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "a", "1:2", "10:101:20", "10:30:5", "0:30:10", "-1"} {
		if _, err := ParseStartups(bad); err == nil {
			t.Errorf("ParseStartups(%q) accepted", bad)
		}
	}
}

func TestMaxStartupsEarlyDrop(t *testing.T) {
	l := NewLimiter(testLimits())
	roll := 0
	l.rand = func(int) int { return roll }
	var closers []func()
	admit := func(src string) error {
		_, closed, err := l.Startup(src)
		if err == nil {
			closers = append(closers, closed)
		}
		return err
	}
	// Below start: always admitted.
	for i := 0; i < 2; i++ {
		if err := admit("a"); err != nil {
			t.Fatal(err)
		}
	}
	// At start, probability 50%: a roll of 49 drops, 50 admits.
	roll = 49
	if err := admit("b"); err == nil || !strings.Contains(err.Error(), "max_startups") {
		t.Fatalf("early drop: %v", err)
	}
	roll = 50
	if err := admit("b"); err != nil {
		t.Fatal(err)
	}
	// Per source: "a" may have 3 unauthenticated at most.
	roll = 99
	if err := admit("a"); err != nil {
		t.Fatal(err)
	}
	// Full: everything dropped.
	if err := admit("c"); err == nil {
		t.Fatal("admitted beyond full")
	}
	for _, c := range closers {
		c()
	}
	if l.unauth != 0 || len(l.conns) != 0 || len(l.unauthBy) != 0 {
		t.Fatalf("counts left after every close: %d %v %v", l.unauth, l.conns, l.unauthBy)
	}
}

func TestPerSourceStartups(t *testing.T) {
	lc := testLimits()
	lc.MaxStartups = "100"
	l := NewLimiter(lc)
	for i := 0; i < 3; i++ {
		if _, _, err := l.Startup("a"); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := l.Startup("a"); err == nil || !strings.Contains(err.Error(), "per_source_max_startups") {
		t.Fatalf("4th from one source: %v", err)
	}
	if _, _, err := l.Startup("b"); err != nil {
		t.Fatalf("another source refused: %v", err)
	}
}

func TestLoginAndChannelCaps(t *testing.T) {
	l := NewLimiter(testLimits())
	r1, err := l.login("alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.login("alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.login("alice"); err == nil || !strings.Contains(err.Error(), "max_connections_per_user") {
		t.Fatalf("3rd login: %v", err)
	}
	if _, err := l.login("bob"); err != nil {
		t.Fatalf("another person refused: %v", err)
	}
	r1()
	r1() // twice is harmless
	if _, err := l.login("alice"); err != nil {
		t.Fatalf("login after a close: %v", err)
	}

	var c1, c2 ChanCount
	rel, err := l.channel("alice", "s", &c1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.channel("alice", "s", &c1); err != nil {
		t.Fatal(err)
	}
	if _, err := l.channel("alice", "s", &c1); err == nil || !strings.Contains(err.Error(), "max_channels_per_connection") {
		t.Fatalf("3rd channel on a connection: %v", err)
	}
	if _, err := l.channel("alice", "s", &c2); err != nil {
		t.Fatal(err)
	}
	if _, err := l.channel("alice", "s", &c2); err == nil || !strings.Contains(err.Error(), "max_channels_per_user") {
		t.Fatalf("4th channel of a person: %v", err)
	}
	if _, err := l.channel("bob", "s", &c2); err != nil {
		t.Fatalf("another person refused: %v", err)
	}
	if _, err := l.channel("carol", "s", &c2); err == nil || !strings.Contains(err.Error(), "max_channels") {
		t.Fatalf("5th channel from a source: %v", err)
	}
	rel()
	if _, err := l.channel("alice", "s", &c1); err != nil {
		t.Fatalf("channel after a release: %v", err)
	}
}

// TestMemoryShares: a person's channels count 4 MiB each against their
// share, which refuses only them; above the ceiling (by what everyone
// holds, or what the runtime holds now) logins and channels are refused
// for everyone; what is given back can be taken again.
func TestMemoryShares(t *testing.T) {
	cfg := defaultLimits()
	cfg.PersonMemoryMiB = 16 // 4 channels
	cfg.MaxMemoryMiB = 40
	l := NewLimiter(cfg)
	l.mem.ceiling = 40 << 20 // no cgroup in the way
	var used int64
	l.mem.usage = func() int64 { return used }
	var frees []func()
	for i := range 4 {
		free, err := l.holdChannel("alice")
		if err != nil {
			t.Fatalf("channel %d within the share: %v", i, err)
		}
		frees = append(frees, free)
	}
	if _, err := l.holdChannel("alice"); err == nil || !strings.Contains(err.Error(), "alice holds their memory share") {
		t.Fatalf("fifth channel past a 16 MiB share: %v", err)
	}
	if l.Hold("alice", 1) {
		t.Errorf("held stdin past the share")
	}
	// Bob is not alice.
	bob, err := l.holdChannel("bob")
	if err != nil {
		t.Fatalf("another person at alice's share: %v", err)
	}
	frees[0]()
	frees[0]() // once only
	if got := l.heldBy("alice"); got != 12<<20 {
		t.Errorf("alice holds %d after freeing one channel twice", got)
	}
	if _, err := l.holdChannel("alice"); err != nil {
		t.Errorf("a channel after one was freed: %v", err)
	}
	// The ceiling: 16 + 4 held; the runtime says 39 MiB now.
	used = 39 << 20
	if _, err := l.holdChannel("carol"); err == nil || !strings.Contains(err.Error(), "memory ceiling") {
		t.Errorf("channel above the ceiling: %v", err)
	}
	if _, err := l.login("carol"); err == nil || !strings.Contains(err.Error(), "memory ceiling") {
		t.Errorf("login above the ceiling: %v", err)
	}
	used = 0
	if _, err := l.login("carol"); err != nil {
		t.Errorf("login below the ceiling: %v", err)
	}
	bob()
	if l.heldBy("bob") != 0 {
		t.Errorf("bob still holds memory")
	}
}
