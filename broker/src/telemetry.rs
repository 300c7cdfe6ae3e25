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
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = match format {
        LogFormat::Json => fmt.json().boxed(),
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
