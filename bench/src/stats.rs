//! Percentiles, run-to-run summaries and /proc samples.

use crate::client::Base;
use serde_json::{Value, json};

/// Nearest-rank percentile of sorted nanoseconds, in microseconds.
fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// p50/p90/p99/p99.9/min/max/mean in µs of one run's samples.
pub fn summary(ns: &mut [u64]) -> Value {
    ns.sort_unstable();
    let mean = if ns.is_empty() {
        0.0
    } else {
        ns.iter().map(|&x| x as f64).sum::<f64>() / ns.len() as f64 / 1000.0
    };
    json!({
        "p50_us": pct(ns, 50.0), "p90_us": pct(ns, 90.0), "p99_us": pct(ns, 99.0),
        "p999_us": pct(ns, 99.9), "min_us": pct(ns, 0.0), "max_us": pct(ns, 100.0), "mean_us": mean,
    })
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn spread(mut v: Vec<f64>) -> Value {
    let med = median(&mut v);
    json!({"median": round1(med), "min": round1(v.first().copied().unwrap_or(0.0)), "max": round1(v.last().copied().unwrap_or(0.0)), "runs": v.iter().map(|x| round1(*x)).collect::<Vec<_>>()})
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn get(run: &[Value], i: usize, what: &str, p: &str) -> f64 {
    run[i][what][p].as_f64().unwrap_or(0.0)
}

/// Across runs: each target's p50/p99 (median, min, max over runs) and its added latency against the
/// baseline (target 0) computed per run, then summarised the same way. Also prints a table to stderr.
pub fn latency_report(targets: &[(String, Base)], runs: &[Vec<Value>], stream: bool) -> Value {
    let mut out = Vec::new();
    let metrics: &[&str] = if stream {
        &["total", "first_byte"]
    } else {
        &["total"]
    };
    eprintln!(
        "{:<12} {:<10} {:>28} {:>28} {:>24} {:>24}",
        "target",
        "metric",
        "p50 µs med [min..max]",
        "p99 µs med [min..max]",
        "added p50 µs med [rng]",
        "added p99 µs med [rng]"
    );
    for (i, (name, _)) in targets.iter().enumerate() {
        let mut entry = serde_json::Map::new();
        entry.insert("target".into(), json!(name));
        for m in metrics {
            let p50: Vec<f64> = runs.iter().map(|r| get(r, i, m, "p50_us")).collect();
            let p99: Vec<f64> = runs.iter().map(|r| get(r, i, m, "p99_us")).collect();
            let a50: Vec<f64> = runs
                .iter()
                .map(|r| get(r, i, m, "p50_us") - get(r, 0, m, "p50_us"))
                .collect();
            let a99: Vec<f64> = runs
                .iter()
                .map(|r| get(r, i, m, "p99_us") - get(r, 0, m, "p99_us"))
                .collect();
            let (s50, s99, sa50, sa99) = (spread(p50), spread(p99), spread(a50), spread(a99));
            let f = |v: &Value| format!("{} [{}..{}]", v["median"], v["min"], v["max"]);
            eprintln!(
                "{:<12} {:<10} {:>28} {:>28} {:>24} {:>24}",
                name,
                m,
                f(&s50),
                f(&s99),
                f(&sa50),
                f(&sa99)
            );
            entry.insert(
                (*m).to_string(),
                json!({"p50_us": s50, "p99_us": s99, "added_p50_us": sa50, "added_p99_us": sa99}),
            );
        }
        out.push(Value::Object(entry));
    }
    Value::Array(out)
}

/// RSS (kB), open fds and threads of a process, from /proc.
pub fn proc_sample(pid: u32) -> anyhow::Result<Value> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok(
        json!({"rss_kb": field("VmRSS:"), "hwm_kb": field("VmHWM:"), "threads": field("Threads:"), "fds": fds}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        let s = summary(&mut v);
        assert_eq!(s["p50_us"], 50.0);
        assert_eq!(s["p99_us"], 99.0);
        assert_eq!(s["min_us"], 1.0);
        assert_eq!(s["max_us"], 100.0);
        let mut m = vec![3.0, 1.0, 2.0, 10.0];
        assert_eq!(median(&mut m), 2.5);
    }
}
