//! Spend reports: settled spend and tokens by UTC day × principal / team / org / model / provider over a
//! date range, summed by the store from its `spend` table (so every replica answers with the same numbers),
//! rendered as JSON, CSV or a text table.
//!
//! Money stays integer: every row carries `cost_nanos`, and `cost_usd` is the same amount as an exact
//! decimal string with nine places (no float ever touches it, so a spreadsheet's sum of the CSV is exact).

use super::store::{Dimension, ReportQuery, ReportRow, SessionUsage, Store, StoreError, Sums};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

const DAY: i64 = 86_400;
/// The longest range one report covers, in days (a year and a bit: enough for any invoice period).
pub const MAX_DAYS: i64 = 400;
/// Days covered when `from` is not given.
pub const DEFAULT_DAYS: i64 = 30;

/// How a report is grouped: by UTC day, and/or by one dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grouping {
    pub by_day: bool,
    pub by: Option<Dimension>,
}

impl Grouping {
    /// `day`, `principal`, `day,team`, … (at most one dimension besides `day`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut g = Grouping {
            by_day: false,
            by: None,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "day" {
                g.by_day = true;
            } else if let Some(d) = Dimension::parse(part) {
                if g.by.is_some_and(|b| b != d) {
                    return Err(format!(
                        "by: group by day and at most one of {} (got {s:?})",
                        dimension_names()
                    ));
                }
                g.by = Some(d);
            } else {
                return Err(format!(
                    "by: unknown grouping {part:?} (use day, {}; e.g. by=day,team)",
                    dimension_names()
                ));
            }
        }
        Ok(g)
    }

    /// The column names, in order: `day` first, then the dimension.
    pub fn columns(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.by_day {
            c.push("day");
        }
        if let Some(d) = self.by {
            c.push(d.as_str());
        }
        c
    }
}

/// `principal, team, org, model, provider, session, request_kind`.
fn dimension_names() -> String {
    Dimension::ALL.map(Dimension::as_str).join(", ")
}

/// `YYYY-MM-DD` → the Unix second that UTC day starts.
pub fn parse_day(s: &str) -> Option<i64> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s.trim(), fmt)
        .ok()
        .map(|d| d.midnight().assume_utc().unix_timestamp())
}

/// The UTC day (`YYYY-MM-DD`) a Unix second falls in.
pub fn day_string(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs.div_euclid(DAY) * DAY)
        .map(|t| {
            let d = t.date();
            format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
        })
        .unwrap_or_default()
}

/// Nano-dollars as an exact USD decimal with nine places: `1234567890` → `1.234567890`.
pub fn usd9(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    format!("{sign}{}.{:09}", n / 1_000_000_000, n % 1_000_000_000)
}

/// A report request as given (dates inclusive, `YYYY-MM-DD`), before validation.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ReportParams {
    pub from: Option<String>,
    pub to: Option<String>,
    pub by: Option<String>,
    pub format: Option<String>,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

/// A validated report request: the days `[from, to]` (both inclusive), the grouping and the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportRequest {
    pub from_day: i64,
    pub to_day: i64,
    pub grouping: Grouping,
    pub format: Format,
}

impl ReportParams {
    /// Validate against `now` (Unix seconds): `to` defaults to today, `from` to 29 days before `to`.
    pub fn validate(&self, now: i64) -> Result<ReportRequest, String> {
        let day = |v: &Option<String>, name: &str| -> Result<Option<i64>, String> {
            v.as_deref()
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    parse_day(s).ok_or_else(|| format!("{name}: expected YYYY-MM-DD, got {s:?}"))
                })
                .transpose()
        };
        let to_day = day(&self.to, "to")?.unwrap_or(now.div_euclid(DAY) * DAY);
        let from_day = day(&self.from, "from")?.unwrap_or(to_day - (DEFAULT_DAYS - 1) * DAY);
        if from_day > to_day {
            return Err(format!(
                "from ({}) is after to ({})",
                day_string(from_day),
                day_string(to_day)
            ));
        }
        if (to_day - from_day) / DAY + 1 > MAX_DAYS {
            return Err(format!("a report covers at most {MAX_DAYS} days"));
        }
        let grouping = Grouping::parse(self.by.as_deref().unwrap_or("day"))?;
        let format = match self.format.as_deref().unwrap_or("json") {
            "json" => Format::Json,
            "csv" => Format::Csv,
            other => return Err(format!("format: use json or csv (got {other:?})")),
        };
        Ok(ReportRequest {
            from_day,
            to_day,
            grouping,
            format,
        })
    }
}

