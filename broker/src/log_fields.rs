//! The log's lines, written without `core::fmt` and `serde`'s adaptors where the values allow it.
//!
//! The settler logs one "request finished" line with ~20 fields per request. `tracing-subscriber`'s
//! [`DefaultFields`](tracing_subscriber::fmt::format::DefaultFields) writes every field through
//! `write!` with two styled pieces (the name and `=`), styled even when colours are off: ~510
//! instructions a field, ~15 k a request, 4 % of the broker's instructions (issue #19,
//! docs/benchmarks.md). [`TextFields`] writes the same text: plain strings, integers and booleans
//! directly, `%`/`?` values through their own formatting only, everything else (the message, errors,
//! floats, strings that need escapes) through the default visitor. The test
//! `text_fields_write_what_the_default_writes` holds the two equal over generated values. Used only
//! when the log has no colours (not a terminal); a terminal keeps the default.
//!
//! The JSON log (`server.log_format = "json"`, as in examples/production) wrote that line through
//! `serde_json` behind an `io::Write`-to-`fmt::Write` adaptor: ~29 k instructions a request. [`JsonLines`]
//! writes the same object for an event outside any span (the settler's lines and most others) and hands
//! the rest (events in a span, records from the `log` crate) to `tracing-subscriber`'s own JSON format.
//! The test `json_lines_write_what_the_default_writes` holds the two equal.

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Format, Json, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// [`FormatFields`](tracing_subscriber::fmt::FormatFields) for the text log without colours.
#[derive(Clone, Copy, Debug, Default)]
pub struct TextFields;

impl<'a> MakeVisitor<Writer<'a>> for TextFields {
    type Visitor = TextVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> TextVisitor<'a> {
        TextVisitor {
            writer: target,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// The visitor of [`TextFields`]: one event's (or span's) fields.
pub struct TextVisitor<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

/// Whether `str`'s `Debug` is the string itself in quotes: printable ASCII but `"` and `\`.
fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

impl TextVisitor<'_> {
    /// The field's name as the default writes it, or None for a field the default skips (`log.*`, the
    /// metadata of a `log` record, already in the line's prefix) or writes in its own way (`message`).
    fn name(field: &Field) -> Option<&'static str> {
        let name = field.name();
        if name == "message" || name.starts_with("log.") {
            return None;
        }
        Some(name.strip_prefix("r#").unwrap_or(name))
    }

    /// `name=` after a space unless it is the first field.
    fn start(&mut self, name: &str) -> fmt::Result {
        if self.is_empty {
            self.is_empty = false;
        } else {
            self.writer.write_char(' ')?;
        }
        self.writer.write_str(name)?;
        self.writer.write_char('=')
    }

    /// The default visitor's way, for everything without a fast path.
    fn default_way(&mut self, field: &Field, f: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut d = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        f(&mut d);
        self.result = d.finish();
        // The default writes every field but `log.*` (the space before the next one depends on it).
        if !field.name().starts_with("log.") {
            self.is_empty = false;
        }
    }

