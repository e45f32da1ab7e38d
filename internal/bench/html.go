package bench

import (
	"bytes"
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
)

// series is one line of a chart.
type series struct {
	name   string
	color  string
	xs, ys []float64
}

const (
	chartW, chartH = 640.0, 220.0
	padL, padR     = 60.0, 20.0
	padT, padB     = 20.0, 36.0
)

// niceMax rounds v up to 1, 2 or 5 times a power of ten.
func niceMax(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func fmtNum(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return fmt.Sprintf("%.3gM", v/1e6)
	case a >= 1e3:
		return fmt.Sprintf("%.3gk", v/1e3)
	}
	return fmt.Sprintf("%.3g", v)
}

// lineChart renders series as an inline SVG with a linear y axis from 0.
func lineChart(title, xlabel, ylabel string, ss []series) template.HTML {
	var b bytes.Buffer
	xmax, ymax := 0.0, 0.0
	for _, s := range ss {
		for i := range s.xs {
			xmax, ymax = max(xmax, s.xs[i]), max(ymax, s.ys[i])
		}
	}
	xmax, ymax = niceMax(xmax), niceMax(ymax)
	pw, ph := chartW-padL-padR, chartH-padT-padB
	x := func(v float64) float64 { return padL + pw*v/xmax }
	y := func(v float64) float64 { return padT + ph*(1-v/ymax) }
	fmt.Fprintf(&b, `<svg viewBox="0 0 %.0f %.0f" width="%.0f" height="%.0f" role="img"><title>%s</title>`, chartW, chartH, chartW, chartH, template.HTMLEscapeString(title))
	axes(&b, xlabel, ylabel)
	for i := 0; i <= 4; i++ {
		v := ymax * float64(i) / 4
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" class="grid"/><text x="%.1f" y="%.1f" text-anchor="end">%s</text>`,
			padL, chartW-padR, y(v), y(v), padL-4, y(v)+4, fmtNum(v))
		xv := xmax * float64(i) / 4
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`, x(xv), chartH-padB+14, fmtNum(xv))
	}
	for k, s := range ss {
		var pts []string
		for i := range s.xs {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.xs[i]), y(s.ys[i])))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`, s.color, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="%s">%s</text>`, padL+8+float64(k)*150, padT-6, s.color, template.HTMLEscapeString(s.name))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

func axes(b *bytes.Buffer, xlabel, ylabel string) {
	fmt.Fprintf(b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" class="axis"/>`, padL, chartW-padR, chartH-padB, chartH-padB)
	fmt.Fprintf(b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" class="axis"/>`, padL, padL, padT, chartH-padB)
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`, padL+(chartW-padL-padR)/2, chartH-4, template.HTMLEscapeString(xlabel))
	fmt.Fprintf(b, `<text transform="translate(12 %.1f) rotate(-90)" text-anchor="middle">%s</text>`, padT+(chartH-padT-padB)/2, template.HTMLEscapeString(ylabel))
}

// histChart renders latency buckets as bars on a logarithmic time axis.
func histChart(title string, bs []Bucket) template.HTML {
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg viewBox="0 0 %.0f %.0f" width="%.0f" height="%.0f" role="img"><title>%s</title>`, chartW, chartH, chartW, chartH, template.HTMLEscapeString(title))
	axes(&b, "latency (log scale)", "messages")
	if len(bs) == 0 {
		b.WriteString(`<text x="320" y="110" text-anchor="middle">no data</text></svg>`)
		return template.HTML(b.String())
	}
	lo := math.Log10(max(bs[0].UpperUs, 0.1)) - 0.05
	hi := math.Log10(bs[len(bs)-1].UpperUs) + 0.05
	var cmax uint64
	for _, k := range bs {
		cmax = max(cmax, k.Count)
	}
	pw, ph := chartW-padL-padR, chartH-padT-padB
	x := func(us float64) float64 { return padL + pw*(math.Log10(max(us, 0.1))-lo)/(hi-lo) }
	prev := lo
	for _, k := range bs {
		x0, x1 := padL+pw*(prev-lo)/(hi-lo), x(k.UpperUs)
		prev = math.Log10(max(k.UpperUs, 0.1))
		h := ph * float64(k.Count) / float64(cmax)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#3b7dd8"><title>≤ %s: %d</title></rect>`,
			x0, padT+ph-h, max(x1-x0-0.5, 0.5), h, us(k.UpperUs), k.Count)
	}
	for e := math.Ceil(lo); e <= hi; e++ {
		v := math.Pow(10, e)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`, x(v), chartH-padB+14, us(v))
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%d</text>`, padL-4, padT+4, cmax)
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