/// Sums of a report line, a session group or a total, with the cost in dollars beside the nano-dollars.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    #[serde(flatten)]
    pub sums: Sums,
    pub cost_usd: String,
}

impl From<Sums> for Totals {
    fn from(sums: Sums) -> Self {
        Totals {
            sums,
            cost_usd: usd9(sums.cost_nanos),
        }
    }
}

impl Totals {
    /// Add a group's sums (the dollars follow).
    fn add(&mut self, s: &Sums) {
        self.sums.add(s);
        self.cost_usd = usd9(self.sums.cost_nanos);
    }
}

/// A report's numbers are its [`Sums`]; `cost_usd` only renders one of them.
impl std::ops::Deref for Totals {
    type Target = Sums;
    fn deref(&self) -> &Sums {
        &self.sums
    }
}

/// One line of a report: the group (`day` as `YYYY-MM-DD`; the dimension's value, `Some(None)` for requests
/// without one, e.g. no team) and the sums.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub day: Option<String>,
    pub group: Option<Option<String>>,
    pub sums: Totals,
}

/// A spend report as served by `GET /admin/v1/report` (see [`Report::to_json`] for its JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// First day, inclusive.
    pub from: String,
    /// Last day, inclusive.
    pub to: String,
    /// The grouping columns (`day` and/or the dimension).
    pub by: Vec<String>,
    pub rows: Vec<Line>,
    pub totals: Totals,
}

impl Report {
    /// Run the report against the store.
    pub async fn run(store: &dyn Store, req: &ReportRequest) -> Result<Report, StoreError> {
        let q = ReportQuery {
            from: req.from_day,
            to: req.to_day + DAY,
            by_day: req.grouping.by_day,
            by: req.grouping.by,
        };
        let rows = store.report(&q).await?;
        Ok(Self::from_rows(req, &rows))
    }

    pub fn from_rows(req: &ReportRequest, rows: &[ReportRow]) -> Report {
        let mut totals = Totals::from(Sums::default());
        let mut lines = Vec::with_capacity(rows.len());
        for r in rows {
            totals.add(&r.sums);
            if r.sums.requests == 0 {
                // The ungrouped query answers one all-zero row over an empty range.
                continue;
            }
            lines.push(Line {
                day: r.day.map(day_string),
                group: req.grouping.by.map(|_| r.key.clone()),
                sums: Totals::from(r.sums),
            });
        }
        Report {
            from: day_string(req.from_day),
            to: day_string(req.to_day),
            by: req
                .grouping
                .columns()
                .into_iter()
                .map(String::from)
                .collect(),
            rows: lines,
            totals,
        }
    }

    /// The dimension's column name, if grouped by one.
    fn dimension(&self) -> Option<&str> {
        self.by.iter().map(String::as_str).find(|c| *c != "day")
    }

    fn has_day(&self) -> bool {
        self.by.iter().any(|c| c == "day")
    }

