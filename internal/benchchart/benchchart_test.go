package benchchart

import (
	"bytes"
	"encoding/xml"
	"errors"
	"flag"
	"io"
	"os"
	"slices"
	"strconv"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/bench-chart-example.svg")

// sample is docs/BENCHMARKS.md's seed table (10 targets, RTT 50 ms), one mode
// marked failed to show how a failure is drawn.
func sample() Chart {
	return Chart{
		Title:    "Example: seed-10h-50ms",
		Subtitle: "seed.yml, 10 targets, RTT 50ms, median of 3 (docs/BENCHMARKS.md's table; make bench draws bench-results/<workload>.svg)",
		Bars: []Bar{
			{Mode: "stock", Seconds: 26.37}, {Mode: "stock_pipe", Seconds: 14.70},
			{Mode: "mitogen_linear", Seconds: 11.77}, {Mode: "mitogen_free", Seconds: 10.99},
			{Mode: "gomux", Seconds: 11.56}, {Mode: "gomux_pipe", Seconds: 8.83},
			{Mode: "gomux_cold", Seconds: 16.98}, {Mode: "gomux_pipe_cold", Seconds: 13.77},
		},
	}
}

// node is a parsed SVG element.
type node struct {
	name  string
	attrs map[string]string
	text  string
}

// parse reads the whole document with encoding/xml (an error is a
// document that is not well-formed) and returns its elements in order.
func parse(t *testing.T, b []byte) []node {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	var out []node
	var open []int
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, b)
		}
		switch tk := tok.(type) {
		case xml.StartElement:
			n := node{name: tk.Name.Local, attrs: map[string]string{}}
			for _, a := range tk.Attr {
				n.attrs[a.Name.Local] = a.Value
			}
			out = append(out, n)
			open = append(open, len(out)-1)
		case xml.CharData:
			if len(open) > 0 {
				out[open[len(open)-1]].text += string(tk)
			}
		case xml.EndElement:
			open = open[:len(open)-1]
		}
	}
	if len(out) == 0 || out[0].name != "svg" || out[0].attrs["xmlns"] != "http://www.w3.org/2000/svg" {
		t.Fatalf("root is not an SVG element: %+v", out[:min(1, len(out))])
	}
	return out
}

func num(t *testing.T, s string) float64 {
	t.Helper()
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestOneBarPerMode: one bar per timed mode, in the table's order, each
// as long as its time in proportion, coloured by family; a failed mode
// has its name and "failed" and no bar.
func TestOneBarPerMode(t *testing.T) {
	c := sample()
	c.Bars[7] = Bar{Mode: "gomux_pipe_cold", Failed: true}
	b, err := SVG(c)
	if err != nil {
		t.Fatal(err)
	}
	var modes []string
	perSecond := 0.0
	for _, n := range parse(t, b) {
		if n.name != "rect" || n.attrs["class"] != "bar" {
			continue
		}
		mode := n.attrs["data-mode"]
		modes = append(modes, mode)
		bar, _ := find(c.Bars, mode)
		w := num(t, n.attrs["width"])
		if perSecond == 0 {
			perSecond = w / bar.Seconds
		}
		if got := w / bar.Seconds; got < perSecond*0.999 || got > perSecond*1.001 {
			t.Errorf("%s: width %.1f for %.2f s is out of proportion (%.2f per second, want %.2f)", mode, w, bar.Seconds, got, perSecond)
		}
		if n.attrs["fill"] != colours[Family(mode)] {
			t.Errorf("%s: fill %s, want %s's %s", mode, n.attrs["fill"], Family(mode), colours[Family(mode)])
		}
	}
	want := []string{"stock", "stock_pipe", "mitogen_linear", "mitogen_free", "gomux", "gomux_pipe", "gomux_cold"}
	if !slices.Equal(modes, want) {
		t.Errorf("bars %q, want %q", modes, want)
	}
	if !bytes.Contains(b, []byte(`class="failed">failed</text>`)) {
		t.Errorf("the failed mode is not marked failed")
	}
}

// TestLabels: the title, every mode's name, each bar's time, and the
// stock and mitogen_linear reference lines with their names are in the
// picture; text that looks like markup stays text.
func TestLabels(t *testing.T) {
	c := sample()
	c.Title = `a <b> & "c"`
	b, err := SVG(c)
	if err != nil {
		t.Fatal(err)
	}
	texts := map[string]bool{}
	refs := map[string]bool{}
	for _, n := range parse(t, b) {
		if n.name == "text" {
			texts[n.text] = true
		}
		if n.name == "line" && n.attrs["class"] == "ref" {
			refs[n.attrs["data-mode"]] = true
		}
	}
	for _, want := range []string{c.Title, "stock", "mitogen_linear", "gomux_pipe", "26.4 s", "8.83 s", "stock Ansible", "Mitogen"} {
		if !texts[want] {
			t.Errorf("no text %q in the chart", want)
		}
	}
	if !refs[RefStock] || !refs[RefMitogen] {
		t.Errorf("reference lines: %v, want stock and mitogen_linear", refs)
	}
}

// TestExample keeps docs/bench-chart-example.svg, which docs/BENCHMARKS.md
// shows, what this package draws from the sample (-update rewrites it).
func TestExample(t *testing.T) {
	b, err := SVG(sample())
	if err != nil {
		t.Fatal(err)
	}
	const path = "../../docs/bench-chart-example.svg"
	if *update {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(old, b) {
		t.Errorf("%s is not what the sample draws now: go test ./internal/benchchart -run TestExample -args -update", path)
	}
}
