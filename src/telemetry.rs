//! Logs and traces: one subscriber for the process, set up once from the settings, before the
//! service starts.
//!
//! - Events go to stderr, filtered by `RUST_LOG` (default `info`), as text or as one JSON object
//!   a line (`TIANJI_LOG_FORMAT=text|json`). A JSON line carries the event's fields and every
//!   span it was logged in, with their fields (`spans`), so a line logged by an actor or by the
//!   write pipeline names the request it works for.
//! - With the `otlp` feature and `TIANJI_OTLP_ENDPOINT` set, spans are also exported to that
//!   collector over OTLP (HTTP/protobuf), in batches, from a thread of their own; `Telemetry`
//!   flushes what is left when it is dropped at exit.
//! - Request ids: the request span (see `http::request_id`) is tagged with its `RequestId`
//!   (`tag_request`), so work that carries the request's span (an actor message, an item of the
//!   write pipeline) can name the request (`request_id_of`) without carrying the id itself.

use std::fmt::Write as _;
use tracing::Span;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};
use uuid::Uuid;

/// How events are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event, spans as `name{field=value}:` prefixes.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the event's fields and
    /// `spans` (every span it was logged in, outermost first, each with its fields).
    Json,
}

impl LogFormat {
    /// `text` or `json` (case-insensitive).
    pub fn parse(raw: &str) -> Result<LogFormat, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("expected text or json, got {raw:?}")),
        }
    }
}

/// Settings `TIANJI_LOG_FORMAT` and `TIANJI_OTLP_ENDPOINT`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    /// The OTLP/HTTP collector's base URL (`http://host:4318`); spans go to `<base>/v1/traces`.
    /// Only accepted by a build with the `otlp` feature (checked in `config`).
    pub otlp_endpoint: Option<String>,
}

/// The longest OTLP endpoint accepted, in bytes.
pub const OTLP_ENDPOINT_LEN_MAX_BYTES: usize = 2_048;

/// Checks an OTLP endpoint: a plain `http://` URL with a host (the exporter is built without
/// TLS: a collector is expected beside the node, as an agent or a sidecar).
pub fn parse_otlp_endpoint(raw: &str) -> Result<String, String> {
    let url = raw.trim().trim_end_matches('/');
    if url.len() > OTLP_ENDPOINT_LEN_MAX_BYTES {
        return Err(format!("longer than {OTLP_ENDPOINT_LEN_MAX_BYTES} bytes"));
    }
    let host = url.strip_prefix("http://").ok_or_else(|| format!("expected an http:// URL, got {raw:?}"))?;
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("expected an http://host:port URL, got {raw:?}"));
    }
    Ok(url.to_owned())
}

/// What must live until the process ends: dropping it flushes the spans not yet exported.
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("warning: spans not exported at exit: {error}");
            }
        }
    }
}

/// Installs the process's subscriber. Fails if one is installed already or the exporter
/// cannot be built; the caller stops the start then.
pub fn init(settings: &TelemetrySettings) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (text, json) = match settings.log_format {
        LogFormat::Text => (Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)), None),
        LogFormat::Json => {
            let json = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(true)
                .with_writer(std::io::stderr);
            (None, Some(json))
        }
    };
    let registry = tracing_subscriber::registry().with(filter).with(text).with(json);
    #[cfg(feature = "otlp")]
    {
        let (layer, provider) = match &settings.otlp_endpoint {
            Some(endpoint) => {
                let (layer, provider) = otlp::layer(endpoint)?;
                (Some(layer), Some(provider))
            }
            None => (None, None),
        };
        registry.with(layer).try_init()?;
        Ok(Telemetry { provider })
    }
    #[cfg(not(feature = "otlp"))]
    {
        anyhow::ensure!(settings.otlp_endpoint.is_none(), "TIANJI_OTLP_ENDPOINT needs a build with the `otlp` feature");
        registry.try_init()?;
        Ok(Telemetry {})
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;
    use tracing_subscriber::registry::LookupSpan;

    /// A layer that hands every recorded span to a batch exporter posting to
    /// `<endpoint>/v1/traces`, and the provider that owns the exporter.
    pub fn layer<S>(endpoint: &str) -> anyhow::Result<(impl tracing_subscriber::Layer<S>, SdkTracerProvider)>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint}/v1/traces"))
            .build()?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name("tianji").build())
            .build();
        let tracer = provider.tracer("tianji");
        Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
    }
}

/// What `tag_request` keeps in a request span's extensions.
#[derive(Clone, Copy)]
struct RequestTag(Uuid);

