//! Logs and traces: the tracing subscriber of the `shoald` binary, the optional
//! OpenTelemetry (OTLP) span export, and the continuation of a caller's trace.
//!
//! Logs go to stderr (`log.format`: text, coloured only on a terminal, or one
//! JSON object a line; level from `SHOAL_LOG`). Spans are
//! exported over OTLP only when someone asked for it: `telemetry.otlp_endpoint`
//! is set, or one of the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variables is (and `OTEL_SDK_DISABLED` is
//! not `true`). The other standard variables keep their meaning (sampler,
//! headers, timeout, service name), so an operator configures shoald the way
//! they configure everything else they trace.
//!
//! Trace continuity: a client sends its span's W3C `traceparent` in the
//! request's `trace` field; [`continue_trace`] makes the daemon's `request` span
//! a child of that remote span, so the application's trace shows the shoal call.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf`, usually port 4318 (the OpenTelemetry default).
    HttpProtobuf,
    /// `grpc`, usually port 4317.
    Grpc,
}

/// Why telemetry could not be set up. The binary reports it and exits 64: a
/// tracing setup that was asked for and silently absent would be worse.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry: unsupported OTLP protocol {0:?} (use \"http/protobuf\" or \"grpc\")")]
    Protocol(String),
    #[error("telemetry: cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("telemetry: a tracing subscriber is already installed: {0}")]
    Subscriber(String),
}

/// Where and how to export spans, once the configuration and the environment
/// have been read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// `None`: the exporter reads the standard variables itself.
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
}

/// Decides whether spans are exported. `env` is a lookup of environment
/// variables (a parameter so tests need not touch the process environment).
pub fn otlp_settings(
    config: &Config,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<OtlpSettings>, TelemetryError> {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    let configured = config
        .telemetry
        .otlp_endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string);
    if configured.is_none()
        && set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
        return Ok(None);
    }
    let protocol = config
        .telemetry
        .otlp_protocol
        .clone()
        .filter(|p| !p.trim().is_empty())
        .or_else(|| set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
        .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".into());
    let protocol = match protocol.trim() {
        "http/protobuf" | "http" => OtlpProtocol::HttpProtobuf,
        "grpc" => OtlpProtocol::Grpc,
        other => return Err(TelemetryError::Protocol(other.to_string())),
    };
    // The configured endpoint is a base URL, like OTEL_EXPORTER_OTLP_ENDPOINT:
    // over HTTP the signal path is appended unless a path is already there.
    let endpoint = configured.map(|e| match protocol {
        OtlpProtocol::HttpProtobuf if url_path_is_empty(&e) => {
            format!("{}/v1/traces", e.trim_end_matches('/'))
        }
        _ => e,
    });
    Ok(Some(OtlpSettings { endpoint, protocol }))
}

fn url_path_is_empty(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find('/') {
        None => true,
        Some(i) => rest[i..].trim_end_matches('/').is_empty(),
    }
}

/// Keeps the span pipeline alive; [`Telemetry::shutdown`] flushes it.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter. Blocks (up to the
    /// exporter's timeout): call it outside async code, while the runtime the
    /// gRPC exporter was built in is still alive.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("shoald: flushing spans at exit failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber: log lines on stderr, plus OTLP export when
