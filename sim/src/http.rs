//! A small HTTP/1.1 server: one request per connection, always `Connection: close` (or, with
//! `keep_alive`, request after request on one connection, each answer in two segments, as
//! Python's `http.server` does). Hand-rolled so that faults (resets, trickles, truncations,
//! hangs) can be injected at the byte level.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::fault::{FaultKind, Target, INSTANCE_ID_PLACEHOLDER};
use crate::state::{Recorded, Shared};
use crate::wire::{find_header, query_param, reason, JSON_CONTENT_TYPE};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 8 * 1024 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed request.
pub(crate) struct Request {
    pub method: String,
    /// Path and query, as sent (absolute-form targets are reduced to their path).
    pub target: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Sent as HTTP/1.0 (whose connections close unless the client asks for keep-alive).
    pub http10: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(&self.query, name)
    }
}

/// A response to send.
#[derive(Clone, Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".to_string(), content_type.to_string())],
            body: body.into(),
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    fn head(&self) -> Vec<u8> {
        self.head_with(true)
    }

    /// The status line and headers; `Connection: close` only when the connection then closes.
    fn head_with(&self, close: bool) -> Vec<u8> {
        let mut h = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (k, v) in &self.headers {
            h.push_str(k);
            h.push_str(": ");
            h.push_str(v);
            h.push_str("\r\n");
        }
        h.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        if close {
            h.push_str("Connection: close\r\n");
        }
        h.push_str("\r\n");
        h.into_bytes()
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.head();
        b.extend_from_slice(&self.body);
        b
    }
}

/// What a handler decided.
pub(crate) enum Outcome {
    Respond(Response),
    /// Never answer.
    Hang,
}

/// The handler that answers every request (the router in `server.rs`): this module only moves
/// bytes and applies faults.
pub(crate) type Handler = fn(&Shared, Target, &Request) -> Outcome;

impl From<Response> for Outcome {
    fn from(r: Response) -> Outcome {
        Outcome::Respond(r)
    }
}

/// A connection the simulator can also abort with a TCP reset.
pub(crate) trait Conn: AsyncRead + AsyncWrite + Unpin + Send {
    fn set_reset_on_close(&self);
}

impl Conn for TcpStream {
    fn set_reset_on_close(&self) {
        let _ = self.set_zero_linger();
    }
}

impl Conn for tokio_rustls::server::TlsStream<TcpStream> {
    fn set_reset_on_close(&self) {
        let _ = self.get_ref().0.set_zero_linger();
    }
}

enum ReadError {
    /// Answer this and close.
    Reject(Response),
    /// Just close.
    Close,
}

fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decode a complete chunked body from `buf`: the body and how many bytes of `buf` it took, or
/// Ok(None) when more bytes are needed.
fn decode_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ()> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Some(eol) = find_subslice(&buf[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[pos..pos + eol]).map_err(|_| ())?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| ())?;
        pos += eol + 2;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let Some(eol) = find_subslice(&buf[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some((out, pos)));
                }
            }
        }
        if out.len() + size > MAX_BODY {
            return Err(());
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

fn bad_request() -> ReadError {
    ReadError::Reject(Response::new(
        400,
        "text/plain; charset=utf-8",
        "400 Bad Request",
    ))
}

/// Read one request. `buf` holds bytes already read from the connection; on success it is left
/// holding whatever followed the request (the start of the next one on a kept-alive connection).
async fn read_request<S: Conn>(s: &mut S, buf: &mut Vec<u8>) -> Result<Request, ReadError> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = find_subslice(buf, b"\r\n\r\n") {
            break p;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Reject(Response::new(
                431,
                "text/plain; charset=utf-8",
                "431 Request Header Fields Too Large",
            )));
        }
        let n = s.read(&mut chunk).await.map_err(|_| ReadError::Close)?;
        if n == 0 {
            return Err(ReadError::Close);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, raw_target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) if !m.is_empty() && !t.is_empty() => (m, t, v),
        _ => return Err(bad_request()),
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad_request());
    }
    let mut headers = Vec::new();
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            return Err(bad_request());
        };
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    // Absolute-form (sent to a proxy): keep only the path and query.
    let mut target = raw_target.to_string();
    if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        target = match rest.find('/') {
            Some(i) => rest[i..].to_string(),
            None => "/".to_string(),
        };
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let mut rest: Vec<u8> = buf[head_end + 4..].to_vec();
    let chunked = find_header(&headers, "transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false);
    let content_length = match find_header(&headers, "content-length") {
        Some(v) => Some(v.parse::<usize>().map_err(|_| bad_request())?),
        None => None,
    };
    if content_length.unwrap_or(0) > MAX_BODY {
        return Err(ReadError::Reject(Response::new(
            413,
            "text/plain; charset=utf-8",
            "413 Payload Too Large",
        )));
    }
    let expects_continue = find_header(&headers, "expect")
        .map(|v| v.eq_ignore_ascii_case("100-continue"))
        .unwrap_or(false);
    let body = if chunked {
        let mut sent_continue = false;
        loop {
            match decode_chunked(&rest) {
                Ok(Some((b, used))) => {
                    *buf = rest.split_off(used);
                    break b;
                }
                Ok(None) => {}
                Err(()) => return Err(bad_request()),
            }
            if expects_continue && !sent_continue {
                sent_continue = true;
                s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .map_err(|_| ReadError::Close)?;
            }
            if rest.len() > MAX_BODY * 2 {
                return Err(bad_request());
            }
            let n = s.read(&mut chunk).await.map_err(|_| ReadError::Close)?;
            if n == 0 {
                return Err(ReadError::Close);
            }
            rest.extend_from_slice(&chunk[..n]);
        }
    } else {
        let want = content_length.unwrap_or(0);
        if rest.len() < want && expects_continue {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| ReadError::Close)?;
        }
        while rest.len() < want {
            let n = s.read(&mut chunk).await.map_err(|_| ReadError::Close)?;
            if n == 0 {
                return Err(ReadError::Close);
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        *buf = rest.split_off(want);
        rest
    };
    Ok(Request {
        method: method.to_string(),
        target,
        path,
        query,
        headers,
        body,
        http10: version == "HTTP/1.0",
    })
}

/// Accept and serve connections until `stop` completes; then close the listening socket (new
/// connections are refused) and every connection it accepted, as a process that exits does.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    target: Target,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    handle: Handler,
    stop: impl Future<Output = ()>,
) {
    // Each connection ends when this is dropped (its `changed()` then fails).
    let (open_tx, open_rx) = watch::channel(());
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(_) => {
                    // Out of file descriptors or similar: back off a little.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if !shared.cfg.keep_alive {
            let _ = stream.set_nodelay(true);
        }
        let shared = shared.clone();
        let tls = tls.clone();
        let mut open = open_rx.clone();
        tokio::spawn(async move {
            let serve = async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(Ok(s)) =
                            timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                        {
                            serve_conn(s, peer, target, shared, handle).await;
                        }
                    }
                    None => serve_conn(stream, peer, target, shared, handle).await,
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = open.changed() => {}
            }
        });
    }
    drop(listener);
    drop(open_tx);
}

