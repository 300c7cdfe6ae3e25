//! `/admin/dashboard`: a server-rendered spend dashboard. Inline SVG charts, inline CSS, no scripts and no
//! external assets, so it needs no front-end build and works under a strict CSP.

use super::{audit_sink, now_i64, require_browser};
use crate::app::AppState;
use crate::audit::{GroupBy, SpendRow};
use crate::error::AdminError;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

const DAYS: i64 = 30;
const DAY: i64 = 86_400;
const SERIES: usize = 6;
const COLORS: &[&str] = &[
    "#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#6b7280",
];

/// Budget use, as governance reports it for the dashboard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetUse {
    pub id: String,
    /// `principal:alice`, `team:payments`, `org:acme`.
    pub scope: String,
    pub window: String,
    pub used_nanos: i64,
    pub limit_nanos: i64,
    /// Alert marks to draw on the bar: (`80%` or `soft`, where in nano-USD).
    pub marks: Vec<(String, i64)>,
}

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// `$1.2345` from nano-USD (integer arithmetic, 4 decimals, truncated).
pub fn usd(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    format!(
        "{sign}${}.{:04}",
        n / 1_000_000_000,
        (n % 1_000_000_000) / 100_000
    )
}

fn day_label(day: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(day)
        .map(|t| format!("{:02}-{:02}", u8::from(t.month()), t.day()))
        .unwrap_or_default()
}

/// Top series by total cost; the rest folded into `other`.
fn series(rows: &[SpendRow], first_day: i64) -> Vec<(String, Vec<i64>, i64, i64)> {
    let mut by_key: BTreeMap<String, (Vec<i64>, i64, i64)> = BTreeMap::new();
    for r in rows {
        let idx = (r.day - first_day) / DAY;
        if !(0..DAYS).contains(&idx) {
            continue;
        }
        let e = by_key
            .entry(r.key.clone())
            .or_insert_with(|| (vec![0; DAYS as usize], 0, 0));
        e.0[idx as usize] += r.cost_nanos;
        e.1 += r.cost_nanos;
        e.2 += r.requests;
    }
    let mut all: Vec<(String, Vec<i64>, i64, i64)> = by_key
        .into_iter()
        .map(|(k, (d, c, n))| (k, d, c, n))
        .collect();
    all.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    if all.len() > SERIES {
        let rest = all.split_off(SERIES - 1);
        let mut other = ("other".to_string(), vec![0; DAYS as usize], 0, 0);
        for (_, d, c, n) in rest {
            for (o, v) in other.1.iter_mut().zip(d) {
                *o += v;
            }
            other.2 += c;
            other.3 += n;
        }
        all.push(other);
    }
    all
}

fn line_chart(title: &str, series: &[(String, Vec<i64>, i64, i64)], first_day: i64) -> String {
    let (w, h, left, bottom, top) = (760.0_f64, 260.0_f64, 70.0_f64, 30.0_f64, 10.0_f64);
    let max = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let x = |i: usize| left + (w - left - 10.0) * (i as f64) / ((DAYS - 1) as f64);
    let y = |v: i64| top + (h - top - bottom) * (1.0 - (v as f64) / (max as f64));
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"chart\" role=\"img\" aria-label=\"{t}\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" xmlns=\"http://www.w3.org/2000/svg\">",
        t = esc(title)
    );
    for k in 0..=4 {
        let v = max * k / 4;
        let yy = y(v);
        let _ = write!(
            s,
            "<line x1=\"{left}\" x2=\"{x2}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#e5e7eb\"/><text x=\"{tx}\" y=\"{ty:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#6b7280\">{label}</text>",
            x2 = w - 10.0,
            tx = left - 6.0,
            ty = yy + 4.0,
            label = usd(v)
        );
    }
    for i in (0..DAYS as usize).step_by(5) {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#6b7280\">{}</text>",
            x(i),
            h - 10.0,
            day_label(first_day + i as i64 * DAY)
        );
    }
    for (n, (key, days, total, _)) in series.iter().enumerate() {
        let color = COLORS[n % COLORS.len()];
        let pts: Vec<String> = days
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect();
        let _ = write!(
            s,
            "<polyline class=\"series\" data-key=\"{k}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{p}\"><title>{k}: {t}</title></polyline>",
            k = esc(key),
            p = pts.join(" "),
            t = usd(*total)
        );
        for (i, v) in days.iter().enumerate().filter(|(_, v)| **v > 0) {
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"><title>{} {}: {}</title></circle>",
                x(i),
                y(*v),
                esc(key),
                day_label(first_day + i as i64 * DAY),
                usd(*v)
            );
        }
    }
    s.push_str("</svg>");
    s
}