/// configured. With gRPC, call it inside the Tokio runtime (tonic spawns its
/// connection task there).
pub fn init(config: &Config) -> Result<Telemetry, TelemetryError> {
    let log_filter =
        EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: a file, journald or a log
    // collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = match config.log.format {
        LogFormat::Json => fmt.json().with_filter(log_filter).boxed(),
        LogFormat::Text => fmt.with_filter(log_filter).boxed(),
    };
    let Some(settings) = otlp_settings(config, |k| std::env::var(k).ok())? else {
        tracing_subscriber::registry()
            .with(fmt)
            .try_init()
            .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
        return Ok(Telemetry::default());
    };
    let provider = tracer_provider(config, &settings)?;
    // Spans are filtered apart from logs: the per-request span is at debug
    // level (it would flood the log), yet it is the span a trace needs. Only
    // shoald's own spans are exported: the exporter's HTTP/gRPC stack traced
    // into itself would loop.
    let span_filter = EnvFilter::try_from_env("SHOAL_TRACE")
        .unwrap_or_else(|_| EnvFilter::new("off,shoald=debug"));
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("shoald"))
        .with_filter(span_filter);
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    let endpoint = settings
        .endpoint
        .as_deref()
        .unwrap_or("(from OTEL_EXPORTER_OTLP_* variables)");
    tracing::info!(endpoint, protocol = ?settings.protocol, "exporting spans over OTLP");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// A batch-exporting tracer provider for `settings`, with shoald's resource.
pub fn tracer_provider(
    config: &Config,
    settings: &OtlpSettings,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = match settings.protocol {
        OtlpProtocol::HttpProtobuf => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(e) = &settings.endpoint {
                b = b.with_endpoint(e.clone());
            }
            b.build()
        }
        OtlpProtocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(e) = &settings.endpoint {
                b = b.with_endpoint(e.clone());
            }
            b.build()
        }
    }
    .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(config))
        .build())
}

/// `service.name` is `shoald` unless `OTEL_SERVICE_NAME` (or
/// `OTEL_RESOURCE_ATTRIBUTES`) says otherwise; the node id tells replicas apart.
fn resource(config: &Config) -> Resource {
    let mut b = Resource::builder().with_attributes([
        KeyValue::new("service.instance.id", config.node.id.clone()),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    ]);
    let named_by_env = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named_by_env {
        b = b.with_service_name("shoald");
    }
    b.build()
}

/// One `traceparent` as a propagation carrier.
struct TraceParent<'a>(&'a str);

impl Extractor for TraceParent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        key.eq_ignore_ascii_case("traceparent").then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// Makes `span` a child of the caller's span named by `traceparent` (W3C
/// Trace Context). Call it before the span is first entered. A malformed
/// value (it comes from the peer) is ignored: the span then starts its own
/// trace, and the request is served as usual. Without an OpenTelemetry layer
/// this does nothing.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else { return };
    // Longer than any traceparent version we could parse: not worth the work.
    if tp.len() > 512 || span.is_disabled() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&TraceParent(tp));
    if opentelemetry::trace::TraceContextExt::span(&cx)
        .span_context()
        .is_valid()
    {
        // Err: no OpenTelemetry layer, or the span already started; either way
        // there is nothing to continue.
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn off_unless_asked() {
        let c = Config::default();
        assert_eq!(otlp_settings(&c, env(&[])).unwrap(), None);
    }

    #[test]
    fn standard_variables_enable_export() {
        let c = Config::default();
        let s = otlp_settings(
            &c,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.protocol, OtlpProtocol::Grpc);
        assert_eq!(s.endpoint, None, "the exporter reads the variable itself");
        let off = otlp_settings(
            &c,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(off, None);
    }

    #[test]
    fn configured_endpoint_is_a_base_url() {
        let mut c = Config::default();
        c.telemetry.otlp_endpoint = Some("http://127.0.0.1:4318/".into());
        let s = otlp_settings(&c, env(&[])).unwrap().unwrap();
        assert_eq!(
            s.endpoint.as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        c.telemetry.otlp_endpoint = Some("http://127.0.0.1:4318/custom/traces".into());
        let s = otlp_settings(&c, env(&[])).unwrap().unwrap();
        assert_eq!(
            s.endpoint.as_deref(),
            Some("http://127.0.0.1:4318/custom/traces")
        );
        c.telemetry.otlp_protocol = Some("grpc".into());
        c.telemetry.otlp_endpoint = Some("http://127.0.0.1:4317".into());
        let s = otlp_settings(&c, env(&[])).unwrap().unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        c.telemetry.otlp_protocol = Some("http/json".into());
        assert!(otlp_settings(&c, env(&[])).is_err());
    }
}