    /// JSON: `{from, to, by, rows: [{day, <dimension>, requests, …, cost_nanos, cost_usd}], totals}`.
    pub fn to_json(&self) -> serde_json::Value {
        let dim = self.dimension().map(str::to_string);
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|l| {
                let mut m = serde_json::Map::new();
                if let Some(d) = &l.day {
                    m.insert("day".into(), d.clone().into());
                }
                if let (Some(name), Some(g)) = (&dim, &l.group) {
                    m.insert(name.clone(), g.clone().into());
                }
                if let Ok(serde_json::Value::Object(s)) = serde_json::to_value(&l.sums) {
                    m.extend(s);
                }
                serde_json::Value::Object(m)
            })
            .collect();
        serde_json::json!({
            "from": self.from,
            "to": self.to,
            "by": self.by,
            "rows": rows,
            "totals": self.totals,
        })
    }

    /// The inverse of [`Report::to_json`] (the CLI reads the API's JSON back).
    pub fn from_json(v: &serde_json::Value) -> Option<Report> {
        let by: Vec<String> = serde_json::from_value(v.get("by")?.clone()).ok()?;
        let dim = by.iter().find(|c| *c != "day").cloned();
        let rows = v
            .get("rows")?
            .as_array()?
            .iter()
            .map(|r| {
                Some(Line {
                    day: r.get("day").and_then(|d| d.as_str()).map(String::from),
                    group: dim
                        .as_ref()
                        .map(|d| r.get(d.as_str()).and_then(|g| g.as_str()).map(String::from)),
                    sums: serde_json::from_value(r.clone()).ok()?,
                })
            })
            .collect::<Option<Vec<Line>>>()?;
        Some(Report {
            from: v.get("from")?.as_str()?.to_string(),
            to: v.get("to")?.as_str()?.to_string(),
            by,
            rows,
            totals: serde_json::from_value(v.get("totals")?.clone()).ok()?,
        })
    }

    const METRICS: [&'static str; 10] = [
        "requests",
        "input_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
        "estimated_requests",
        "estimated_cost_nanos",
        "cost_usd",
        "cost_nanos",
    ];

    /// The cells of a text table: requests … reasoning, then cost_usd (estimated charges are a note under
    /// the table).
    fn table_cells(t: &Totals) -> Vec<String> {
        let m = Self::metric_cells(t);
        m[..6]
            .iter()
            .cloned()
            .chain(std::iter::once(m[8].clone()))
            .collect()
    }

    fn metric_cells(t: &Totals) -> [String; 10] {
        [
            t.requests.to_string(),
            t.input_tokens.to_string(),
            t.cached_input_tokens.to_string(),
            t.cache_write_tokens.to_string(),
            t.output_tokens.to_string(),
            t.reasoning_tokens.to_string(),
            t.estimated_requests.to_string(),
            t.estimated_cost_nanos.to_string(),
            t.cost_usd.clone(),
            t.cost_nanos.to_string(),
        ]
    }

    fn group_cells(&self, l: &Line) -> Vec<String> {
        let mut c = Vec::new();
        if self.has_day() {
            c.push(l.day.clone().unwrap_or_default());
        }
        if self.dimension().is_some() {
            c.push(l.group.clone().flatten().unwrap_or_default());
        }
        c
    }

    /// CSV (RFC 4180): a header, one line per row, no totals line (a spreadsheet sums the columns).
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        let header: Vec<&str> = self
            .by
            .iter()
            .map(String::as_str)
            .chain(Self::METRICS)
            .collect();
        out.push_str(&header.join(","));
        out.push_str("\r\n");
        for l in &self.rows {
            let cells: Vec<String> = self
                .group_cells(l)
                .iter()
                .map(|c| csv_cell(c))
                .chain(Self::metric_cells(&l.sums))
                .collect();
            out.push_str(&cells.join(","));
            out.push_str("\r\n");
        }
        out
    }

    /// An aligned text table with a totals line (the CLI's default).
    pub fn to_table(&self) -> String {
        let headers: Vec<String> = self
            .by
            .iter()
            .cloned()
            .chain(
                [
                    "requests",
                    "input",
                    "cached",
                    "cache_write",
                    "output",
                    "reasoning",
                    "cost_usd",
                ]
                .map(String::from),
            )
            .collect();
        let cells = |g: Vec<String>, t: &Totals| -> Vec<String> {
            g.into_iter().chain(Self::table_cells(t)).collect()
        };
        let mut rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|l| {
                let mut g = self.group_cells(l);
                if let Some(last) = g.last_mut()
                    && last.is_empty()
                    && self.dimension().is_some()
                {
                    *last = "(none)".into();
                }
                cells(g, &l.sums)
            })
            .collect();
        let ngroups = self.by.len();
        let mut total_group = vec![String::new(); ngroups];
        if let Some(first) = total_group.first_mut() {
            *first = "total".into();
        }
        let total = cells(total_group, &self.totals);
        let mut widths: Vec<usize> = headers.iter().map(String::len).collect();
        for r in rows.iter().chain(std::iter::once(&total)) {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, r: &[String]| {
            let mut s = String::new();
            for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                if i < ngroups {
                    let _ = write!(s, "{c:<w$}");
                } else {
                    let _ = write!(s, "{c:>w$}");
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        let _ = writeln!(out, "Spend {} to {} (UTC, inclusive)", self.from, self.to);
        line(&mut out, &headers);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&mut out, &rule);
        for r in rows.drain(..) {
            line(&mut out, &r);
        }
        line(&mut out, &rule);
        line(&mut out, &total);
        if self.totals.estimated_requests > 0 {
            let _ = writeln!(
                out,
                "of which {} request(s), {} USD, charged their reserved estimate (their broker died before settling them)",
                self.totals.estimated_requests,
                usd9(self.totals.estimated_cost_nanos)
            );
        }
        out
    }
}

