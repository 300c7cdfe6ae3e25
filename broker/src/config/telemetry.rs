//! `[telemetry]`: where traces go (OTLP/HTTP). Raw struct (as written, strict) and its validated form.

use super::source::{ConfigError, Source};
use serde::Deserialize;
use toml::Spanned;

/// `[telemetry]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// OTLP/HTTP (protobuf) base URL, e.g. `http://otel-collector:4318`; traces go to `<url>/v1/traces`.
    /// Unset (the default): no traces are exported.
    pub otlp_endpoint: Option<Spanned<String>>,
    /// `service.name` resource attribute. Default `tollgate-broker`.
    pub service_name: Option<String>,
    /// Export timeout, milliseconds. Default 10000.
    pub timeout_ms: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct TelemetryConfig {
    /// Full traces URL (`…/v1/traces`), or `None` when tracing export is off.
    pub otlp_traces_url: Option<String>,
    pub service_name: String,
    pub timeout_ms: u64,
}

pub fn validate(s: &Source, r: &RawTelemetry) -> Result<TelemetryConfig, ConfigError> {
    let otlp_traces_url = match &r.otlp_endpoint {
        None => None,
        Some(u) => {
            let v = u.get_ref().trim_end_matches('/');
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                return Err(s.error_at(
                    u.span(),
                    "telemetry.otlp_endpoint",
                    "must start with http:// or https://",
                ));
            }
            Some(if v.ends_with("/v1/traces") {
                v.to_string()
            } else {
                format!("{v}/v1/traces")
            })
        }
    };
    Ok(TelemetryConfig {
        otlp_traces_url,
        service_name: r
            .service_name
            .clone()
            .unwrap_or_else(|| "tollgate-broker".into()),
        timeout_ms: r.timeout_ms.unwrap_or(10_000),
    })
}
