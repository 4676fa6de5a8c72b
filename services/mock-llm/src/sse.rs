//! Server-sent event framing and delivery, with the stream faults: a delay between
//! events and an abrupt end after a number of events.

use std::io;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use serde::Serialize;

pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// `data: {json}` — the OpenAI framing.
pub fn data(payload: &impl Serialize) -> Bytes {
    frame(None, payload)
}

/// `event: NAME` + `data: {json}` — the Anthropic framing.
pub fn event(name: &str, payload: &impl Serialize) -> Bytes {
    frame(Some(name), payload)
}

fn frame(name: Option<&str>, payload: &impl Serialize) -> Bytes {
    let mut out = Vec::with_capacity(256);
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    // Serialising plain structs of strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, payload);
    out.extend_from_slice(b"\n\n");
    out.into()
}

/// How a planned sequence of events is delivered.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Sleep before every event but the first.
    pub delay: Duration,
    /// Deliver only this many events, then abort the response body: the client sees
    /// the connection (HTTP/1.1) or stream (HTTP/2) end without a terminating chunk.
    pub abort_after: Option<usize>,
}

pub fn response(events: Vec<Bytes>, pacing: Pacing) -> Response {
    let body = if pacing.delay.is_zero() && pacing.abort_after.is_none() {
        // The common, fast case: one buffer, one write.
        Body::from(events.concat())
    } else {
        Body::from_stream(paced(events, pacing))
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

struct Delivery {
    events: std::vec::IntoIter<Bytes>,
    sent: usize,
    pacing: Pacing,
}

fn paced(
    events: Vec<Bytes>,
    pacing: Pacing,
) -> impl futures_util::Stream<Item = Result<Bytes, io::Error>> + Send {
    let start = Delivery {
        events: events.into_iter(),
        sent: 0,
        pacing,
    };
    futures_util::stream::unfold(start, |mut d| async move {
        if d.pacing.abort_after == Some(d.sent) && !d.events.as_slice().is_empty() {
            // Let hyper flush what was sent so far (it writes when the body is pending),
            // then yield an error once and end: hyper drops the connection mid-body.
            tokio::task::yield_now().await;
            d.events = Vec::new().into_iter();
            d.pacing.abort_after = None;
            return Some((
                Err(io::Error::other("stream cut by mock-llm fault injection")),
                d,
            ));
        }
        let event = d.events.next()?;
        if d.sent > 0 && !d.pacing.delay.is_zero() {
            tokio::time::sleep(d.pacing.delay).await;
        }
        d.sent += 1;
        Some((Ok(event), d))
    })
}
