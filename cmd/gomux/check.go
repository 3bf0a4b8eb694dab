package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/user"
	"time"

	"github.com/gomux/gomux/agent/dist"
	"github.com/gomux/gomux/proxy"
)

// check runs `gomux check`: one line per step a connection to target
// would take, with the fix for each that failed. Exit 0 when nothing
// failed, 1 otherwise.
func check(cfg *proxy.Config, person, target string, stdout, stderr io.Writer) int {
	if person == "" {
		if u, err := user.Current(); err == nil {
			person = u.Username
		} else {
			person = os.Getenv("USER")
		}
	}
	agents, err := dist.Load()
	if err != nil {
		fmt.Fprintln(stderr, "gomux: embedded agent:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	code := 0
	for _, s := range proxy.Check(ctx, cfg, agents, person, target) {
		fmt.Fprintf(stdout, "%-5s %-9s %s\n", s.Status, s.Name, s.Detail)
		if s.Fix != "" {
			fmt.Fprintf(stdout, "      %-9s fix: %s\n", "", s.Fix)
		}
		if s.Status == "fail" {
			code = 1
		}
	}
	return code
}