/// One Codex session's spend, as served by `GET /admin/v1/sessions/{session_id}`: the split by
/// `request_kind` × `subagent`, what compaction and sub-agents cost, and the session's totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReport {
    pub session_id: String,
    pub first_settled_at: Option<i64>,
    pub last_settled_at: Option<i64>,
    /// Distinct threads (root agent and sub-agents) and turns.
    pub threads: i64,
    pub turns: i64,
    /// Who sent requests with this session id (normally one principal).
    pub principals: Vec<String>,
    pub rows: Vec<SessionLine>,
    /// The rows with `request_kind` `compaction`, summed.
    pub compaction: Totals,
    /// The rows sent by a sub-agent (any `subagent`), summed.
    pub subagents: Totals,
    pub totals: Totals,
}

/// One (`request_kind`, `subagent`) group of a session; `null` where requests carried none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLine {
    pub request_kind: Option<String>,
    pub subagent: Option<String>,
    #[serde(flatten)]
    pub sums: Totals,
}

impl SessionReport {
    pub fn new(session_id: &str, u: SessionUsage) -> Self {
        let mut r = SessionReport {
            session_id: session_id.to_string(),
            first_settled_at: u.first_settled_at,
            last_settled_at: u.last_settled_at,
            threads: u.threads,
            turns: u.turns,
            principals: u.principals,
            rows: Vec::with_capacity(u.rows.len()),
            compaction: Totals::from(Sums::default()),
            subagents: Totals::from(Sums::default()),
            totals: Totals::from(Sums::default()),
        };
        for row in u.rows {
            r.totals.add(&row.sums);
            if row.request_kind.as_deref() == Some("compaction") {
                r.compaction.add(&row.sums);
            }
            if row.subagent.is_some() {
                r.subagents.add(&row.sums);
            }
            r.rows.push(SessionLine {
                request_kind: row.request_kind,
                subagent: row.subagent,
                sums: Totals::from(row.sums),
            });
        }
        r
    }

    /// An aligned text table (the CLI's default), with the compaction, sub-agent and total lines.
    pub fn to_table(&self) -> String {
        let when = |t: Option<i64>| {
            t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| "-".into())
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Session {}: {} requests, {} threads, {} turns, {} to {}",
            self.session_id,
            self.totals.requests,
            self.threads,
            self.turns,
            when(self.first_settled_at),
            when(self.last_settled_at)
        );
        let _ = writeln!(out, "Principals: {}", self.principals.join(", "));
        let headers = [
            "request_kind",
            "subagent",
            "requests",
            "input",
            "cached",
            "cache_write",
            "output",
            "reasoning",
            "cost_usd",
        ];
        let cells = |a: &str, b: &str, t: &Totals| -> Vec<String> {
            let mut c = vec![a.to_string(), b.to_string()];
            c.extend(Report::table_cells(t));
            c
        };
        let body: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|l| {
                cells(
                    l.request_kind.as_deref().unwrap_or("(none)"),
                    l.subagent.as_deref().unwrap_or("-"),
                    &l.sums,
                )
            })
            .collect();
        let foot = [
            cells("compaction", "", &self.compaction),
            cells("sub-agents", "", &self.subagents),
            cells("total", "", &self.totals),
        ];
        let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
        for r in body.iter().chain(foot.iter()) {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |out: &mut String, r: &[String]| {
            let mut s = String::new();
            for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                if i < 2 {
                    let _ = write!(s, "{c:<w$}");
                } else {
                    let _ = write!(s, "{c:>w$}");
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(&mut out, &headers.map(String::from));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&mut out, &rule);
        for r in &body {
            line(&mut out, r);
        }
        line(&mut out, &rule);
        for r in &foot {
            line(&mut out, r);
        }
        out
    }
}

