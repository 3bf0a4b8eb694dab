package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/gomux/gomux/proxy"
)

// adminCallTimeout bounds gomux sessions and gomux kill, so a gomux that
// stopped answering does not hang the operator's terminal.
const adminCallTimeout = 15 * time.Second

// admin runs gomux sessions or gomux kill against the admin socket of
// the gomux serving cfg's state directory (or admin_socket).
func admin(cfg *proxy.Config, inv invocation, stdout, stderr io.Writer) int {
	req := proxy.AdminRequest{Op: inv.cmd}
	if inv.cmd == "kill" {
		req.ID, req.Person = inv.target, inv.person
	}
	ctx, cancel := context.WithTimeout(context.Background(), adminCallTimeout)
	defer cancel()
	path := cfg.AdminSocketPath()
	resp, err := proxy.AdminCall(ctx, path, req)
	if err != nil {
		fmt.Fprintf(stderr, "gomux %s: %v\n", inv.cmd, err)
		if resp == nil {
			fmt.Fprintf(stderr, "  is gomux serve running as this user with this state directory (or admin_socket)? socket: %s\n", path)
		}
		return 1
	}
	if inv.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(resp.Connections)
		return 0
	}
	if inv.cmd == "kill" {
		fmt.Fprintf(stdout, "closed %d connection(s):\n", len(resp.Connections))
	}
	writeSessions(stdout, resp.Connections, time.Now())
	return 0
}

// writeSessions prints connections as a table, one row per thing a
// connection holds open (or one row for a connection that holds none):
// the connection's columns on its first row only.
func writeSessions(w io.Writer, conns []proxy.ConnInfo, now time.Time) {
	if len(conns) == 0 {
		fmt.Fprintln(w, "no open connections")
		return
	}
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPERSON\tSOURCE\tSINCE\tTARGET\tREMOTE USER\tMODE\tIN\tOUT\tRUNNING")
	for _, c := range conns {
		conn := fmt.Sprintf("%s\t%s\t%s\t%s (%s)", c.ID, c.Person, c.Source,
			c.Since.Local().Format(time.DateTime), now.Sub(c.Since).Round(time.Second))
		if len(c.Holds) == 0 {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\n", conn)
		}
		for _, h := range c.Holds {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", conn, h.Target, orDash(printable(h.RemoteUser)), h.Mode,
				bytesText(h.BytesIn), bytesText(h.BytesOut), orDash(printable(strings.Join(h.Running, "; "))))
			conn = "\t\t\t"
		}
	}
	tw.Flush()
}

// maxRunningText is how much of what runs the table shows.
const maxRunningText = 120

// printable is text a client chose (a command line) made safe for the
// operator's terminal and the table: control characters (escape
// sequences, tabs, line ends) written as Go escapes, and cut at
// maxRunningText runes.
func printable(s string) string {
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n == maxRunningText {
			b.WriteString("…")
			break
		}
		if unicode.IsPrint(r) {
			b.WriteRune(r)
		} else {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
		n++
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// bytesText is a byte count for people: 512B, 3.4KiB, 12MiB.
func bytesText(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + "B"
	}
	f, suffix := float64(n)/unit, "KiB"
	for _, s := range []string{"MiB", "GiB", "TiB"} {
		if f < unit {
			break
		}
		f, suffix = f/unit, s
	}
	if f < 10 {
		return strconv.FormatFloat(f, 'f', 1, 64) + suffix
	}
	return strconv.FormatFloat(f, 'f', 0, 64) + suffix
}
