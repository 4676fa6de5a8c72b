//! `--force-encoding`: every `/v1/*` response compressed whatever the request
//! accepts, as a misbehaving upstream does. A body known whole is compressed
//! whole (with its `content-length`); a streamed one is compressed as it goes,
//! flushed after every write so each event can be decoded as soon as it
//! arrives, and an aborted stream stays aborted.

use std::io::{self, Write as _};
use std::sync::Arc;

use axum::body::{Body, BodyDataStream, Bytes, HttpBody as _};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;

use crate::config::ForceEncoding;
use crate::AppState;

impl ForceEncoding {
    fn token(self) -> &'static str {
        match self {
            ForceEncoding::Gzip => "gzip",
            ForceEncoding::Deflate => "deflate",
            ForceEncoding::Br => "br",
        }
    }
}

/// An incremental compressor writing into a buffer that is drained after
/// every write.
pub enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Deflate(flate2::write::ZlibEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl Encoder {
    pub fn new(encoding: ForceEncoding) -> Self {
        let level = flate2::Compression::default();
        match encoding {
            ForceEncoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(Vec::new(), level)),
            ForceEncoding::Deflate => {
                Encoder::Deflate(flate2::write::ZlibEncoder::new(Vec::new(), level))
            }
            // Quality 5, a 4 MiB window (brotli's default size).
            ForceEncoding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                5,
                22,
            ))),
        }
    }

    /// Compresses `data` and flushes: returns every byte ready so far.
    pub fn push(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        let out = match self {
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                e.flush()?;
                e.get_mut()
            }
            Encoder::Deflate(e) => {
                e.write_all(data)?;
                e.flush()?;
                e.get_mut()
            }
            Encoder::Br(e) => {
                e.write_all(data)?;
                e.flush()?;
                e.get_mut()
            }
        };
        Ok(std::mem::take(out))
    }

    /// Ends the compressed stream: returns its last bytes.
    pub fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Deflate(e) => e.finish(),
            Encoder::Br(e) => Ok(e.into_inner()),
        }
    }
}

/// Compresses a whole body at once.
pub fn compress(encoding: ForceEncoding, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = Encoder::new(encoding);
    let mut out = encoder.push(data)?;
    out.extend(encoder.finish()?);
    Ok(out)
}

/// The middleware: compresses `/v1/*` responses when `--force-encoding` is set.
pub async fn force_encoding(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(encoding) = state.config.force_encoding else {
        return next.run(request).await;
    };
    if !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    let response = next.run(request).await;
    if response.headers().contains_key(header::CONTENT_ENCODING) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(encoding.token()),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = if body.size_hint().exact().is_some() {
        let whole = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|e| e.to_string())
            .and_then(|bytes| compress(encoding, &bytes).map_err(|e| e.to_string()));
        match whole {
            Ok(compressed) => {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(compressed.len()));
                Body::from(compressed)
            }
            Err(e) => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("compressing: {e}"),
                )
                    .into_response()
            }
        }
    } else {
        Body::from_stream(compressed_stream(
            body.into_data_stream(),
            Encoder::new(encoding),
        ))
    };
    Response::from_parts(parts, body)
}

/// A streamed body compressed piece by piece; an error in the body (a cut
/// stream) ends the compressed one with that error, unfinished.
fn compressed_stream(
    body: BodyDataStream,
    encoder: Encoder,
) -> impl futures_util::Stream<Item = Result<Bytes, io::Error>> + Send {
    futures_util::stream::unfold(Some((body, encoder)), |state| async move {
        let (mut body, mut encoder) = state?;
        loop {
            match body.next().await {
                Some(Ok(data)) => match encoder.push(&data) {
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => return Some((Ok(Bytes::from(out)), Some((body, encoder)))),
                    Err(e) => return Some((Err(e), None)),
                },
                Some(Err(e)) => return Some((Err(io::Error::other(e)), None)),
                None => {
                    return Some((encoder.finish().map(Bytes::from), None));
                }
            }
        }
    })
}