fn section(title: &str, id: &str, rows: &[SpendRow], first_day: i64) -> String {
    let series = series(rows, first_day);
    let mut s = format!("<section id=\"{id}\"><h2>Spend per {}</h2>", esc(title));
    if series.is_empty() {
        s.push_str("<p class=\"empty\">No spend recorded in the last 30 days.</p></section>");
        return s;
    }
    s.push_str(&line_chart(
        &format!("Daily spend per {title}"),
        &series,
        first_day,
    ));
    s.push_str("<ul class=\"legend\">");
    for (n, (key, _, total, _)) in series.iter().enumerate() {
        let _ = write!(
            s,
            "<li><span class=\"swatch\" style=\"background:{}\"></span>{} <b>{}</b></li>",
            COLORS[n % COLORS.len()],
            esc(key),
            usd(*total)
        );
    }
    s.push_str("</ul><table><thead><tr><th>");
    s.push_str(&esc(title));
    s.push_str("</th><th>requests</th><th>30-day spend</th></tr></thead><tbody>");
    let mut totals: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for r in rows {
        let e = totals.entry(&r.key).or_default();
        e.0 += r.requests;
        e.1 += r.cost_nanos;
    }
    let mut totals: Vec<_> = totals.into_iter().collect();
    totals.sort_by(|a, b| b.1.1.cmp(&a.1.1).then_with(|| a.0.cmp(b.0)));
    for (key, (req, cost)) in totals.iter().take(50) {
        let _ = write!(
            s,
            "<tr><td>{}</td><td class=\"num\">{req}</td><td class=\"num\">{}</td></tr>",
            esc(key),
            usd(*cost)
        );
    }
    s.push_str("</tbody></table></section>");
    s
}

/// How many Codex sessions the dashboard lists.
const TOP_SESSIONS: usize = 10;

/// The costliest Codex sessions of the window (rows grouped by session; requests without one left out).
fn sessions_section(rows: &[crate::governance::store::ReportRow]) -> String {
    let mut top: Vec<&crate::governance::store::ReportRow> = rows
        .iter()
        .filter(|r| r.key.as_deref().is_some_and(|k| !k.is_empty()))
        .collect();
    top.sort_by(|a, b| {
        b.sums
            .cost_nanos
            .cmp(&a.sums.cost_nanos)
            .then(a.key.cmp(&b.key))
    });
    top.truncate(TOP_SESSIONS);
    let mut s = String::from("<section id=\"sessions\"><h2>Top Codex sessions by cost</h2>");
    if top.is_empty() {
        s.push_str("<p class=\"empty\">No Codex sessions in this window.</p></section>");
        return s;
    }
    s.push_str(
        "<table><thead><tr><th>session</th><th>requests</th><th>input tokens</th><th>output tokens</th><th>cost</th></tr></thead><tbody>",
    );
    for r in top {
        let _ = write!(
            s,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(r.key.as_deref().unwrap_or_default()),
            r.sums.requests,
            r.sums.input_tokens,
            r.sums.output_tokens,
            usd(r.sums.cost_nanos)
        );
    }
    s.push_str("</tbody></table></section>");
    s
}

fn budgets_section(budgets: &[BudgetUse]) -> String {
    let mut s = String::from("<section id=\"budgets\"><h2>Budgets used</h2>");
    if budgets.is_empty() {
        s.push_str("<p class=\"empty\">No budgets configured.</p></section>");
        return s;
    }
    let row_h = 28.0;
    let h = row_h * budgets.len() as f64 + 10.0;
    let _ = write!(
        s,
        "<svg class=\"chart\" role=\"img\" aria-label=\"Budgets used\" viewBox=\"0 0 900 {h}\" width=\"900\" height=\"{h}\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    for (i, b) in budgets.iter().enumerate() {
        let pct = if b.limit_nanos > 0 {
            (b.used_nanos.max(0) as f64 / b.limit_nanos as f64 * 100.0).min(100.0)
        } else {
            0.0
        };
        let color = if pct >= 90.0 {
            "#dc2626"
        } else if pct >= 70.0 {
            "#d97706"
        } else {
            "#16a34a"
        };
        let y = i as f64 * row_h + 5.0;
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{ty:.1}\" font-size=\"12\">{id} ({scope}, {window})</text>\
             <rect x=\"300\" y=\"{y:.1}\" width=\"360\" height=\"18\" fill=\"#e5e7eb\"/>\
             <rect class=\"budget\" data-budget=\"{id}\" data-scope=\"{scope}\" x=\"300\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"18\" fill=\"{color}\"><title>{id}: {used} of {limit}</title></rect>\
             <text x=\"668\" y=\"{ty:.1}\" font-size=\"12\">{pct:.0}% · {used} / {limit}</text>",
            ty = y + 14.0,
            id = esc(&b.id),
            scope = esc(&b.scope),
            window = esc(&b.window),
            bw = 360.0 * pct / 100.0,
            used = usd(b.used_nanos),
            limit = usd(b.limit_nanos),
        );
        // Alert thresholds and the soft limit, as ticks across the bar (dashed: the soft limit).
        for (label, at) in &b.marks {
            if b.limit_nanos <= 0 {
                break;
            }
            let x = 300.0 + 360.0 * (*at as f64 / b.limit_nanos as f64).clamp(0.0, 1.0);
            let dash = if label == "soft" {
                " stroke-dasharray=\"3,2\""
            } else {
                ""
            };
            let _ = write!(
                s,
                "<line class=\"threshold\" data-budget=\"{id}\" data-threshold=\"{l}\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{y1:.1}\" y2=\"{y2:.1}\" stroke=\"#111827\" stroke-width=\"1.5\"{dash}><title>{id}: {l} at {at}</title></line>",
                id = esc(&b.id),
                l = esc(label),
                y1 = y - 2.0,
                y2 = y + 20.0,
                at = usd(*at),
            );
        }
    }
    s.push_str("</svg></section>");
    s
}