var reportTmpl = template.Must(template.New("r").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>moat bench: {{.R.Label}}</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222;max-width:60em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
svg{display:block;margin:1em 0;background:#fcfcfc}svg text{font-size:11px;fill:#444}
.axis{stroke:#444}.grid{stroke:#e4e4e4}pre{background:#f6f6f6;padding:1em;overflow:auto}
</style></head><body>
<h1>moat bench: {{.R.Label}}</h1>
<pre>{{.Table}}</pre>
{{if .Lat}}<h2>End-to-end latency</h2>
<table><tr><th>n</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>
<tr><td>{{.R.Latency.Count}}</td><td>{{.P50}}</td><td>{{.P90}}</td><td>{{.P99}}</td><td>{{.P999}}</td><td>{{.Max}}</td></tr></table>
{{.Lat}}{{end}}
{{if .Thr}}<h2>Throughput</h2>{{.Thr}}{{end}}
{{if .Hs}}<h2>Handshake latency (TCP + TLS)</h2>{{.Hs}}{{end}}
{{if .Conns}}<h2>Connections</h2>{{.Conns}}{{end}}
{{if .CPU}}<h2>Broker CPU and memory</h2>{{.CPU}}{{.RSS}}{{end}}
<h2>Parameters</h2><pre>{{.Params}}</pre>
</body></html>
`))

// WriteHTML writes a self-contained HTML report of r (inline SVG charts,
// no scripts, no external resources).
func (r *Result) WriteHTML(w io.Writer) error {
	var tbl, params bytes.Buffer
	r.WriteTable(&tbl)
	r.writeParams(&params)
	d := map[string]any{"R": r, "Table": tbl.String(), "Params": params.String(),
		"P50": us(r.Latency.P50Us), "P90": us(r.Latency.P90Us), "P99": us(r.Latency.P99Us),
		"P999": us(r.Latency.P999Us), "Max": us(r.Latency.MaxUs)}
	if r.Latency.Count > 0 {
		d["Lat"] = histChart("latency histogram", r.LatencyBuckets)
	}
	if len(r.HandshakeBuckets) > 0 {
		d["Hs"] = histChart("handshake histogram", r.HandshakeBuckets)
	}
	var t, sent, deliv, conns, cpu, rss []float64
	for _, p := range r.Series {
		t = append(t, p.T)
		sent, deliv = append(sent, p.SentRate), append(deliv, p.DeliverRate)
		conns = append(conns, float64(p.Connected))
		cpu, rss = append(cpu, p.BrokerCPU), append(rss, p.BrokerRSSMiB)
	}
	if len(t) > 1 {
		if r.Scenario != string(Conn) {
			d["Thr"] = lineChart("throughput", "seconds", "messages/s", []series{
				{"sent/s", "#d8623b", t, sent}, {"delivered/s", "#3b7dd8", t, deliv}})
		}
		d["Conns"] = lineChart("connections", "seconds", "connected", []series{{"connected", "#2a9d5b", t, conns}})
		if r.Broker != nil {
			d["CPU"] = lineChart("broker CPU", "seconds", "% of one core", []series{{"broker CPU %", "#b03bd8", t, cpu}})
			d["RSS"] = lineChart("broker RSS", "seconds", "MiB", []series{{"broker RSS MiB", "#444", t, rss}})
		}
	}
	return reportTmpl.Execute(w, d)
}

func (r *Result) writeParams(w io.Writer) {
	p := r.Params
	fmt.Fprintf(w, "scenario %s, start %s, elapsed %.1fs, GOMAXPROCS %d\n", r.Scenario, r.Start.Format("2006-01-02 15:04:05Z"), r.Elapsed, r.GoMaxProcs)
	fmt.Fprintf(w, "clients %d, publishers %d, subscribers %d, conn rate %g/s\n", p.Clients, p.Pubs, p.Subs, p.ConnRate)
	fmt.Fprintf(w, "QoS %d, payload %d B, rate %g msg/s per publisher, inflight %d, max backlog %d, duration %gs, encrypted %v\n", p.QoS, p.PayloadSize, p.MsgRate, p.Inflight, p.MaxBacklog, p.DurationSeconds, p.Encrypted)
	if p.OfferedPerSecond > 0 {
		fmt.Fprintf(w, "open loop: %g msg/s offered in all\n", p.OfferedPerSecond)
	}
	fmt.Fprintf(w, "TLS %v, mutual %v, key exchange %q, client certificates %d, resumption %v\n", p.TLS, p.MutualTLS, p.KeyExchange, p.ClientCerts, p.Resume)
}
