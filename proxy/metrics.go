package proxy

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gomux/gomux/shim"
	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/proxy/upstream"
)

// metrics is what gomux counts for Prometheus, recorded at the same points
// as the log events of the same name. Each Server owns its registry, so
// two servers in one process (tests, replicas) never share counters.
// Labels are bounded: no target, user or address is ever a label (those
// are in the logs), only kinds, modes, results and rule indexes, which
// the config bounds. A nil *metrics records nothing, so code built
// without a Server (a Pool in a unit test, gomux check) needs no registry.
type metrics struct {
	reg *prometheus.Registry

	frontConns     *prometheus.CounterVec
	frontAuth      *prometheus.CounterVec
	channels       *prometheus.CounterVec
	decisions      *prometheus.CounterVec
	limitRefusals  *prometheus.CounterVec
	upstreamDials  *prometheus.CounterVec
	agentStarts    *prometheus.CounterVec
	agentUploads   prometheus.Counter
	uploadBytes    prometheus.Counter
	agentFallbacks prometheus.Counter
	taskSeconds    *prometheus.HistogramVec
	taskBytes      *prometheus.HistogramVec
	warmPython     *prometheus.CounterVec
	reloads        *prometheus.CounterVec
	proxyHeaders   *prometheus.CounterVec
}

// counterVec and counter make the counters newMetrics registers.
func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
}

func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

