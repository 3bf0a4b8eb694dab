// Package benchchart draws a benchmark workload's side-by-side result
// (wall time per mode) as an SVG bar chart, so `make bench` leaves
// something to look at beside its wide tables. It writes the SVG itself
// with encoding/xml: no plotting dependency, and the output is always
// well-formed XML whatever the labels hold.
package benchchart

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Bar is one mode's result.
type Bar struct {
	Mode    string
	Seconds float64 // median wall time
	Failed  bool    // a host failed or was unreachable: no time to draw
}

// Chart is one workload: a title, a line saying what was measured, and
// the modes in the order the table lists them.
type Chart struct {
	Title    string
	Subtitle string
	Bars     []Bar
}

// The references every chart marks with a line across the bars: the
// modes people compare gomux with.
const (
	RefStock   = "stock"
	RefMitogen = "mitogen_linear"
)

// Layout, in SVG user units.
const (
	width     = 760
	labelW    = 150 // mode names, right-aligned left of the bars
	valueW    = 90  // room for the value after the longest bar
	top       = 92  // title, subtitle, legend, reference labels
	rowH      = 26
	barH      = 18
	axisH     = 34
	plotWidth = width - labelW - valueW
)

// Family is the group a mode belongs to, by its name: stock Ansible,
// Mitogen or gomux; it sets the bar's colour.
func Family(mode string) string {
	switch {
	case strings.HasPrefix(mode, "stock"):
		return "stock"
	case strings.HasPrefix(mode, "mitogen"):
		return "mitogen"
	case strings.HasPrefix(mode, "gomux"):
		return "gomux"
	}
	return "other"
}

// colours per family (Okabe-Ito, distinguishable by colour-blind
// readers); cold gomux modes are drawn lighter.
var colours = map[string]string{"stock": "#999999", "mitogen": "#E69F00", "gomux": "#0072B2", "other": "#666666"}