    /// A number or boolean as its text (its `Debug` is its `Display`).
    fn text(&mut self, name: &str, text: &str) {
        if self.result.is_ok() {
            self.result = self.start(name).and_then(|()| self.writer.write_str(text));
        }
    }
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match Self::name(field) {
            Some(name) if plain(value) => {
                if self.result.is_ok() {
                    self.result = self.start(name).and_then(|()| {
                        self.writer.write_char('"')?;
                        self.writer.write_str(value)?;
                        self.writer.write_char('"')
                    });
                }
            }
            _ => self.default_way(field, |d| d.record_str(field, value)),
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        match Self::name(field) {
            Some(name) => self.text(name, itoa::Buffer::new().format(value)),
            None => self.default_way(field, |d| d.record_i64(field, value)),
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match Self::name(field) {
            Some(name) => self.text(name, itoa::Buffer::new().format(value)),
            None => self.default_way(field, |d| d.record_u64(field, value)),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        match Self::name(field) {
            Some(name) => self.text(name, if value { "true" } else { "false" }),
            None => self.default_way(field, |d| d.record_bool(field, value)),
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.default_way(field, |d| d.record_f64(field, value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.default_way(field, |d| d.record_i128(field, value));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.default_way(field, |d| d.record_u128(field, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.default_way(field, |d| d.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match Self::name(field) {
            // `%` and `?` values: their own formatting, without the default's styled name and `=`.
            Some(name) => {
                if self.result.is_ok() {
                    self.result = self
                        .start(name)
                        .and_then(|()| fmt::write(&mut self.writer, format_args!("{value:?}")));
                }
            }
            None => self.default_way(field, |d| d.record_debug(field, value)),
        }
    }
}

impl VisitOutput<fmt::Result> for TextVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for TextVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// The JSON log's [`FormatEvent`]: `{"timestamp":…,"level":…,"fields":{…},"target":…}` as
/// `tracing-subscriber`'s JSON format writes it with its defaults, for an event outside any span; every
/// other event goes to that format itself.
pub struct JsonLines {
    time: bool,
    fallback: Format<Json, SystemTime>,
}

impl JsonLines {
    /// With a timestamp (the log's), or without (tests).
    pub fn new(time: bool) -> Self {
        let fallback = tracing_subscriber::fmt::format().json();
        JsonLines {
            time,
            fallback: if time {
                fallback
            } else {
                fallback.without_time().with_timer(SystemTime)
            },
        }
    }
}

/// `s` as a JSON string, escaped as `serde_json` escapes it (only `"`, `\` and control characters).
fn json_str(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        w.write_char('"')?;
        w.write_str(s)?;
        w.write_char('"')
    } else {
        w.write_str(&serde_json::to_string(s).map_err(|_| fmt::Error)?)
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let in_span = event.parent().is_some() || ctx.lookup_current().is_some();
        // A `log` record's target and level are in its fields (`log.target`, …): the default reads them.
        if in_span || meta.fields().field("log.target").is_some() {
            return self.fallback.format_event(ctx, w, event);
        }
        w.write_char('{')?;
        if self.time {
            let mut ts = String::with_capacity(32);
            SystemTime.format_time(&mut Writer::new(&mut ts))?;
            w.write_str("\"timestamp\":")?;
            json_str(&mut w, &ts)?;
            w.write_char(',')?;
        }
        w.write_str("\"level\":\"")?;
        w.write_str(meta.level().as_str())?;
        w.write_str("\",\"fields\":{")?;
        let mut v = JsonVisitor {
            w: w.by_ref(),
            first: true,
            scratch: String::new(),
            result: Ok(()),
        };
        event.record(&mut v);
        v.result?;
        w.write_str("},\"target\":")?;
        json_str(&mut w, meta.target())?;
        w.write_str("}\n")
    }
}

/// An event's fields as `tracing-serde` writes them: strings, numbers and booleans as themselves,
/// anything else as the string its `Debug` writes.
struct JsonVisitor<'a> {
    w: Writer<'a>,
    first: bool,
    /// A `Debug` value's text, before it is escaped.
    scratch: String,
    result: fmt::Result,
}

impl JsonVisitor<'_> {
    fn entry(
        &mut self,
        field: &Field,
        value: impl FnOnce(&mut Writer<'_>, &mut String) -> fmt::Result,
    ) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.w.write_char(',')?;
            }
            json_str(&mut self.w, field.name())?;
            self.w.write_char(':')?;
            value(&mut self.w, &mut self.scratch)
        })();
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w, _| json_str(w, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w, _| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w, _| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w, _| {
            w.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, |w, _| {
            w.write_str(&serde_json::to_string(&value).map_err(|_| fmt::Error)?)
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |w, scratch| {
            scratch.clear();
            write!(scratch, "{value:?}")?;
            json_str(w, scratch)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    impl Buf {
        fn take(&self) -> String {
            String::from_utf8(std::mem::take(&mut *self.0.lock().expect("buffer"))).expect("utf8")
        }
    }

    #[derive(Debug)]
    struct Failed(String, Option<Box<Failed>>);
    impl fmt::Display for Failed {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Failed {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    /// The values one run of the comparison logs.
    #[derive(Debug)]
    struct Values {
        s: String,
        t: Option<String>,
        i: i64,
        u: u64,
        b: bool,
        f: f64,
        msg: String,
    }

    /// Any values: quotes, backslashes, control and C1 characters, U+2028, non-ASCII, absent options,
    /// any float.
    fn values() -> impl proptest::strategy::Strategy<Value = Values> {
        use proptest::prelude::*;
        (
            "[a-z0-9 \"\\\\'=\u{0}-\u{1f}\u{7f}\u{85}\u{9b}\u{e9}\u{200b}\u{2028}\u{1f600}]{0,16}",
            proptest::option::of("[a-zA-Z0-9_.\"\\\\ \u{1b}]{0,10}"),
            any::<i64>(),
            any::<u64>(),
            any::<bool>(),
            any::<f64>(),
            "[a-z \u{1b}\u{7}\"]{0,8}",
        )
            .prop_map(|(s, t, i, u, b, f, msg)| Values {
                s,
                t,
                i,
                u,
                b,
                f,
                msg,
            })
    }

    /// Every kind of field, in events outside any span and the same events inside one with fields: ten
    /// lines.
    fn emit(v: &Values) {
        let (s, t) = (v.s.as_str(), v.t.as_deref());
        let err = Failed(s.to_string(), Some(Box::new(Failed("inner".into(), None))));
        let events = || {
            tracing::info!(
                request_id = %s,
                principal = s,
                absent = t,
                n = v.i,
                tokens = v.u,
                flag = v.b,
                share = v.f,
                r#type = s,
                shown = ?t,
                error = &err as &(dyn std::error::Error + 'static),
                big = u128::from(v.u) * 3,
                "{} done", v.msg
            );
            tracing::warn!(target: "weird\"target", first = v.i, s);
            tracing::info!(message = s, after = v.u);
            tracing::error!(only = t);
            tracing::debug!("{}", v.msg);
        };
        events();
        tracing::info_span!("settle", batch = v.u, who = s).in_scope(events);
    }

    /// What [`emit`] writes through the subscriber `make` builds around a buffer.
    fn capture<S>(v: &Values, make: impl FnOnce(Buf) -> S) -> String
    where
        S: tracing::Subscriber + Send + Sync + 'static,
    {
        let buf = Buf::default();
        tracing::subscriber::with_default(make(buf.clone()), || emit(v));
        buf.take()
    }

    /// The text log without colours: the default fields, then [`TextFields`].
    fn text_both(v: &Values) -> (String, String) {
        use tracing_subscriber::layer::SubscriberExt;
        let layer = |buf: Buf| {
            tracing_subscriber::fmt::layer()
                .with_writer(buf)
                .with_ansi(false)
                .without_time()
        };
        (
            capture(v, |buf| tracing_subscriber::registry().with(layer(buf))),
            capture(v, |buf| {
                tracing_subscriber::registry().with(layer(buf).fmt_fields(TextFields))
            }),
        )
    }

    /// The JSON log: the default format, then [`JsonLines`].
    fn json_both(v: &Values) -> (String, String) {
        use tracing_subscriber::layer::SubscriberExt;
        let layer = |buf: Buf| {
            tracing_subscriber::fmt::layer()
                .with_writer(buf)
                .json()
                .without_time()
        };
        (
            capture(v, |buf| tracing_subscriber::registry().with(layer(buf))),
            capture(v, |buf| {
                tracing_subscriber::registry().with(layer(buf).event_format(JsonLines::new(false)))
            }),
        )
    }

    fn request() -> Values {
        Values {
            s: "req-1".into(),
            t: Some("codex_exec".into()),
            i: -3,
            u: 42,
            b: true,
            f: 0.5,
            msg: "request".into(),
        }
    }

    proptest::proptest! {
        /// For any values, the fast text fields write byte for byte what the default writes.
        #[test]
        fn text_fields_write_what_the_default_writes(v in values()) {
            let (default, fast) = text_both(&v);
            proptest::prop_assert_eq!(default, fast);
        }

        /// For any values, the fast JSON lines are byte for byte the default's, and each is one JSON
        /// object.
        #[test]
        fn json_lines_write_what_the_default_writes(v in values()) {
            let (default, fast) = json_both(&v);
            proptest::prop_assert_eq!(&default, &fast);
            for line in fast.lines() {
                proptest::prop_assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "{}", line);
            }
        }
    }

    #[test]
    fn a_request_line_reads_as_before() {
        let (default, fast) = text_both(&request());
        assert_eq!(default, fast);
        assert!(
            fast.contains(r#"request_id=req-1 principal="req-1" absent="codex_exec" n=-3 tokens=42 flag=true share=0.5 type="req-1""#),
            "{fast}"
        );
        assert_eq!(fast.lines().count(), 10, "{fast}");
    }

    #[test]
    fn a_json_request_line_reads_as_before() {
        let (default, fast) = json_both(&request());
        assert_eq!(default, fast);
        assert!(
            fast.starts_with(
                r#"{"level":"INFO","fields":{"message":"request done","request_id":"req-1","principal":"req-1","absent":"codex_exec","n":-3,"tokens":42,"flag":true,"share":0.5,"#
            ),
            "{fast}"
        );
        assert_eq!(fast.lines().count(), 10, "{fast}");
    }

    #[test]
    fn json_lines_with_time_carry_the_timestamp_first() {
        let buf = Buf::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(buf.clone())
            .json()
            .event_format(JsonLines::new(true));
        let subscriber =
            tracing_subscriber::layer::SubscriberExt::with(tracing_subscriber::registry(), layer);
        tracing::subscriber::with_default(subscriber, || tracing::info!(n = 1, "hi"));
        let line = buf.take();
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert!(line.starts_with(r#"{"timestamp":""#), "{line}");
        let ts = v["timestamp"].as_str().expect("timestamp");
        assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
        assert_eq!(v["fields"], serde_json::json!({"message": "hi", "n": 1}));
    }
}