/// One CSV cell: quoted when it holds a comma, a quote or a line break (RFC 4180), and prefixed with `'`
/// when it starts like a spreadsheet formula (names come from identities, which the operator does not
/// choose).
fn csv_cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(by: &str) -> ReportRequest {
        ReportParams {
            from: Some("2026-11-01".into()),
            to: Some("2026-11-30".into()),
            by: Some(by.into()),
            format: None,
        }
        .validate(0)
        .expect("valid")
    }

    fn row(day: Option<i64>, key: Option<&str>, n: i64, cost: i64) -> ReportRow {
        ReportRow {
            day,
            key: key.map(String::from),
            sums: Sums {
                requests: n,
                input_tokens: 10 * n,
                cached_input_tokens: n,
                cache_write_tokens: 0,
                output_tokens: 5 * n,
                reasoning_tokens: 2 * n,
                cost_nanos: cost,
                estimated_requests: 0,
                estimated_cost_nanos: 0,
            },
        }
    }

    #[test]
    fn params_validate_with_defaults_and_refuse_nonsense() {
        let now = 1_795_564_800 + 3_600; // 2026-11-25T01:00Z
        let r = ReportParams::default().validate(now).expect("defaults");
        assert_eq!(day_string(r.to_day), "2026-11-25");
        assert_eq!(day_string(r.from_day), "2026-10-27");
        assert_eq!(
            r.grouping,
            Grouping {
                by_day: true,
                by: None
            }
        );
        assert_eq!(r.format, Format::Json);
        let r = req("day,team");
        assert_eq!(r.grouping.by, Some(Dimension::Team));
        assert_eq!((r.to_day - r.from_day) / DAY, 29);
        for (p, want) in [
            (("2026-11-30", "2026-11-01", "day"), "after"),
            (
                ("2026-11-01", "2026-13-01", "day"),
                "to: expected YYYY-MM-DD",
            ),
            (("2024-01-01", "2026-01-01", "day"), "at most 400 days"),
            (
                ("2026-11-01", "2026-11-02", "day,colour"),
                "unknown grouping",
            ),
            (("2026-11-01", "2026-11-02", "team,model"), "at most one"),
        ] {
            let e = ReportParams {
                from: Some(p.0.into()),
                to: Some(p.1.into()),
                by: Some(p.2.into()),
                format: None,
            }
            .validate(now)
            .expect_err("invalid");
            assert!(e.contains(want), "{e}");
        }
        let e = ReportParams {
            format: Some("xml".into()),
            ..Default::default()
        }
        .validate(now)
        .expect_err("format");
        assert!(e.contains("json or csv"), "{e}");
    }

    #[test]
    fn renders_json_csv_and_table_from_the_same_rows() {
        let d1 = parse_day("2026-11-01").expect("day");
        let rows = vec![
            row(Some(d1), Some("payments"), 3, 1_500_000_001),
            row(Some(d1), None, 1, 7),
            row(Some(d1 + DAY), Some("=cmd,\"x\""), 2, 20),
        ];
        let r = Report::from_rows(&req("day,team"), &rows);
        assert_eq!(r.totals.requests, 6);
        assert_eq!(r.totals.cost_nanos, 1_500_000_028);
        assert_eq!(r.totals.cost_usd, "1.500000028");
        let j = r.to_json();
        assert_eq!(j["rows"][0]["day"], "2026-11-01");
        assert_eq!(j["rows"][0]["team"], "payments");
        assert_eq!(j["rows"][0]["cost_usd"], "1.500000001");
        assert_eq!(j["rows"][1]["team"], serde_json::Value::Null);
        assert_eq!(j["totals"]["cost_nanos"], 1_500_000_028i64);
        assert_eq!(Report::from_json(&j), Some(r.clone()), "round trip");
        let csv = r.to_csv();
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(
            lines[0],
            "day,team,requests,input_tokens,cached_input_tokens,cache_write_tokens,output_tokens,reasoning_tokens,estimated_requests,estimated_cost_nanos,cost_usd,cost_nanos"
        );
        assert_eq!(
            lines[1],
            "2026-11-01,payments,3,30,3,0,15,6,0,0,1.500000001,1500000001"
        );
        assert_eq!(lines[2], "2026-11-01,,1,10,1,0,5,2,0,0,0.000000007,7");
        assert_eq!(
            lines[3],
            "2026-11-02,\"'=cmd,\"\"x\"\"\",2,20,2,0,10,4,0,0,0.000000020,20"
        );
        let t = r.to_table();
        assert!(t.contains("(none)"), "{t}");
        let last = t.lines().last().expect("total line");
        assert!(
            last.starts_with("total") && last.ends_with("1.500000028"),
            "{last}"
        );
    }

    #[test]
    fn usd9_is_exact() {
        assert_eq!(usd9(0), "0.000000000");
        assert_eq!(usd9(1), "0.000000001");
        assert_eq!(usd9(12_345_678_901), "12.345678901");
        assert_eq!(usd9(-5), "-0.000000005");
    }
}
