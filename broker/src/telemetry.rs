//! Traces: a `gen_ai` span per proxied request with OpenTelemetry GenAI semantic-convention attributes,
//! exported over OTLP/HTTP when `[telemetry] otlp_endpoint` is set (off by default).

use crate::usage::Usage;

/// Whether spans are exported (`[telemetry] otlp_endpoint` set, [`init`] installed the exporter). Without an
/// exporter nothing reads a `gen_ai` span (the log line is its own event), and building and recording one
/// cost about 19,000 instructions per request (callgrind, docs/benchmarks.md): [`request_span`] then
/// returns a disabled span, which [`settle_span`]'s caller skips.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The span of one proxied request; usage and outcome are recorded when it settles. Disabled unless spans
/// are exported.
pub fn request_span(route: &str, model: &str) -> tracing::Span {
    if !EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
        return tracing::Span::none();
    }
    let operation = if route.ends_with("/chat/completions") {
        "chat"
    } else {
        "responses"
    };
    tracing::info_span!(
        "gen_ai.request",
        otel.name = %format!("{operation} {model}"),
        otel.kind = "client",
        gen_ai.operation.name = operation,
        gen_ai.system = tracing::field::Empty,
        gen_ai.request.model = %model,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        gen_ai.usage.cached_input_tokens = tracing::field::Empty,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        tollgate.provider = tracing::field::Empty,
        tollgate.stream_end = tracing::field::Empty,
    )
}

/// Record the outcome on the span (it ends when the caller drops it).
pub fn settle_span(
    span: &tracing::Span,
    system: &str,
    provider: &str,
    status: u16,
    u: &Usage,
    end: &str,
) {
    span.record("gen_ai.system", system);
    span.record("tollgate.provider", provider);
    // Signed integers: OTLP has only int64, and unsigned values would be exported as strings.
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    span.record("http.response.status_code", i64::from(status));
    span.record("gen_ai.usage.input_tokens", int(u.input_tokens));
    span.record("gen_ai.usage.output_tokens", int(u.output_tokens));
    span.record(
        "gen_ai.usage.cached_input_tokens",
        int(u.cached_input_tokens),
    );
    span.record("tollgate.stream_end", end);
}

use crate::config::LogFormat;
use crate::config::telemetry::TelemetryConfig;
use std::sync::OnceLock;

static PROVIDER: OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// Install the global tracing subscriber: logs to stderr (text or JSON, filter from `RUST_LOG`, default
/// `info`; audit checkpoints always at `info` unless `RUST_LOG` names their target), plus an OpenTelemetry layer exporting spans over OTLP/HTTP when configured.
///
/// Call outside any Tokio runtime: the exporter uses a blocking HTTP client on the batch processor's
/// own thread.
pub fn init(cfg: &TelemetryConfig, format: LogFormat) -> Result<(), TelemetryError> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig as _};
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};

    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Audit checkpoints are the copy of the chain head that leaves the database: logged even with a quieter
    // RUST_LOG, unless RUST_LOG names their target itself.
    let target = crate::audit::checkpoint::LOG_TARGET;
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains(target))
        && let Ok(d) = format!("{target}=info").parse()
    {
        filter = filter.add_directive(d);
    }
    let ansi = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(LogWriter)
        .with_ansi(ansi);
    let fmt = match format {
        // The same lines as `json()` writes, most of them written directly (log_fields.rs).
        LogFormat::Json => fmt
            .json()
            .event_format(crate::log_fields::JsonLines::new(true))
            .boxed(),
        // Without colours the fields are written by `TextFields`: the same text for a fraction of the
        // cost (log_fields.rs).
        LogFormat::Text if !ansi => fmt.fmt_fields(crate::log_fields::TextFields).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let otel = match &cfg.otlp_traces_url {
        None => None,
        Some(url) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url.clone())
                .with_timeout(std::time::Duration::from_millis(cfg.timeout_ms))
                .with_headers(Default::default())
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build();
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build();
            let tracer = provider.tracer("tollgate-broker");
            let _ = PROVIDER.set(provider);
            EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
            // Only our own spans go to the collector (not every library's).
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                        m.is_span() && m.name().starts_with("gen_ai")
                    })),
            )
        }
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(())
}