/// Marks `span` as the span of the request `id`, so `request_id_of` finds it from the span or
/// any span inside it. Does nothing when the span is not recorded (filtered out), nor when
/// the one reader, the write pipeline's batch span (DEBUG), is filtered out: so under the
/// default filter a request pays nothing for it.
pub fn tag_request(span: &Span, id: Uuid) {
    if !tracing::enabled!(target: "tianji::persistence::group_commit", tracing::Level::DEBUG) {
        return;
    }
    span.with_subscriber(|(span_id, dispatch)| {
        let Some(registry) = dispatch.downcast_ref::<Registry>() else { return };
        if let Some(data) = registry.span(span_id) {
            data.extensions_mut().insert(RequestTag(id));
        }
    });
}

/// The request `span` works for: the id tagged on it or on the nearest span around it.
/// `None` for work no request caused, or when the span is not recorded.
pub fn request_id_of(span: &Span) -> Option<Uuid> {
    span.with_subscriber(|(span_id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let data = registry.span(span_id)?;
        data.scope().find_map(|ancestor| ancestor.extensions().get::<RequestTag>().map(|tag| tag.0))
    })
    .flatten()
}

/// The most request ids one batch names in its span; past it the rest are counted.
pub const BATCH_REQUEST_IDS_MAX: usize = 256;

/// The request ids of `spans`, comma-separated, in order, at most `BATCH_REQUEST_IDS_MAX`
/// (then `+N more`); spans no request caused are skipped.
pub fn request_ids<'a>(spans: impl IntoIterator<Item = &'a Span>) -> String {
    let mut listed = String::new();
    let mut count = 0usize;
    for id in spans.into_iter().filter_map(request_id_of) {
        count += 1;
        if count <= BATCH_REQUEST_IDS_MAX {
            let separator = if count == 1 { "" } else { "," };
            let _ = write!(listed, "{separator}{id}");
        }
    }
    if count > BATCH_REQUEST_IDS_MAX {
        let _ = write!(listed, ",+{} more", count - BATCH_REQUEST_IDS_MAX);
    }
    listed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_formats_parse_and_anything_else_is_refused() {
        assert_eq!(LogFormat::parse("text"), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(" JSON "), Ok(LogFormat::Json));
        assert!(LogFormat::parse("yaml").is_err());
        assert!(LogFormat::parse("").is_err());
    }

    #[test]
    fn otlp_endpoints_are_plain_http_urls() {
        assert_eq!(parse_otlp_endpoint("http://127.0.0.1:4318/").as_deref(), Ok("http://127.0.0.1:4318"));
        assert!(parse_otlp_endpoint("https://collector:4318").is_err(), "no TLS in the exporter");
        assert!(parse_otlp_endpoint("collector:4318").is_err());
        assert!(parse_otlp_endpoint("http://").is_err());
        assert!(parse_otlp_endpoint(&format!("http://{}", "a".repeat(OTLP_ENDPOINT_LEN_MAX_BYTES))).is_err());
    }

    /// A request span tagged with its id names it from inside any span within it; a span of
    /// another request names that one; a span outside any request names none.
    #[test]
    fn spans_name_the_request_they_work_for() {
        let subscriber = tracing_subscriber::registry().with(tracing_subscriber::fmt::layer().with_test_writer());
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("request");
            let id = Uuid::new_v4();
            tag_request(&request, id);
            let inner = request.in_scope(|| tracing::info_span!("inner"));
            let deeper = inner.in_scope(|| tracing::info_span!("deeper"));
            assert_eq!(request_id_of(&deeper), Some(id));
            let other = tracing::info_span!("request");
            let other_id = Uuid::new_v4();
            tag_request(&other, other_id);
            let unrelated = tracing::info_span!("timer");
            assert_eq!(request_id_of(&unrelated), None);
            let listed = request_ids([&deeper, &unrelated, &other]);
            assert_eq!(listed, format!("{id},{other_id}"));
            assert_eq!(request_id_of(&Span::none()), None);
        });
    }

    #[test]
    fn past_the_maximum_request_ids_are_counted_not_listed() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let spans: Vec<Span> = (0..BATCH_REQUEST_IDS_MAX + 3)
                .map(|_| {
                    let span = tracing::info_span!("request");
                    tag_request(&span, Uuid::new_v4());
                    span
                })
                .collect();
            let listed = request_ids(&spans);
            assert_eq!(listed.split(',').count(), BATCH_REQUEST_IDS_MAX + 1);
            assert!(listed.ends_with(",+3 more"), "{listed}");
        });
    }
}