// SVG renders c.
func SVG(c Chart) ([]byte, error) {
	step, scale := ticks(c.Bars)
	height := top + rowH*len(c.Bars) + axisH
	doc := svg{
		Xmlns: "http://www.w3.org/2000/svg", Width: width, Height: height,
		ViewBox: fmt.Sprintf("0 0 %d %d", width, height), Role: "img",
		FontFamily: "sans-serif", FontSize: 12,
		Title: c.Title + ": " + c.Subtitle,
	}
	doc.add(rect{X: 0, Y: 0, W: width, H: float64(height), Fill: "#ffffff"})
	doc.add(text{X: 10, Y: 22, Size: 16, Weight: "bold", Body: c.Title})
	doc.add(text{X: 10, Y: 40, Fill: "#444444", Body: c.Subtitle})
	doc.legend()
	doc.axis(step, scale, len(c.Bars))
	doc.refs(c.Bars, scale)
	for i, b := range c.Bars {
		doc.bar(i, b, scale, c.Bars)
	}
	var buf bytes.Buffer
	buf.WriteString(xml.Header)
	enc := xml.NewEncoder(&buf)
	enc.Indent("", " ")
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("benchchart: %w", err)
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

// x is where t seconds fall on the bar axis.
func x(t, scale float64) float64 {
	return labelW + t/scale*plotWidth
}

// ticks is the axis: a step of 1, 2 or 5 times a power of ten giving
// at most five steps up to the longest time, and the axis end.
func ticks(bars []Bar) (step, end float64) {
	m := 0.0
	for _, b := range bars {
		if !b.Failed {
			m = max(m, b.Seconds)
		}
	}
	if m <= 0 {
		return 1, 1
	}
	raw := m / 5
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	step = 10 * p
	for _, f := range []float64{1, 2, 5} {
		if f*p >= raw {
			step = f * p
			break
		}
	}
	return step, math.Ceil(m/step) * step
}

// legend draws the three families' swatches.
func (s *svg) legend() {
	xs := 10
	for _, f := range []struct{ fam, label string }{{"stock", "stock Ansible"}, {"mitogen", "Mitogen"}, {"gomux", "gomux"}} {
		s.add(rect{X: float64(xs), Y: 50, W: 12, H: 12, Fill: colours[f.fam], Class: "legend"})
		s.add(text{X: float64(xs + 16), Y: 60, Body: f.label})
		xs += 16 + 8*len(f.label) + 16
	}
	s.add(text{X: width - 10, Y: 60, Anchor: "end", Fill: "#444444", Body: "wall time, lower is better"})
}

// axis draws the time axis, its ticks and their grid lines.
func (s *svg) axis(step, scale float64, rows int) {
	y0, y1 := float64(top-4), float64(top+rowH*rows)
	for t := 0.0; t <= scale*1.0001; t += step {
		xi := x(t, scale)
		s.add(line{X1: xi, Y1: y0, X2: xi, Y2: y1, Stroke: "#e0e0e0"})
		s.add(text{X: xi, Y: y1 + 16, Anchor: "middle", Fill: "#444444", Body: strconv.FormatFloat(t, 'g', 4, 64) + " s"})
	}
	s.add(line{X1: labelW, Y1: y1, X2: labelW + plotWidth, Y2: y1, Stroke: "#444444"})
}

// bar draws one mode's row: its name, its bar (or "failed") and its time,
// with a tooltip comparing it with the references.
func (s *svg) bar(i int, b Bar, scale float64, all []Bar) {
	y := float64(top + rowH*i)
	s.add(text{X: labelW - 8, Y: y + barH - 5, Anchor: "end", Class: "mode", Body: b.Mode})
	if b.Failed {
		s.add(text{X: labelW + 4, Y: y + barH - 5, Fill: "#B00020", Class: "failed", Body: "failed"})
		return
	}
	fill := colours[Family(b.Mode)]
	opacity := ""
	if strings.HasSuffix(b.Mode, "_cold") {
		opacity = "0.55"
	}
	tip := b.Mode + ": " + seconds(b.Seconds)
	for _, ref := range []string{RefStock, RefMitogen} {
		if r, ok := find(all, ref); ok && r.Seconds > 0 && ref != b.Mode {
			tip += fmt.Sprintf(", %.2f × %s", b.Seconds/r.Seconds, ref)
		}
	}
	s.add(rect{X: labelW, Y: y, W: x(b.Seconds, scale) - labelW, H: barH, Fill: fill, Opacity: opacity,
		Class: "bar", Mode: b.Mode, Tip: &tip})
	s.add(text{X: x(b.Seconds, scale) + 6, Y: y + barH - 5, Class: "value", Halo: "#ffffff", HaloW: 3, Paint: "stroke", Body: seconds(b.Seconds)})
}

// refs marks stock's and Mitogen's times with a dashed line across all
// rows (under the bars), named above them.
func (s *svg) refs(bars []Bar, scale float64) {
	y0, y1 := float64(top-4), float64(top+rowH*len(bars))
	for _, ref := range []string{RefStock, RefMitogen} {
		b, ok := find(bars, ref)
		if !ok || b.Failed {
			continue
		}
		xr := x(b.Seconds, scale)
		s.add(line{X1: xr, Y1: y0, X2: xr, Y2: y1, Stroke: colours[Family(ref)], Dash: "4 3", Width: 1.5, Class: "ref", Mode: ref})
		s.add(text{X: xr, Y: y0 - 4, Anchor: "middle", Size: 11, Fill: "#444444", Class: "ref", Body: ref})
	}
}

func find(bars []Bar, mode string) (Bar, bool) {
	for _, b := range bars {
		if b.Mode == mode {
			return b, true
		}
	}
	return Bar{}, false
}

// seconds formats a time for a label.
func seconds(t float64) string {
	switch {
	case t == 0:
		return "0 s"
	case t < 10:
		return fmt.Sprintf("%.2f s", t)
	case t < 100:
		return fmt.Sprintf("%.1f s", t)
	}
	return fmt.Sprintf("%.0f s", t)
}

// The SVG elements, marshalled by encoding/xml.
type svg struct {
	XMLName    xml.Name `xml:"svg"`
	Xmlns      string   `xml:"xmlns,attr"`
	Width      int      `xml:"width,attr"`
	Height     int      `xml:"height,attr"`
	ViewBox    string   `xml:"viewBox,attr"`
	Role       string   `xml:"role,attr"`
	FontFamily string   `xml:"font-family,attr"`
	FontSize   int      `xml:"font-size,attr"`
	Title      string   `xml:"title"`
	Elems      []any
}

func (s *svg) add(e any) { s.Elems = append(s.Elems, e) }

type rect struct {
	XMLName xml.Name `xml:"rect"`
	X       float64  `xml:"x,attr"`
	Y       float64  `xml:"y,attr"`
	W       float64  `xml:"width,attr"`
	H       float64  `xml:"height,attr"`
	Fill    string   `xml:"fill,attr"`
	Opacity string   `xml:"fill-opacity,attr,omitempty"`
	Class   string   `xml:"class,attr,omitempty"`
	Mode    string   `xml:"data-mode,attr,omitempty"`
	Tip     *string  `xml:"title,omitempty"`
}

type text struct {
	XMLName xml.Name `xml:"text"`
	X       float64  `xml:"x,attr"`
	Y       float64  `xml:"y,attr"`
	Anchor  string   `xml:"text-anchor,attr,omitempty"`
	Size    int      `xml:"font-size,attr,omitempty"`
	Weight  string   `xml:"font-weight,attr,omitempty"`
	Fill    string   `xml:"fill,attr,omitempty"`
	Class   string   `xml:"class,attr,omitempty"`
	Halo    string   `xml:"stroke,attr,omitempty"` // a halo keeps the text readable over lines
	HaloW   int      `xml:"stroke-width,attr,omitempty"`
	Paint   string   `xml:"paint-order,attr,omitempty"`
	Body    string   `xml:",chardata"`
}

type line struct {
	XMLName xml.Name `xml:"line"`
	X1      float64  `xml:"x1,attr"`
	Y1      float64  `xml:"y1,attr"`
	X2      float64  `xml:"x2,attr"`
	Y2      float64  `xml:"y2,attr"`
	Stroke  string   `xml:"stroke,attr"`
	Dash    string   `xml:"stroke-dasharray,attr,omitempty"`
	Width   float64  `xml:"stroke-width,attr,omitempty"`
	Class   string   `xml:"class,attr,omitempty"`
	Mode    string   `xml:"data-mode,attr,omitempty"`
}