/// Current-window spend (settled + in flight) of every configured budget, for the subjects that spent in
/// the last 30 days (or the one subject a budget is pinned to).
async fn budgets_used(
    app: &AppState,
    seen: &BTreeMap<&'static str, Vec<String>>,
) -> Vec<BudgetUse> {
    use crate::config::Scope;
    use crate::governance::store::CounterKey;
    let now = app.clock().now_secs();
    let mut rows = Vec::new();
    let mut keys = Vec::new();
    for b in app.budgets() {
        let subjects: Vec<String> = match (&b.matches, b.scope) {
            (Some(m), _) => vec![m.clone()],
            (None, Scope::Principal) => seen.get("principal").cloned().unwrap_or_default(),
            (None, Scope::Team) => seen.get("team").cloned().unwrap_or_default(),
            _ => Vec::new(),
        };
        for subject in subjects.into_iter().filter(|s| s != "(none)").take(20) {
            keys.push(CounterKey {
                budget_id: b.id.clone(),
                subject: subject.clone(),
                period_start: b.window.period(now).0,
            });
            rows.push((b, subject));
        }
    }
    if keys.is_empty() {
        return Vec::new();
    }
    let counters = match app.governance().store.counters(&keys).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: budget counters unavailable");
            return Vec::new();
        }
    };
    rows.into_iter()
        .zip(keys.iter().zip(counters))
        .map(|((b, subject), (key, (spent, reserved)))| BudgetUse {
            id: b.id.clone(),
            scope: format!("{}:{subject}", b.scope.as_str()),
            window: b.window.as_str().to_string(),
            // Settled plus in flight: this replica's own free allotment is reserved but not in flight.
            used_nanos: spent + (reserved - app.governance().free_allotment(key)).max(0),
            limit_nanos: b.amount.0,
            marks: crate::governance::alerts::marks(b)
                .into_iter()
                .map(|m| (m.label(), m.at(b)))
                .collect(),
        })
        .collect()
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#111827;max-width:1000px}\
h1{font-size:22px}h2{font-size:17px;margin-top:28px}table{border-collapse:collapse;margin-top:8px}\
td,th{padding:3px 12px;border-bottom:1px solid #e5e7eb;text-align:left}.num{text-align:right;font-variant-numeric:tabular-nums}\
.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:14px;font-size:13px}\
.swatch{display:inline-block;width:10px;height:10px;margin-right:5px;border-radius:2px}.empty{color:#6b7280}\
.meta{color:#6b7280;font-size:13px}";

/// `GET /admin/dashboard`.
pub async fn page(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    require_browser(&app, &headers)?;
    if let Some(a) = &app.audit() {
        a.flush().await;
    }
    let sink = audit_sink(&app)?;
    let now = now_i64(&app);
    let first_day = (now / DAY) * DAY - (DAYS - 1) * DAY;
    let mut body = String::new();
    let mut total = 0i64;
    let mut seen: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for (by, title, id) in [
        (GroupBy::Team, "team", "team"),
        (GroupBy::Principal, "principal", "principal"),
        (GroupBy::Model, "model", "model"),
    ] {
        let rows = sink
            .spend(by, first_day, now + 1)
            .await
            .map_err(AdminError::store)?;
        if by == GroupBy::Team {
            total = rows.iter().map(|r| r.cost_nanos).sum();
        }
        let mut keys: Vec<String> = rows.iter().map(|r| r.key.clone()).collect();
        keys.sort();
        keys.dedup();
        seen.insert(title, keys);
        body.push_str(&section(title, id, &rows, first_day));
    }
    body.push_str(&budgets_section(&budgets_used(&app, &seen).await));
    let sessions = app
        .governance()
        .store
        .report(&crate::governance::store::ReportQuery {
            from: first_day,
            to: now + 1,
            by_day: false,
            by: Some(crate::governance::store::Dimension::Session),
        })
        .await
        .map_err(AdminError::store)?;
    body.push_str(&sessions_section(&sessions));
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Tollgate spend</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>{CSS}</style></head><body>\
         <h1>Tollgate spend</h1><p class=\"meta\">Last 30 days (UTC) · total <b id=\"total\">{}</b> · rendered {}</p>{body}</body></html>",
        usd(total),
        time::OffsetDateTime::from_unix_timestamp(now)
            .ok()
            .and_then(|t| t
                .format(&time::format_description::well_known::Rfc3339)
                .ok())
            .unwrap_or_default()
    );
    let mut r = axum::response::Html(html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src 'self'"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_sessions_by_cost_escaped_and_bounded() {
        use crate::governance::store::ReportRow;
        let row = |k: Option<&str>, cost: i64| ReportRow {
            key: k.map(str::to_string),
            sums: crate::governance::store::Sums {
                requests: 1,
                cost_nanos: cost,
                ..Default::default()
            },
            ..ReportRow::default()
        };
        let mut rows: Vec<ReportRow> = (0..15).map(|i| row(Some(&format!("s{i:02}")), i)).collect();
        rows.push(row(None, 1_000_000));
        rows.push(row(Some(""), 1_000_000));
        rows.push(row(Some("<b>x</b>"), 500));
        let html = sessions_section(&rows);
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;"), "escaped: {html}");
        assert!(!html.contains("<b>x</b>"));
        let first = html.find("&lt;b&gt;").expect("costliest listed");
        assert!(first < html.find("s14").expect("s14"), "sorted by cost");
        assert_eq!(html.matches("<tr><td>").count(), TOP_SESSIONS);
        assert!(!html.contains("s04"), "only the top ten");
        assert!(sessions_section(&[]).contains("No Codex sessions"));
    }

    #[test]
    fn money_and_escaping() {
        assert_eq!(usd(1_234_567_890), "$1.2345");
        assert_eq!(usd(50_000), "$0.0000");
        assert_eq!(usd(-2_000_000_000), "-$2.0000");
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn budgets_render_as_bars() {
        let html = budgets_section(&[
            BudgetUse {
                id: "payments-monthly".into(),
                scope: "team:payments".into(),
                window: "monthly".into(),
                used_nanos: 75_000_000_000,
                limit_nanos: 100_000_000_000,
                marks: vec![
                    ("soft".into(), 40_000_000_000),
                    ("80%".into(), 80_000_000_000),
                ],
            },
            BudgetUse {
                id: "<ci>".into(),
                scope: "org:acme".into(),
                window: "daily".into(),
                used_nanos: 200_000_000_000,
                limit_nanos: 100_000_000_000,
                marks: vec![],
            },
        ]);
        assert!(html.contains("data-budget=\"payments-monthly\""));
        assert!(html.contains("75% · $75.0000 / $100.0000"));
        assert!(
            html.contains("100% · $200.0000"),
            "over budget is clamped to a full bar"
        );
        assert!(html.contains("&lt;ci&gt;") && !html.contains("<ci>"));
        // Thresholds are drawn where they fall on the bar: 80% of 360 px from x = 300.
        assert!(
            html.contains("data-threshold=\"80%\" x1=\"588.0\""),
            "{html}"
        );
        assert!(html.contains("data-threshold=\"soft\" x1=\"444.0\""));
        assert!(
            html.contains("stroke-dasharray"),
            "the soft limit is dashed"
        );
        assert_eq!(html.matches("class=\"threshold\"").count(), 2);
        assert!(budgets_section(&[]).contains("No budgets configured."));
    }

    #[test]
    fn series_folds_the_tail_into_other() {
        let rows: Vec<SpendRow> = (0..9)
            .map(|i| SpendRow {
                day: 0,
                key: format!("k{i}"),
                requests: 1,
                input_tokens: 0,
                output_tokens: 0,
                cost_nanos: 100 * (i + 1),
            })
            .collect();
        let s = series(&rows, 0);
        assert_eq!(s.len(), SERIES);
        assert_eq!(s[0].0, "k8");
        assert_eq!(s.last().map(|x| x.0.as_str()), Some("other"));
        assert_eq!(s.last().map(|x| x.2), Some(100 + 200 + 300 + 400));
    }
}