async fn finish<S: Conn>(s: &mut S) {
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

async fn send<S: Conn>(s: &mut S, resp: &Response) {
    if s.write_all(&resp.to_bytes()).await.is_ok() {
        finish(s).await;
    }
}

async fn trickle<S: Conn>(s: &mut S, bytes: &[u8], bytes_per_sec: u32) {
    let bps = bytes_per_sec.max(1) as usize;
    // About 20 writes a second, at least one byte each.
    let per_write = (bps / 20).max(1);
    let interval = Duration::from_secs_f64(per_write as f64 / bps as f64);
    for piece in bytes.chunks(per_write) {
        if s.write_all(piece).await.is_err() || s.flush().await.is_err() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
    finish(s).await;
}

/// Does the request end its connection (`Connection: close`, or HTTP/1.0 without keep-alive)?
fn wants_close(req: &Request) -> bool {
    let conn = req.header("connection").unwrap_or("").to_ascii_lowercase();
    conn.split(',').any(|t| t.trim() == "close")
        || (req.http10 && !conn.split(',').any(|t| t.trim() == "keep-alive"))
}

async fn serve_conn<S: Conn>(
    mut s: S,
    peer: SocketAddr,
    target: Target,
    shared: Arc<Shared>,
    handle: Handler,
) {
    let mut buf = Vec::new();
    loop {
        let req = match timeout(READ_TIMEOUT, read_request(&mut s, &mut buf)).await {
            Ok(Ok(r)) => r,
            Ok(Err(ReadError::Reject(resp))) => {
                send(&mut s, &resp).await;
                return;
            }
            Ok(Err(ReadError::Close)) | Err(_) => return,
        };
        shared.record(Recorded {
            // Stamped by `record`.
            received: shared.started,
            since_start: Duration::ZERO,
            target,
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
            peer,
        });
        let fault = shared.take_fault(target, &req.target);
        if fault.is_none() && shared.cfg.keep_alive && !wants_close(&req) {
            match handle(&shared, target, &req) {
                Outcome::Respond(resp) => {
                    // As http.server does: the header block at end_headers, then the body.
                    if s.write_all(&resp.head_with(false)).await.is_err()
                        || s.flush().await.is_err()
                        || s.write_all(&resp.body).await.is_err()
                        || s.flush().await.is_err()
                    {
                        return;
                    }
                    continue;
                }
                Outcome::Hang => return hang().await,
            }
        }
        return answer_and_close(s, &shared, target, &req, fault, handle).await;
    }
}

/// Answer one request (normally, or as `fault` says), then close the connection.
async fn answer_and_close<S: Conn>(
    mut s: S,
    shared: &Shared,
    target: Target,
    req: &Request,
    fault: Option<FaultKind>,
    handle: Handler,
) {
    let normal = |shared: &Shared| handle(shared, target, req);
    match fault {
        None => match normal(shared) {
            Outcome::Respond(resp) => send(&mut s, &resp).await,
            Outcome::Hang => hang().await,
        },
        Some(FaultKind::Status {
            status,
            content_type,
            body,
        }) => {
            // The id JSON-escaped, without the quotes.
            let quoted = serde_json::Value::from(shared.cfg.instance_id.as_str()).to_string();
            let id = &quoted[1..quoted.len() - 1];
            let body = body.replace(INSTANCE_ID_PLACEHOLDER, id);
            send(&mut s, &Response::new(status, &content_type, body)).await;
        }
        Some(FaultKind::Canned {
            status,
            headers,
            content_type,
            body,
        }) => {
            let quoted = serde_json::Value::from(shared.cfg.instance_id.as_str()).to_string();
            let body = body.replace(INSTANCE_ID_PLACEHOLDER, &quoted[1..quoted.len() - 1]);
            let mut resp = Response::new(status, &content_type, body);
            for (k, v) in headers {
                resp = resp.with_header(&k, v);
            }
            send(&mut s, &resp).await;
        }
        Some(FaultKind::Echo { status, html }) => {
            let echoed = String::from_utf8_lossy(&req.body).into_owned();
            let resp = if html {
                Response::new(
                    status,
                    "text/html",
                    format!(
                        "<html><body><h1>{status} {}</h1><pre>{echoed}</pre></body></html>",
                        reason(status)
                    ),
                )
            } else {
                let msg = format!(
                    "cannot process request {} {}: {echoed}",
                    req.method, req.path
                );
                let mut answer = serde_json::json!({ "message": msg, "detail": echoed });
                if status == 409 {
                    // The request repeated as the agents to pick from: every
                    // line of every string it posted, in pieces of at most
                    // 64 bytes (an agent name's length in Coder's database).
                    answer["agent_names"] = echoed_names(&req.body).into();
                }
                Response::new(status, JSON_CONTENT_TYPE, answer.to_string())
            };
            send(&mut s, &resp).await;
        }
        Some(FaultKind::Delay(d)) => {
            tokio::time::sleep(d).await;
            match normal(shared) {
                Outcome::Respond(resp) => send(&mut s, &resp).await,
                Outcome::Hang => hang().await,
            }
        }
        Some(FaultKind::Hang) => hang().await,
        Some(FaultKind::Reset) => {
            s.set_reset_on_close();
            drop(s);
        }
        Some(FaultKind::Trickle { bytes_per_sec }) => match normal(shared) {
            Outcome::Respond(resp) => trickle(&mut s, &resp.to_bytes(), bytes_per_sec).await,
            Outcome::Hang => hang().await,
        },
        Some(FaultKind::Redirect { status, location }) => {
            let resp = Response::new(status, "text/plain; charset=utf-8", "redirect")
                .with_header("Location", location);
            send(&mut s, &resp).await;
        }
        Some(FaultKind::Oversize(n)) => {
            let resp = Response::new(200, "text/plain; charset=utf-8", vec![b'a'; n]);
            send(&mut s, &resp).await;
        }
        Some(FaultKind::Truncate) => match normal(shared) {
            Outcome::Respond(resp) => {
                let mut bytes = resp.head();
                bytes.extend_from_slice(&resp.body[..resp.body.len() / 2]);
                if s.write_all(&bytes).await.is_ok() {
                    let _ = s.flush().await;
                }
                // Close without a TLS close_notify: the peer sees the body cut short.
                drop(s);
            }
            Outcome::Hang => hang().await,
        },
    }
}

/// Never answer; the socket stays open until the simulator's runtime shuts down.
async fn hang() {
    std::future::pending::<()>().await
}

/// `main`, then the string values of a JSON request body, line by line, cut
/// into pieces of at most 64 bytes (at character boundaries); pieces under 24
/// bytes (a `}`, the last few characters of a signature) say nothing and are
/// left out.
fn echoed_names(body: &[u8]) -> Vec<String> {
    let mut names = vec!["main".to_string()];
    let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return names;
    };
    for v in m.values() {
        let Some(text) = v.as_str() else { continue };
        for line in text.lines().map(str::trim) {
            let mut pieces = vec![String::new()];
            for c in line.chars() {
                if pieces[pieces.len() - 1].len() + c.len_utf8() > 64 {
                    pieces.push(String::new());
                }
                let last = pieces.len() - 1;
                pieces[last].push(c);
            }
            names.extend(pieces.into_iter().filter(|p| p.len() >= 24));
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(
            decode_chunked(b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n"),
            Ok(Some((b"Wikipedia".to_vec(), 30)))
        );
        assert_eq!(decode_chunked(b"4\r\nWi"), Ok(None));
        assert_eq!(decode_chunked(b"zz\r\n"), Err(()));
    }
}
