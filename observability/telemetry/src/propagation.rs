//! W3C trace context (<https://www.w3.org/TR/trace-context/>) across process boundaries.
//!
//! Two carriers: HTTP/2 headers, which is gRPC metadata (every call, see [`crate::grpc`]), and a
//! `map<string, string> trace_context` field in messages that outlive the call carrying them: an allocator
//! grant keeps the context of the cycle that made it, an event on a framework's stream the context of the
//! status update it forwards. Keys are the W3C header names, `traceparent` and `tracestate`.
//!
//! When a process exports no traces its spans have no OpenTelemetry context: injecting writes nothing and
//! extracting gives an empty context, so every function here is safe to call unconditionally.

pub use opentelemetry::trace::SpanContext;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

struct Headers<'a>(&'a mut http::HeaderMap);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeadersRef<'a>(&'a http::HeaderMap);

impl Extractor for HeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Map<'a>(&'a mut HashMap<String, String>);

impl Injector for Map<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct MapRef<'a>(&'a HashMap<String, String>);

impl Extractor for MapRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes `span`'s context into HTTP/2 headers (gRPC metadata).
pub fn inject_headers(span: &tracing::Span, headers: &mut http::HeaderMap) {
    propagator().inject_context(&span.context(), &mut Headers(headers));
}

/// The remote context carried by HTTP/2 headers (empty when they carry none or a malformed one).
pub fn extract_headers(headers: &http::HeaderMap) -> Context {
    propagator().extract(&HeadersRef(headers))
}

/// `span`'s context as a `trace_context` map for a message; empty when `span` is not traced.
pub fn to_map(span: &tracing::Span) -> HashMap<String, String> {
    let mut map = HashMap::new();
    propagator().inject_context(&span.context(), &mut Map(&mut map));
    map
}

/// [`to_map`] of the current span.
pub fn current_map() -> HashMap<String, String> {
    to_map(&tracing::Span::current())
}

/// The span context a `trace_context` map carries, if it carries a valid one.
pub fn span_context(map: &HashMap<String, String>) -> Option<SpanContext> {
    if map.is_empty() {
        return None;
    }
    let cx = propagator().extract(&MapRef(map));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Makes the context in `map` the parent of `span` (nothing happens when the map carries none).
pub fn set_parent_from_map(span: &tracing::Span, map: &HashMap<String, String>) {
    if map.is_empty() {
        return;
    }
    let _ = span.set_parent(propagator().extract(&MapRef(map)));
}

/// Makes the context in HTTP/2 headers the parent of `span` (nothing happens when they carry none).
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.contains_key("traceparent") {
        let _ = span.set_parent(extract_headers(headers));
    }
}

/// Adds a link from `span` to the span context in `map` (nothing happens when the map carries none).
pub fn link_from_map(span: &tracing::Span, map: &HashMap<String, String>) {
    if let Some(sc) = span_context(map) {
        span.add_link(sc);
    }
}

/// The span context of `span` (invalid when `span` is not traced), to link to later.
pub fn span_context_of(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// Adds a link from `span` to `target` when `target` is valid.
pub fn link(span: &tracing::Span, target: &SpanContext) {
    if target.is_valid() {
        span.add_link(target.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_round_trips_a_traceparent() {
        let mut map = HashMap::new();
        map.insert(
            "traceparent".to_string(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
        );
        let sc = span_context(&map).expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_remote());
    }

    #[test]
    fn malformed_or_missing_context_is_none() {
        assert!(span_context(&HashMap::new()).is_none());
        let mut map = HashMap::new();
        map.insert("traceparent".to_string(), "garbage".to_string());
        assert!(span_context(&map).is_none());
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static("00-zz-yy-01"));
        assert!(!extract_headers(&headers).span().span_context().is_valid());
    }

    #[test]
    fn an_untraced_span_injects_nothing() {
        assert!(to_map(&tracing::info_span!("x")).is_empty());
    }
}