/// Flush and stop the exporter (blocking; call after the runtime is done).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get()
        && let Err(e) = p.shutdown()
    {
        tracing::warn!(error = %e, "OTLP exporter shutdown");
    }
}

/// The log's writer: stderr, one `write` per line — except inside a [`LogBatch`] on this thread, where
/// lines go into the batch's buffer and reach stderr together when it ends. The settler logs one line
/// per request; under load its batches hold dozens, and one write for all of them instead of one each was
/// about 1.4 % of the broker's CPU per request (issue #19).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

/// What [`LogWriter`] hands the formatter for one line.
pub struct LogLine;

/// A batch buffer past this size is written at once (a batch is bounded, this is a backstop).
const LOG_BATCH_MAX: usize = 256 * 1024;

thread_local! {
    static LOG_BATCH: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine
    }
}

impl LogLine {
    /// Append to this thread's batch, if one is open; false if not.
    fn buffer(buf: &[u8]) -> bool {
        LOG_BATCH.with(|b| {
            let Ok(mut b) = b.try_borrow_mut() else {
                return false;
            };
            let Some(v) = b.as_mut() else { return false };
            v.extend_from_slice(buf);
            if v.len() >= LOG_BATCH_MAX {
                let _ = std::io::Write::write_all(&mut std::io::stderr(), v);
                v.clear();
            }
            true
        })
    }
}

impl std::io::Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if Self::buffer(buf) {
            return Ok(buf.len());
        }
        std::io::stderr().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if Self::buffer(buf) {
            return Ok(());
        }
        std::io::stderr().write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Lines logged on this thread while this lives are written together when it drops (a panic unwinding
/// through it writes them too). Not `Send`: it must not be held across an `.await`, where the task could
/// move to another thread. Inside another batch on the same thread it does nothing.
pub struct LogBatch {
    owner: bool,
    _thread: std::marker::PhantomData<*const ()>,
}

impl LogBatch {
    pub fn begin() -> Self {
        let owner = LOG_BATCH.with(|b| match b.try_borrow_mut() {
            Ok(mut b) if b.is_none() => {
                *b = Some(Vec::with_capacity(16 * 1024));
                true
            }
            _ => false,
        });
        LogBatch {
            owner,
            _thread: std::marker::PhantomData,
        }
    }
}

impl Drop for LogBatch {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        let lines = LOG_BATCH.with(|b| b.try_borrow_mut().ok().and_then(|mut b| b.take()));
        if let Some(lines) = lines.filter(|l| !l.is_empty()) {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), &lines);
        }
    }
}

#[cfg(test)]
mod log_batch_tests {
    use super::*;
    use std::io::Write;

    fn buffered() -> Option<Vec<u8>> {
        LOG_BATCH.with(|b| b.borrow().clone())
    }

    #[test]
    fn lines_in_a_batch_wait_for_its_end_and_nested_batches_join_the_outer_one() {
        assert_eq!(buffered(), None, "no batch: lines go straight to stderr");
        let outer = LogBatch::begin();
        LogLine.write_all(b"one\n").expect("buffered");
        {
            let _inner = LogBatch::begin();
            LogLine.write_all(b"two\n").expect("buffered");
        }
        assert_eq!(
            buffered().as_deref(),
            Some(&b"one\ntwo\n"[..]),
            "the inner batch's end wrote nothing"
        );
        drop(outer);
        assert_eq!(buffered(), None, "written and closed");
    }

    #[test]
    fn a_batch_is_this_threads_only() {
        let _batch = LogBatch::begin();
        LogLine.write_all(b"here\n").expect("buffered");
        std::thread::spawn(|| assert_eq!(buffered(), None))
            .join()
            .expect("the other thread");
        assert_eq!(buffered().as_deref(), Some(&b"here\n"[..]));
    }
}
