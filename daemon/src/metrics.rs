//! Prometheus text-format metrics: request counts and latencies per route, and latency
//! histograms of the MCTS operations.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use parking_lot::Mutex;

const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// The daemon's metrics.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    ops: Mutex<BTreeMap<&'static str, Histogram>>,
}

impl Metrics {
    /// Counts a finished request.
    pub fn request(&self, method: &str, route: &str, status: u16, took: Duration) {
        *self
            .requests
            .lock()
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        self.latency
            .lock()
            .entry(format!("{method} {route}"))
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// Records the latency of `snapshot`, `fork` or `checkout`.
    pub fn op(&self, op: &'static str, took: Duration) {
        self.ops
            .lock()
            .entry(op)
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// The text exposition, with the gauges given.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP helios_http_requests_total API requests by method, route and status.\n",
        );
        out.push_str("# TYPE helios_http_requests_total counter\n");
        for ((m, r, s), n) in self.requests.lock().iter() {
            let _ = writeln!(
                out,
                "helios_http_requests_total{{method=\"{m}\",route=\"{r}\",status=\"{s}\"}} {n}"
            );
        }
        out.push_str("# HELP helios_http_request_duration_seconds API request latency.\n");
        out.push_str("# TYPE helios_http_request_duration_seconds histogram\n");
        for (route, h) in self.latency.lock().iter() {
            h.render(
                &mut out,
                "helios_http_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        out.push_str(
            "# HELP helios_operation_duration_seconds Latency of snapshot, fork and checkout.\n",
        );
        out.push_str("# TYPE helios_operation_duration_seconds histogram\n");
        for (op, h) in self.ops.lock().iter() {
            h.render(
                &mut out,
                "helios_operation_duration_seconds",
                &format!("op=\"{op}\""),
            );
        }
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}
