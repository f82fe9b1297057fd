package main

import (
	"fmt"
	"html"
	"math"
	"sort"
	"strings"
)

// series is one line of a chart: a value per memory size (MiB).
type series struct {
	Name   string
	Color  string
	Dashed bool
	Points map[int]float64
}

// hline is a horizontal reference line (a ceiling).
type hline struct {
	Name  string
	Color string
	Value float64
}

// panel is one chart: series against memory size.
type panel struct {
	Title, YLabel string
	LogY          bool
	Series        []series
	Lines         []hline
}

const (
	svgW, svgH             = 1040, 600
	panelW                 = svgW / 2
	padL, padR, padT, padB = 70, 20, 50, 250 // padB leaves room for the legend
)

var palette = []string{"#1f77b4", "#7f7f7f", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd", "#8c564b"}

// chartSVG draws downtime and throughput against memory size for the
// memory workloads: raw CRIU, cr checkpoint and restore, cr migrate, with
// the ceilings of the run.
func chartSVG(res *Results) string {
	down, thr := chartPanels(res)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", svgW, svgH, svgW, svgH)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", svgW, svgH)
	drawPanel(&b, down, 0)
	drawPanel(&b, thr, panelW)
	note := fmt.Sprintf("cr %s, CRIU %s, %s, %d cores; %s", res.Host.CR, res.Host.CRIU, res.Host.CPU, res.Host.Cores, res.Started)
	for _, w := range res.Workloads {
		if w.Lazy != nil && !w.Lazy.Available {
			note += "; cr migrate --lazy: not available"
			break
		}
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#555">%s</text>`+"\n", 10, svgH-10, esc(note))
	b.WriteString("</svg>\n")
	return b.String()
}

// chartPanels builds the two panels from the memory workloads.
func chartPanels(res *Results) (down, thr panel) {
	mk := func(name string, dashed bool) series {
		return series{Name: name, Dashed: dashed, Points: map[int]float64{}}
	}
	rawFrozen, rawDR := mk("raw CRIU: frozen_time (dump --leave-running)", false), mk("raw CRIU: dump + restore wall (tmpfs)", true)
	crLR, crCk := mk("cr checkpoint --leave-running: frozen", false), mk("cr checkpoint: frozen until the file is written", false)
	crMig := mk("cr migrate (stop-and-copy): downtime", false)
	crLazy := mk("cr migrate --lazy: downtime", false)
	tRawD, tRawR := mk("raw criu dump", false), mk("raw criu restore", true)
	tCk, tRs := mk("cr checkpoint", false), mk("cr restore", true)
	tMig, tZstd := mk("cr migrate, end to end (raw bytes / downtime)", false), mk("ceiling: zstd on the workload's pages", true)
	for _, w := range res.Workloads {
		m := w.MemMiB
		if m == 0 {
			continue
		}
		if r := w.Raw; r != nil {
			put(rawFrozen, m, r.FrozenSeconds)
			if r.RestoreWallSeconds > 0 {
				put(rawDR, m, r.DumpWallSeconds+r.RestoreWallSeconds)
				put(tRawR, m, rate(r.ImageBytes, r.RestoreWallSeconds))
			}
			put(tRawD, m, rate(r.ImageBytes, r.DumpWallSeconds))
		}
		if c := w.CheckpointLR; c != nil {
			put(crLR, m, c.CR.FrozenSeconds)
		}
		if c := w.Checkpoint; c != nil {
			put(crCk, m, c.CR.FrozenSeconds)
			put(tCk, m, rate(c.CR.RawBytes, c.WallSeconds))
			if rs := w.Restore; rs != nil {
				put(tRs, m, rate(c.CR.RawBytes, rs.WallSeconds))
			}
		}
		if mg := w.Migrate; mg != nil && mg.Available {
			put(crMig, m, mg.CR.DowntimeSeconds)
			put(tMig, m, mg.EndToEndMBps)
		}
		if l := w.Lazy; l != nil && l.Available {
			put(crLazy, m, l.CR.DowntimeSeconds)
		}
		if z := w.Zstd; z != nil {
			put(tZstd, m, z.CompressMBps)
		}
	}
	down = panel{Title: "Time the job is stopped", YLabel: "seconds (log scale)", LogY: true,
		Series: colored(rawFrozen, rawDR, crLR, crCk, crMig, crLazy)}
	c := res.Ceilings
	thr = panel{Title: "Throughput (MB/s of raw image)", YLabel: "MB/s",
		Series: colored(tRawD, tRawR, tCk, tRs, tMig, tZstd),
		Lines: []hline{
			{Name: "ceiling: tmpfs write", Color: "#bcbd22", Value: c.TmpfsWriteMBps},
			{Name: "ceiling: TCP over the veth", Color: "#17becf", Value: c.TCPVethMBps},
			{Name: "first touch of 4 GiB of new memory", Color: "#e377c2", Value: c.FreshMemMBps},
		}}
	return down, thr
}

func put(s series, mib int, v float64) {
	if v > 0 && !math.IsInf(v, 0) && !math.IsNaN(v) {
		s.Points[mib] = v
	}
}

func rate(bytes int64, seconds float64) float64 {
	if seconds <= 0 {
		return 0
	}
	return float64(bytes) / 1e6 / seconds
}

// colored drops empty series and gives the others the palette's colours.
func colored(ss ...series) []series {
	var out []series
	for i, s := range ss {
		if len(s.Points) == 0 {
			continue
		}
		s.Color = palette[i%len(palette)]
		out = append(out, s)
	}
	return out
}

func drawPanel(b *strings.Builder, p panel, x0 int) {
	left, right := float64(x0+padL), float64(x0+panelW-padR)
	top, bottom := float64(padT), float64(svgH-padB)
	fmt.Fprintf(b, `<text x="%.0f" y="%d" font-size="15" font-weight="bold">%s</text>`+"\n", left, padT-22, esc(p.Title))
	var sizes []int
	seen := map[int]bool{}
	ymin, ymax := math.Inf(1), 0.0
	for _, s := range p.Series {
		for m, v := range s.Points {
			if !seen[m] {
				seen[m] = true
				sizes = append(sizes, m)
			}
			ymin, ymax = min(ymin, v), max(ymax, v)
		}
	}
	for _, l := range p.Lines {
		ymax = max(ymax, l.Value)
	}
	if len(sizes) == 0 {
		fmt.Fprintf(b, `<text x="%.0f" y="%.0f" fill="#555">no memory workload measured</text>`+"\n", left, (top+bottom)/2)
		return
	}
	sort.Ints(sizes)
	lo, hi := math.Log2(float64(sizes[0]))-0.5, math.Log2(float64(sizes[len(sizes)-1]))+0.5
	xOf := func(mib int) float64 { return left + (math.Log2(float64(mib))-lo)/(hi-lo)*(right-left) }
	ticks := niceTicks(ymax * 1.05)
	ytop := ticks[len(ticks)-1]
	yOf := func(v float64) float64 { return bottom - v/ytop*(bottom-top) }
	if p.LogY {
		lo, hi := math.Floor(math.Log10(ymin)), math.Ceil(math.Log10(ymax))
		if hi <= lo {
			hi = lo + 1
		}
		ticks = logTicks(lo, hi)
		yOf = func(v float64) float64 { return bottom - (math.Log10(v)-lo)/(hi-lo)*(bottom-top) }
	}

	// Axes, grid, ticks.
	for _, t := range ticks {
		y := yOf(t)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e5e5e5"/>`+"\n", left, y, right, y)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y+4, tickLabel(t))
	}
	fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>`+"\n", left, bottom, right, bottom)
	fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>`+"\n", left, top, left, bottom)
	for _, m := range sizes {
		x := xOf(m)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>`+"\n", x, bottom, x, bottom+5)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, bottom+19, mibLabel(m))
	}
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">memory of the job (log scale)</text>`+"\n", (left+right)/2, bottom+36)
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" transform="rotate(-90 %.1f %.1f)">%s</text>`+"\n",
		float64(x0+16), (top+bottom)/2, float64(x0+16), (top+bottom)/2, esc(p.YLabel))

	// Ceilings, then series.
	for _, l := range p.Lines {
		if l.Value <= 0 {
			continue
		}
		y := yOf(l.Value)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.5" stroke-dasharray="2,3"/>`+"\n", left, y, right, y, l.Color)
	}
	for _, s := range p.Series {
		var pts []string
		var ms []int
		for m := range s.Points {
			ms = append(ms, m)
		}
		sort.Ints(ms)
		for _, m := range ms {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", xOf(m), yOf(s.Points[m])))
		}
		dash := ""
		if s.Dashed {
			dash = ` stroke-dasharray="6,4"`
		}
		fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", s.Color, dash, strings.Join(pts, " "))
		for _, m := range ms {
			fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"><title>%s, %s: %s</title></circle>`+"\n",
				xOf(m), yOf(s.Points[m]), s.Color, esc(s.Name), mibLabel(m), tickLabel(s.Points[m]))
		}
	}

	// Legend below the plot.
	y := bottom + 62
	for _, s := range p.Series {
		dash := ""
		if s.Dashed {
			dash = ` stroke-dasharray="6,4"`
		}
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>`+"\n", left, y-4, left+26, y-4, s.Color, dash)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", left+32, y, esc(s.Name))
		y += 18
	}
	for _, l := range p.Lines {
		if l.Value <= 0 {
			continue
		}
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.5" stroke-dasharray="2,3"/>`+"\n", left, y-4, left+26, y-4, l.Color)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f">%s (%s MB/s)</text>`+"\n", left+32, y, esc(l.Name), tickLabel(l.Value))
		y += 18
	}
}

// niceTicks returns 0 and about five round steps up to at least top.
func niceTicks(top float64) []float64 {
	if top <= 0 {
		top = 1
	}
	raw := top / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, f := range []float64{1, 2, 2.5, 5, 10} {
		if f*mag >= raw {
			step = f * mag
			break
		}
	}
	var t []float64
	for v := 0.0; ; v += step {
		t = append(t, v)
		if v >= top-step*1e-9 {
			break
		}
	}
	return t
}

// logTicks returns 1, 2 and 5 times each power of ten from 10^lo to 10^hi.
func logTicks(lo, hi float64) []float64 {
	var t []float64
	for e := lo; e <= hi; e++ {
		for _, f := range []float64{1, 2, 5} {
			if v := f * math.Pow(10, e); e < hi || f == 1 {
				t = append(t, v)
			}
		}
	}
	return t
}

func tickLabel(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".")
	default:
		return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".")
	}
}

func mibLabel(m int) string {
	if m >= 1024 && m%1024 == 0 {
		return fmt.Sprintf("%d GiB", m/1024)
	}
	return fmt.Sprintf("%d MiB", m)
}

func esc(s string) string { return html.EscapeString(s) }