func newMetrics() *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg: reg,
		frontConns: counterVec("gomux_front_connections_total",
			"TCP connections to the front, by result: accepted, or dropped by a limit before SSH.", "result"),
		frontAuth: counterVec("gomux_front_auth_total",
			"Front authentication attempts by method (publickey, certificate) and result (accepted, rejected).", "method", "result"),
		channels: counterVec("gomux_channels_total",
			"Channels opened by clients, by where (front, inner) and kind (direct-tcpip, session; a session on the front is refused).", "via", "kind"),
		decisions: counterVec("gomux_policy_decisions_total",
			"Forwarding decisions by where they were asked (front, inner), mode and the index of the targets rule that decided (-1: none matched).", "via", "mode", "rule"),
		limitRefusals: counterVec("gomux_limit_refusals_total",
			"Clients refused by a limit, by stage (startup, login, channel).", "stage"),
		upstreamDials: counterVec("gomux_upstream_dials_total",
			"Upstream SSH connections attempted (TCP, host key and login), by result (ok, failed).", "result"),
		agentStarts: counterVec("gomux_agent_starts_total",
			"Agent starts on targets, by result (ok, failed).", "result"),
		agentUploads: counter("gomux_agent_uploads_total",
			"Agent binaries uploaded to a target's cache."),
		uploadBytes: counter("gomux_agent_upload_bytes_total",
			"Bytes of agent binaries uploaded."),
		agentFallbacks: counter("gomux_agent_fallbacks_total",
			"Upstreams served without an agent (the agent cannot run there; the reason is in the "+upstream.EventAgentFallback+" log line)."),
		taskSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gomux_task_duration_seconds",
			Help:    "Duration of inner session channels, by kind (exec, shell, sftp, fallback) and whether gomux answered it locally.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"kind", "local"}),
		taskBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gomux_task_bytes",
			Help:    "Bytes a session channel carried, by direction (in: from the client, out: to it).",
			Buckets: prometheus.ExponentialBuckets(64, 4, 10),
		}, []string{"direction"}),
		warmPython: counterVec("gomux_warm_python_total",
			"Ansible module runs sent to a warm Python fork server (hit) or to a fresh interpreter while warm_python is on (fallback).", "result"),
		reloads: counterVec("gomux_config_reloads_total",
			"Config reloads (SIGHUP), by result (ok, failed: the running config was kept).", "result"),
		proxyHeaders: counterVec("gomux_proxy_protocol_total",
			"PROXY protocol headers, by result (ok, local, missing, invalid, untrusted).", "result"),
	}
	reg.MustRegister(m.frontConns, m.frontAuth, m.channels, m.decisions, m.limitRefusals, m.upstreamDials,
		m.agentStarts, m.agentUploads, m.uploadBytes, m.agentFallbacks, m.taskSeconds, m.taskBytes,
		m.warmPython, m.reloads, m.proxyHeaders,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// gauges registers what is read at scrape time from the server's own
// state, so nothing on the hot path keeps them.
func (m *metrics) gauges(s *Server) {
	gf := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	cf := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	m.reg.MustRegister(
		gf("gomux_upstream_connections", "Pooled upstream SSH connections.", func() float64 { return float64(s.pool.Len()) }),
		gf("gomux_shim_states", "(target, user) Ansible states held.", func() float64 { return float64(s.pool.ShimStates()) }),
		gf("gomux_staged_bytes", "Bytes of uploads held in memory for Ansible (limits.max_staged_mib).", func() float64 { return float64(s.budget.Used()) }),
		gf("gomux_connections_open", "SSH connections open now, front and inner (accelerated) together.", func() float64 { return float64(s.drain.len()) }),
		gf("gomux_ready", "1 while gomux accepts connections, 0 while draining.", func() float64 {
			if s.ready.Load() {
				return 1
			}
			return 0
		}),
		gf("gomux_memory_ceiling_bytes", "The memory ceiling in force (limits.max_memory_mib, or 80% of the cgroup limit when lower): past it gomux refuses new logins and channels; 0 for none.",
			func() float64 { return float64(s.limits.Ceiling()) }),
		gf("gomux_drain_deadline_timestamp_seconds", "When the running drain closes the connections still open (Unix time, drain_timeout after SIGTERM); 0 when not draining.",
			func() float64 { return float64(s.drainDeadline.Load()) }),
		cf("gomux_shim_round_trips_total", "Requests that reached a target through the Ansible shim (batches, passed-through commands, sftp operations, deferred removals, resends after a cache miss).",
			func() float64 { return float64(s.pool.ShimTotals().RoundTrips) }),
		cf("gomux_shim_local_steps_total", "Ansible steps gomux answered without a round trip to the target.",
			func() float64 { return float64(s.pool.ShimTotals().Local) }),
	)
}

func (m *metrics) frontConn(result string) {
	if m != nil {
		m.frontConns.WithLabelValues(result).Inc()
	}
}

func (m *metrics) auth(method string, ok bool) {
	if m != nil {
		m.frontAuth.WithLabelValues(method, okLabel(ok, "accepted", "rejected")).Inc()
	}
}

func (m *metrics) channel(via, kind string) {
	if m != nil {
		m.channels.WithLabelValues(via, kind).Inc()
	}
}

func (m *metrics) decision(via string, d Decision) {
	if m != nil {
		m.decisions.WithLabelValues(via, string(d.Mode), strconv.Itoa(d.Rule)).Inc()
	}
}

func (m *metrics) limit(stage string) {
	if m != nil {
		m.limitRefusals.WithLabelValues(stage).Inc()
	}
}

func (m *metrics) upstreamDial(err error) {
	if m != nil {
		m.upstreamDials.WithLabelValues(okLabel(err == nil, "ok", "failed")).Inc()
	}
}

func (m *metrics) agentStart(err error) {
	if m != nil {
		m.agentStarts.WithLabelValues(okLabel(err == nil, "ok", "failed")).Inc()
	}
}

func (m *metrics) agentUpload(size int) {
	if m != nil {
		m.agentUploads.Inc()
		m.uploadBytes.Add(float64(size))
	}
}

func (m *metrics) agentFallback() {
	if m != nil {
		m.agentFallbacks.Inc()
	}
}

// task records one finished session channel.
func (m *metrics) task(kind string, local bool, d time.Duration, in, out int64) {
	if m == nil {
		return
	}
	m.taskSeconds.WithLabelValues(kind, strconv.FormatBool(local)).Observe(d.Seconds())
	m.taskBytes.WithLabelValues("in").Observe(float64(in))
	m.taskBytes.WithLabelValues("out").Observe(float64(out))
}

func (m *metrics) warm(hit bool) {
	if m != nil {
		m.warmPython.WithLabelValues(okLabel(hit, "hit", "fallback")).Inc()
	}
}

func (m *metrics) reload(ok bool) {
	if m != nil {
		m.reloads.WithLabelValues(okLabel(ok, "ok", "failed")).Inc()
	}
}

func (m *metrics) proxyHeader(result string) {
	if m != nil {
		m.proxyHeaders.WithLabelValues(result).Inc()
	}
}

func okLabel(ok bool, yes, no string) string {
	if ok {
		return yes
	}
	return no
}

// MetricsHandler serves /metrics (Prometheus text format), /healthz (200
// while the process serves) and /readyz (200 while it accepts
// connections, 503 once it drains, so a load balancer stops sending
// clients before the listener closes). It belongs on its own address
// (metrics_listen), never on the SSH port.
func (s *Server) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{ErrorLog: promLogger{s}}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}

// promLogger sends the metrics handler's errors to gomux's log.
type promLogger struct{ s *Server }

func (l promLogger) Println(v ...any) {
	l.s.log.Warn().Str("event", EventMetrics).Interface("error", v).Msg("metrics scrape error")
}

// sessionEnded records a finished agent session channel: its duration and
// bytes, and for an Ansible module run whether it ran warm.
func (m *metrics) sessionEnded(s *session, local bool) {
	if m == nil {
		return
	}
	kind := s.kind
	if kind == "subsystem" {
		kind = "sftp"
	}
	m.task(kind, local, time.Since(s.start), s.bytesIn.Load(), s.bytesOut.Load())
	if s.exec.Kind == shim.StepRun && s.ic.s.start.Upstream.WarmPython {
		m.warm(s.exec.Warm)
	}
}

// authMethod is the front authentication method a key stands for.
func authMethod(key gossh.PublicKey) string {
	if _, ok := key.(*gossh.Certificate); ok {
		return "certificate"
	}
	return "publickey"
}
