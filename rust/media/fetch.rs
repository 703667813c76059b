//! Safe fetching of shared media over HTTP(S), modelled on Synapse's URL previews and Mastodon's request layer.
//!
//! - Only `http` and `https` URLs, without credentials, at most [`MAX_URL_BYTES`] long.
//! - The connection is made by our own connector (`GuardedConnector`): every address a host name resolves
//!   to goes through [`Policy::check`], and only addresses that passed are connected to, so a DNS answer that
//!   changes between check and connect (rebinding) cannot reach a blocked network. IP literals are checked the
//!   same way. A name that resolves only to blocked addresses is `blocked`.
//! - Ports: only 80 and 443, besides the operator's allowed targets (host:port or URL prefix) and any port of an
//!   address in an allowed network; with only-hosts set, only URLs on those hosts. [`Policy::check_url`]
//!   judges the first URL and every redirect target before any lookup or connection, and the connector
//!   judges each address with its port ([`Policy::check_connect`]).
//! - Redirects are followed here: at most [`MAX_REDIRECTS`] hops (or fewer, per the caller), each one parsed
//!   and checked like the first URL.
//! - HTTP/1.1 only (hyper's client, with connections kept for reuse), TLS by rustls with the platform's
//!   trusted roots. No proxy (environment variables included), no cookies, no compression, no referrer.
//! - Nothing is buffered here: [`Fetcher::open`] returns once the final answer's headers are in, and its
//!   body is read chunk by chunk ([`Response::chunk`]) by the caller, who stops whenever it has what it
//!   needs; dropping the [`Response`] closes the connection. The client reads into buffers of at most
//!   [`READ_BUFFER_BYTES`], so a download holds little memory however fast the bytes come.
//! - Every request asks for the first `max_bytes` only (`Range: bytes=0-<max_bytes - 1>`), so a server that
//!   honours ranges never sends more than the transfer cap, and says the whole file's size in
//!   `Content-Range`. A server that ignores the range answers 200 with the whole body, of which the caller
//!   reads at most `max_bytes`.
//! - The caller bounds the time: the connect time here, the whole exchange with its own deadline.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hickory_resolver::config::{LookupIpStrategy, ResolveHosts};
use hickory_resolver::TokioResolver;
use http::header::{
    HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION,
    RANGE, USER_AGENT,
};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use url::Url;

use crate::error::Error;
use crate::media::netguard::Policy;

/// Most redirect hops any fetch follows.
pub const MAX_REDIRECTS: u32 = 3;

/// Longest URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 4096;

/// Largest read buffer of a connection (hyper grows it up to this while reads fill it; its default is
/// 400 KiB, and a body being read can need two at once).
pub const READ_BUFFER_BYTES: usize = 64 << 10;

/// Longest `ETag` kept for revalidation, in bytes.
const MAX_ETAG_BYTES: usize = 256;

const USER_AGENT_VALUE: &str = concat!("prosody-native/", env!("CARGO_PKG_VERSION"), " (media metadata)");

/// The limits of one fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchLimits {
    /// The transfer cap: most body bytes read (and asked for, with a range).
    pub max_bytes: u64,
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest time for the whole fetch: every hop, the body, and probing it.
    pub timeout: Duration,
    /// Redirect hops followed, at most [`MAX_REDIRECTS`].
    pub max_redirects: u32,
}

impl Default for FetchLimits {
    /// 32 MiB, 3 s to connect, 10 s in all, 3 redirects.
    fn default() -> Self {
        FetchLimits {
            max_bytes: 32 << 20,
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(10),
            max_redirects: MAX_REDIRECTS,
        }
    }
}

/// The final answer of a fetch, its body still to be read.
#[derive(Debug)]
pub struct Response {
    /// The URL that answered, after redirects.
    pub url: String,
    /// `true` for a `304 Not Modified` answer to `If-None-Match` (no body, no headers worth reading).
    pub not_modified: bool,
    /// The media type of `Content-Type` (`type/subtype`, lower case, parameters dropped), when well-formed.
    pub content_type: Option<String>,
    /// The whole file's size as the server states it: the `Content-Length` of a 200, the total of a 206's
    /// (or a 416's) `Content-Range`.
    pub size: Option<u64>,
    /// The `ETag` header, for revalidation.
    pub etag: Option<String>,
    body: Option<Incoming>,
}

impl Response {
    /// The next chunk of the body as it arrives, or `None` at its end. A body that ends before its
    /// `Content-Length` is an error.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Error> {
        let Some(body) = self.body.as_mut() else {
            return Ok(None);
        };
        loop {
            match body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(map_error(&e)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                    // Trailers: nothing to read.
                }
            }
        }
    }
}

/// Checks that `s` is a URL this module may fetch: `http` or `https`, with a host and no credentials.
pub fn parse_url(s: &str) -> Result<Url, Error> {
    if s.len() > MAX_URL_BYTES {
        return Err(Error::bad_request(format!(
            "URL is longer than {MAX_URL_BYTES} bytes"
        )));
    }
    let url = Url::parse(s).map_err(|e| Error::bad_request(format!("Not a URL: {e}")))?;
    check_url(&url)?;
    Ok(url)
}

fn check_url(url: &Url) -> Result<(), Error> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::bad_request(format!(
            "Only http and https URLs are fetched, not {}:",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Error::bad_request("URL has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::bad_request("URL carries credentials"));
    }
    Ok(())
}

/// A TCP connection, in TLS for `https`.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connects only to addresses the policy allows: IP literals are checked, names resolved (hickory-resolver
/// on the runtime, with `/etc/hosts` and `/etc/resolv.conf`, within the connect timeout: no blocking
/// `getaddrinfo` thread that could outlive it) and their refused addresses dropped before any connection.
#[derive(Clone)]
struct GuardedConnector {
    policy: Policy,
    resolver: Arc<TokioResolver>,
    connect_timeout: Duration,
    tls: TlsConnector,
}

impl GuardedConnector {
    /// The addresses of `host` that the policy allows, or why there are none.
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Error> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.policy.check_connect(bare, ip, port)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let found = tokio::time::timeout(self.connect_timeout, self.resolver.lookup_ip(bare))
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "{host}: no address within {} s",
                    self.connect_timeout.as_secs_f64()
                ))
            })?
            .map_err(|e| {
                // The resolver's own query limit is the same as ours and may end it first: still a timeout.
                if e.proto()
                    .is_some_and(|p| matches!(p.kind(), hickory_resolver::proto::ProtoErrorKind::Timeout))
                {
                    Error::Timeout(format!("{host}: {e}"))
                } else {
                    Error::FetchFailed(format!("{host}: {e}"))
                }
            })?;
        let mut allowed = Vec::new();
        let mut refusal = None;
        for addr in found.iter().map(|ip| SocketAddr::new(ip, port)) {
            match self.policy.check_connect(bare, addr.ip(), port) {
                Ok(()) => allowed.push(addr),
                Err(e) => refusal = Some(e),
            }
        }
        if allowed.is_empty() {
            return Err(match refusal {
                Some(Error::Blocked(text)) => Error::Blocked(format!("{host}: {text}")),
                Some(other) => other,
                None => Error::FetchFailed(format!("{host} has no address")),
            });
        }
        Ok(allowed)
    }

    async fn connect(self, uri: Uri) -> Result<TokioIo<Stream>, Error> {
        let host = uri
            .host()
            .ok_or_else(|| Error::FetchFailed("URL has no host".into()))?;
        let tls = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addrs = self.resolve(host, port).await?;
        let connect = async {
            let mut last = None;
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(tcp) => return Ok(tcp),
                    Err(e) => last = Some(e),
                }
            }
            Err(Error::FetchFailed(format!(
                "{host}: cannot connect: {}",
                last.map_or_else(|| "no address".to_string(), |e| e.to_string())
            )))
        };
        let within = |what: &str| {
            Error::Timeout(format!(
                "{host}: {what} within {} s",
                self.connect_timeout.as_secs_f64()
            ))
        };
        let tcp = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| within("no connection"))??;
        let _ = tcp.set_nodelay(true);
        if !tls {
            return Ok(TokioIo::new(Stream::Plain(tcp)));
        }
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
            .map_err(|e| Error::FetchFailed(format!("{host}: {e}")))?;
        let stream = tokio::time::timeout(self.connect_timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| within("no TLS session"))?
            .map_err(|e| Error::FetchFailed(format!("{host}: TLS: {e}")))?;
        Ok(TokioIo::new(Stream::Tls(Box::new(stream))))
    }
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<Stream>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// A DNS resolver from the system's configuration (`/etc/resolv.conf`, `/etc/hosts` honoured), asking for
/// IPv4 and IPv6 addresses, each query bounded by `timeout`. Made with the [`Fetcher`], so per process and
/// after any fork, on a worker thread: it starts no thread of its own, its queries run on the caller's
/// runtime.
fn system_resolver(timeout: Duration) -> Result<TokioResolver, Error> {
    let builder = TokioResolver::builder_tokio()
        .map_err(|e| Error::Internal(format!("cannot read the system's DNS configuration: {e}")))?;
    Ok(bounded(builder, timeout))
}

/// The resolver of `builder`, asking for IPv4 and IPv6 addresses, each query bounded by `timeout`.
fn bounded(
    mut builder: hickory_resolver::ResolverBuilder<hickory_resolver::name_server::TokioConnectionProvider>,
    timeout: Duration,
) -> TokioResolver {
    let options = builder.options_mut();
    options.timeout = timeout;
    options.attempts = 1;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.use_hosts_file = ResolveHosts::Always;
    builder.build()
}

/// An HTTP client bound to one address policy and connect limit; cheap to share between fetches.
pub struct Fetcher {
    policy: Policy,
    client: Client<GuardedConnector, Empty<Bytes>>,
}

impl Fetcher {
    /// Builds the client. Loads the system's trusted certificates, so build it on a worker thread, once.
    pub fn new(policy: Policy, connect_timeout: Duration) -> Result<Fetcher, Error> {
        Fetcher::with_resolver(policy, connect_timeout, system_resolver(connect_timeout)?)
    }

    fn with_resolver(
        policy: Policy,
        connect_timeout: Duration,
        resolver: TokioResolver,
    ) -> Result<Fetcher, Error> {
        use rustls_platform_verifier::BuilderVerifierExt;
        // Built without a default crypto provider; ring is ours. Err means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut tls = rustls::ClientConfig::builder()
            .with_platform_verifier()
            .map_err(|e| Error::Internal(format!("cannot load trusted certificates: {e}")))?
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = GuardedConnector {
            policy: policy.clone(),
            resolver: Arc::new(resolver),
            connect_timeout,
            tls: TlsConnector::from(Arc::new(tls)),
        };
        let client = Client::builder(TokioExecutor::new())
            .http1_max_buf_size(READ_BUFFER_BYTES)
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        Ok(Fetcher { policy, client })
    }

    /// Requests `url` under `limits` (revalidating with `If-None-Match: etag` when one is given), following
    /// redirects, and returns the final answer once its headers are in. The caller sets the deadline.
    pub async fn open(&self, url: &str, limits: &FetchLimits, etag: Option<&str>) -> Result<Response, Error> {
        let mut url = parse_url(url)?;
        self.policy.check_url(&url)?;
        let max_redirects = limits.max_redirects.min(MAX_REDIRECTS);
        let mut hops = 0;
        loop {
            let uri: Uri = url
                .as_str()
                .parse()
                .map_err(|e| Error::bad_request(format!("Not a URL: {e}")))?;
            let mut request = Request::get(uri)
                .header(USER_AGENT, USER_AGENT_VALUE)
                .header(RANGE, format!("bytes=0-{}", limits.max_bytes.saturating_sub(1)));
            if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
                request = request.header(IF_NONE_MATCH, etag);
            }
            let request = request
                .body(Empty::new())
                .map_err(|e| Error::Internal(format!("cannot make a request: {e}")))?;
            let response = self.client.request(request).await.map_err(|e| map_error(&e))?;
            let status = response.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let Some(location) = response.headers().get(LOCATION).and_then(|l| l.to_str().ok()) else {
                    return Err(Error::FetchFailed(format!("HTTP {status} without a Location")));
                };
                if hops >= max_redirects {
                    return Err(Error::FetchFailed(format!("More than {max_redirects} redirects")));
                }
                let next = url
                    .join(location)
                    .map_err(|e| Error::FetchFailed(format!("Bad redirect target: {e}")))?;
                check_url(&next).map_err(|e| Error::FetchFailed(format!("Bad redirect target: {e}")))?;
                self.policy.check_url(&next)?;
                url = next;
                hops += 1;
                continue;
            }
            return answer(url, response);
        }
    }
}

/// The final answer: its headers read, its body left to the caller.
fn answer(url: Url, response: http::Response<Incoming>) -> Result<Response, Error> {
    let status = response.status();
    let headers = response.headers();
    let mut answer = Response {
        url: url.to_string(),
        not_modified: status == StatusCode::NOT_MODIFIED,
        content_type: media_type(headers),
        size: None,
        etag: etag(headers),
        body: None,
    };
    match status {
        StatusCode::NOT_MODIFIED => return Ok(answer),
        StatusCode::PARTIAL_CONTENT => {
            let (start, total) = content_range(headers)
                .ok_or_else(|| Error::FetchFailed("HTTP 206 without a valid Content-Range".into()))?;
            if start != Some(0) {
                return Err(Error::FetchFailed("HTTP 206 for another range than asked".into()));
            }
            answer.size = total;
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            // Only an empty file cannot satisfy a range that starts at 0.
            return match content_range(headers) {
                Some((None, Some(0))) => {
                    answer.size = Some(0);
                    Ok(answer)
                }
                _ => Err(Error::FetchFailed(format!("HTTP {status}"))),
            };
        }
        s if s.is_success() => answer.size = content_length(headers),
        _ => return Err(Error::FetchFailed(format!("HTTP {status}"))),
    }
    answer.body = Some(response.into_body());
    Ok(answer)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// `Content-Range: bytes <first>-<last>/<total>` (or `bytes */<total>`): the first byte (`None` for
/// `*`) and the total (`None` when unknown, `*`).
fn content_range(headers: &HeaderMap) -> Option<(Option<u64>, Option<u64>)> {
    let value = headers.get(CONTENT_RANGE)?.to_str().ok()?.trim();
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let first = match range.trim() {
        "*" => None,
        r => {
            let (first, last) = r.split_once('-')?;
            let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
            if last < first || total.is_some_and(|t| last >= t) {
                return None;
            }
            Some(first)
        }
    };
    Some((first, total))
}

/// `type/subtype` of `Content-Type`, lower case, when it is well-formed.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim().to_ascii_lowercase();
    let (kind, sub) = essence.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    (essence.len() <= 127 && token(kind) && token(sub)).then_some(essence)
}

fn etag(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(ETAG)?.to_str().ok()?;
    (!value.is_empty() && value.len() <= MAX_ETAG_BYTES && value.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| value.to_owned())
}

/// Turns a client error into ours, finding our own (a refusal of the connector) in its sources.
fn map_error(e: &(dyn std::error::Error + 'static)) -> Error {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(ours) = s.downcast_ref::<Error>() {
            return ours.clone();
        }
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    Error::FetchFailed(text)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    /// A canned HTTP answer for the test server: status line, extra headers, body.
    #[derive(Clone)]
    pub struct Answer {
        pub status: &'static str,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
        pub content_length: bool,
        /// A `Content-Length` other than the body's (a lying server).
        pub declared_length: Option<u64>,
        pub stall: bool,
        /// Sends this much of the body, then nothing more for 30 s.
        pub stall_after: Option<usize>,
        /// Keeps the connection open for another request.
        pub keep_alive: bool,
    }

    impl Answer {
        pub fn ok(content_type: &str, body: &[u8]) -> Answer {
            Answer {
                status: "200 OK",
                headers: vec![("Content-Type".into(), content_type.into())],
                body: body.to_vec(),
                content_length: true,
                declared_length: None,
                stall: false,
                stall_after: None,
                keep_alive: false,
            }
        }

        pub fn status(status: &'static str) -> Answer {
            Answer {
                status,
                headers: Vec::new(),
                body: Vec::new(),
                content_length: true,
                declared_length: None,
                stall: false,
                stall_after: None,
                keep_alive: false,
            }
        }

        pub fn redirect(to: &str) -> Answer {
            let mut a = Answer::status("302 Found");
            a.headers.push(("Location".into(), to.into()));
            a
        }

        pub fn header(mut self, name: &str, value: &str) -> Answer {
            self.headers.push((name.into(), value.into()));
            self
        }

        pub fn status_line(mut self, status: &'static str) -> Answer {
            self.status = status;
            self
        }
    }

    /// A one-thread HTTP/1.0-style server on `ip`: answers by path from `route`, counts connections.
    pub struct TestServer {
        pub addr: SocketAddr,
        pub connections: Arc<AtomicUsize>,
        /// The head of every request, as received.
        pub requests: Arc<std::sync::Mutex<Vec<String>>>,
        /// Body bytes written to the socket so far (by every connection).
        pub sent: Arc<AtomicUsize>,
    }

    impl TestServer {
        pub fn start(ip: &str, route: impl Fn(&str, &str) -> Answer + Send + Sync + 'static) -> TestServer {
            let listener = TcpListener::bind((ip, 0)).unwrap();
            let addr = listener.local_addr().unwrap();
            let connections = Arc::new(AtomicUsize::new(0));
            let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
            let sent = Arc::new(AtomicUsize::new(0));
            let (counter, log, bytes) = (connections.clone(), requests.clone(), sent.clone());
            let route = Arc::new(route);
            thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let (route, log, bytes) = (route.clone(), log.clone(), bytes.clone());
                    // One thread per connection: a client that stops reading must not hold up the next.
                    thread::spawn(move || {
                        serve(stream, &|path: &str, inm: &str| route(path, inm), &log, &bytes)
                    });
                }
            });
            TestServer {
                addr,
                connections,
                requests,
                sent,
            }
        }

        pub fn url(&self, path: &str) -> String {
            format!("http://{}{}", self.addr, path)
        }
    }

    fn serve(
        mut stream: TcpStream,
        route: &dyn Fn(&str, &str) -> Answer,
        log: &std::sync::Mutex<Vec<String>>,
        sent: &AtomicUsize,
    ) {
        // Requests on the same connection while the answers keep it open.
        while serve_one(&mut stream, route, log, sent) {}
    }

    /// Answers one request; returns whether the connection stays open for another.
    fn serve_one(
        stream: &mut TcpStream,
        route: &dyn Fn(&str, &str) -> Answer,
        log: &std::sync::Mutex<Vec<String>>,
        sent: &AtomicUsize,
    ) -> bool {
        let mut request = Vec::new();
        let mut buf = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(_) => request.push(buf[0]),
            }
        }
        let text = String::from_utf8_lossy(&request).to_string();
        log.lock().unwrap().push(text.clone());
        let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
        let inm = text
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("if-none-match:")
                    .map(|_| l[14..].trim().to_string())
            })
            .unwrap_or_default();
        let answer = route(&path, &inm);
        let connection = if answer.keep_alive { "keep-alive" } else { "close" };
        let mut head = format!("HTTP/1.1 {}\r\nConnection: {connection}\r\n", answer.status);
        for (k, v) in &answer.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if answer.content_length {
            let declared = answer.declared_length.unwrap_or(answer.body.len() as u64);
            head.push_str(&format!("Content-Length: {declared}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes());
        if answer.stall {
            thread::sleep(Duration::from_secs(30));
            return false;
        }
        // Small writes into a small send buffer: what is counted is close to what the client took.
        let _ = socket_send_buffer(stream, 16 << 10);
        let body = match answer.stall_after {
            Some(n) => &answer.body[..n.min(answer.body.len())],
            None => &answer.body[..],
        };
        for part in body.chunks(16 << 10) {
            if stream.write_all(part).is_err() {
                return false;
            }
            sent.fetch_add(part.len(), Ordering::SeqCst);
        }
        if answer.stall_after.is_some() {
            thread::sleep(Duration::from_secs(30));
            return false;
        }
        answer.keep_alive
    }

    fn socket_send_buffer(stream: &TcpStream, bytes: libc::c_int) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: sets an integer socket option on a descriptor the stream owns.
        let r = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    #[test]
    fn a_name_server_that_never_answers_ends_the_lookup_as_a_timeout() {
        use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
        use hickory_resolver::name_server::TokioConnectionProvider;
        // A UDP socket that reads nothing and answers nothing, as the only name server.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let servers = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
        let config = ResolverConfig::from_parts(None, vec![], servers);
        let limit = Duration::from_millis(200);
        let builder = TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        let fetcher = Fetcher::with_resolver(Policy::default(), limit, bounded(builder, limit)).unwrap();
        let err =
            run(fetcher.open("http://silent.example.net/x.png", &FetchLimits::default(), None)).unwrap_err();
        assert_eq!("timeout", err.code(), "{err}");
        assert!(err.to_string().starts_with("silent.example.net"), "{err}");
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Opens `url` and reads its whole body (at most `limits.max_bytes` of it).
    async fn fetch_all(
        fetcher: &Fetcher,
        url: &str,
        limits: &FetchLimits,
        etag: Option<&str>,
    ) -> Result<(Response, Vec<u8>), Error> {
        let mut response = fetcher.open(url, limits, etag).await?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            body.extend_from_slice(&chunk);
        }
        Ok((response, body))
    }

    fn loopback_fetcher() -> Fetcher {
        Fetcher::new(Policy::parse(&["127.0.0.1/32"]).unwrap(), Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn parse_url_accepts_http_and_https_only() {
        assert!(parse_url("https://example.com/a.png").is_ok());
        assert!(parse_url("http://example.com/a.png").is_ok());
        for bad in [
            "ftp://example.com/a",
            "file:///etc/passwd",
            "gopher://x/",
            "data:image/png,xx",
            "nonsense",
            "http://",
            "http://user:pw@example.com/",
        ] {
            assert_eq!("bad-request", parse_url(bad).unwrap_err().code(), "{bad}");
        }
        assert!(parse_url(&format!("http://example.com/{}", "a".repeat(MAX_URL_BYTES))).is_err());
    }

    #[test]
    fn literal_ips_are_checked_in_every_spelling() {
        // The URL parser turns other IPv4 spellings into dotted form, which the connector checks.
        let blocked = TestServer::start("127.0.0.2", |_, _| Answer::ok("text/plain", b"secret"));
        let port = blocked.addr.port();
        for url in [
            format!("http://127.0.0.2:{port}/"),
            format!("http://0x7f.0.0.2:{port}/"),
            format!("http://2130706434:{port}/"),
            format!("http://0177.0.0.02:{port}/"),
            format!("http://[::ffff:127.0.0.2]:{port}/"),
        ] {
            let err = run(loopback_fetcher().open(&url, &FetchLimits::default(), None)).unwrap_err();
            assert_eq!("blocked", err.code(), "{url}: {err}");
        }
        assert_eq!(0, blocked.connections.load(Ordering::SeqCst));
    }

    #[test]
    fn fetches_a_body_with_its_headers() {
        let server = TestServer::start("127.0.0.1", |_, _| {
            Answer::ok("text/plain; charset=utf-8", b"hello").header("ETag", "\"v1\"")
        });
        let (fetched, body) = run(fetch_all(
            &loopback_fetcher(),
            &server.url("/a.txt"),
            &FetchLimits::default(),
            None,
        ))
        .unwrap();
        assert_eq!(b"hello".to_vec(), body);
        assert_eq!(Some("text/plain".into()), fetched.content_type);
        assert_eq!(Some(5), fetched.size);
        assert_eq!(Some("\"v1\"".into()), fetched.etag);
        assert!(!fetched.not_modified);
        let request = server.requests.lock().unwrap()[0].to_ascii_lowercase();
        assert!(request.contains("\r\nrange: bytes=0-33554431\r\n"), "{request}");
    }

    #[test]
    fn an_error_status_fails() {
        let server = TestServer::start("127.0.0.1", |_, _| Answer::status("404 Not Found"));
        let err =
            run(loopback_fetcher().open(&server.url("/missing"), &FetchLimits::default(), None)).unwrap_err();
        assert_eq!(Error::FetchFailed("HTTP 404 Not Found".into()), err);
    }

    #[test]
    fn redirects_to_a_port_or_host_not_allowed_are_refused() {
        let other = TestServer::start("127.0.0.1", |_, _| Answer::ok("text/plain", b"secret"));
        let other_url = format!("http://localhost:{}/", other.addr.port());
        let first = TestServer::start("127.0.0.1", move |_, _| Answer::redirect(&other_url));
        let start = format!("http://127.0.0.1:{}/", first.addr.port());
        let first_target = format!("127.0.0.1:{}", first.addr.port());
        // Loopback allowed (by a narrow network) but the redirect goes to a port with no target; the
        // network 127.0.0.1/32 exempts 127.0.0.1 only, and localhost must not reach another port of it.
        let policy = Policy::parse(&["127.0.0.1/32"])
            .unwrap()
            .with_only_hosts(&["127.0.0.1"])
            .unwrap()
            .with_targets(&[first_target])
            .unwrap();
        let fetcher = Fetcher::new(policy, Duration::from_secs(5)).unwrap();
        let err = run(fetcher.open(&start, &FetchLimits::default(), None)).unwrap_err();
        assert_eq!("blocked", err.code(), "{err}");
        assert!(err.to_string().contains("not among the hosts probed"), "{err}");
        assert_eq!(1, first.connections.load(Ordering::SeqCst));
        assert_eq!(0, other.connections.load(Ordering::SeqCst));
    }

    #[test]
    fn a_blocked_literal_address_is_never_contacted() {
        let blocked = TestServer::start("127.0.0.2", |_, _| Answer::ok("text/plain", b"secret"));
        let err = run(loopback_fetcher().open(&blocked.url("/"), &FetchLimits::default(), None)).unwrap_err();
        assert_eq!("blocked", err.code(), "{err}");
        assert_eq!(0, blocked.connections.load(Ordering::SeqCst));
    }

    #[test]
    fn a_name_resolving_to_blocked_addresses_is_refused_by_the_resolver() {
        let server = TestServer::start("127.0.0.1", |_, _| Answer::ok("text/plain", b"secret"));
        let url = format!("http://localhost:{}/", server.addr.port());
        // Its port allowed by a target: the address is still judged (and refused).
        let target = format!("localhost:{}", server.addr.port());
        let strict = Fetcher::new(
            Policy::default().with_targets(&[target]).unwrap(),
            Duration::from_secs(5),
        )
        .unwrap();
        let err = run(strict.open(&url, &FetchLimits::default(), None)).unwrap_err();
        assert_eq!("blocked", err.code(), "{err}");
        assert!(err.to_string().starts_with("localhost: Address "), "{err}");
        // Without the target, the port alone refuses it, before any lookup.
        let strict = Fetcher::new(Policy::default(), Duration::from_secs(5)).unwrap();
        let err = run(strict.open(&url, &FetchLimits::default(), None)).unwrap_err();
        assert_eq!("blocked", err.code(), "{err}");
        assert!(err.to_string().starts_with("Port "), "{err}");
        assert_eq!(0, server.connections.load(Ordering::SeqCst));
        // The same name through a policy that allows the address it resolves to.
        let (_, body) = run(fetch_all(
            &loopback_fetcher(),
            &url,
            &FetchLimits::default(),
            None,
        ))
        .unwrap();
        assert_eq!(b"secret".to_vec(), body);
    }

    #[test]
    fn redirects_are_followed_and_checked_at_every_hop() {
        let blocked = TestServer::start("127.0.0.2", |_, _| Answer::ok("text/plain", b"secret"));
        let blocked_url = blocked.url("/x");
        let server = TestServer::start("127.0.0.1", move |path, _| match path {
            "/one" => Answer::redirect("/two"),
            "/two" => Answer::redirect("/final"),
            "/final" => Answer::ok("text/plain", b"here"),
            "/loop" => Answer::redirect("/loop"),
            "/to-blocked" => Answer::redirect(&blocked_url),
            "/to-file" => Answer::redirect("file:///etc/passwd"),
            _ => Answer::status("404 Not Found"),
        });
        let fetcher = loopback_fetcher();
        let (fetched, body) = run(fetch_all(
            &fetcher,
            &server.url("/one"),
            &FetchLimits::default(),
            None,
        ))
        .unwrap();
        assert_eq!(b"here".to_vec(), body);
        assert_eq!(server.url("/final"), fetched.url);

        let err = run(fetcher.open(&server.url("/loop"), &FetchLimits::default(), None)).unwrap_err();
        assert_eq!(Error::FetchFailed("More than 3 redirects".into()), err);
        let one_hop = FetchLimits {
            max_redirects: 1,
            ..FetchLimits::default()
        };
        assert_eq!(
            "fetch-failed",
            run(fetcher.open(&server.url("/one"), &one_hop, None))
                .unwrap_err()
                .code()
        );

        let err = run(fetcher.open(&server.url("/to-blocked"), &FetchLimits::default(), None)).unwrap_err();
        assert_eq!("blocked", err.code());
        assert_eq!(0, blocked.connections.load(Ordering::SeqCst));

        let err = run(fetcher.open(&server.url("/to-file"), &FetchLimits::default(), None)).unwrap_err();
        assert_eq!("fetch-failed", err.code());
    }

    #[test]
    fn a_partial_answer_gives_the_size_from_its_content_range() {
        let server = TestServer::start("127.0.0.1", |path, _| {
            let answer = |range: &str| {
                Answer::ok("image/png", &[7u8; 100])
                    .header("Content-Range", range)
                    .status_line("206 Partial Content")
            };
            match path {
                "/known" => answer("bytes 0-99/123456"),
                "/unknown" => answer("bytes 0-99/*"),
                "/elsewhere" => answer("bytes 10-109/123456"),
                "/garbage" => answer("bytes 0-99"),
                "/empty" => {
                    let mut a =
                        Answer::status("416 Range Not Satisfiable").header("Content-Range", "bytes */0");
                    a.content_length = false;
                    a
                }
                _ => Answer::status("416 Range Not Satisfiable").header("Content-Range", "bytes */500"),
            }
        });
        let limits = FetchLimits {
            max_bytes: 100,
            ..FetchLimits::default()
        };
        let fetcher = loopback_fetcher();
        let (known, body) = run(fetch_all(&fetcher, &server.url("/known"), &limits, None)).unwrap();
        assert_eq!((Some(123_456), 100), (known.size, body.len()));
        let (unknown, _) = run(fetch_all(&fetcher, &server.url("/unknown"), &limits, None)).unwrap();
        assert_eq!(None, unknown.size);
        let (empty, body) = run(fetch_all(&fetcher, &server.url("/empty"), &limits, None)).unwrap();
        assert_eq!((Some(0), 0), (empty.size, body.len()));
        for path in ["/elsewhere", "/garbage", "/unsatisfiable"] {
            let err = run(fetcher.open(&server.url(path), &limits, None)).unwrap_err();
            assert_eq!("fetch-failed", err.code(), "{path}: {err}");
        }
        let request = server.requests.lock().unwrap()[0].to_ascii_lowercase();
        assert!(request.contains("\r\nrange: bytes=0-99\r\n"), "{request}");
    }

    #[test]
    fn a_body_shorter_than_its_content_length_is_an_error() {
        let server = TestServer::start("127.0.0.1", |_, _| {
            let mut a = Answer::ok("image/png", &[1u8; 1000]);
            a.declared_length = Some(5000);
            a
        });
        let err = run(fetch_all(
            &loopback_fetcher(),
            &server.url("/short"),
            &FetchLimits::default(),
            None,
        ))
        .unwrap_err();
        assert_eq!("fetch-failed", err.code(), "{err}");
    }

    #[test]
    fn a_refused_connection_fails() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = run(loopback_fetcher().open(
            &format!("http://127.0.0.1:{port}/"),
            &FetchLimits::default(),
            None,
        ))
        .unwrap_err();
        assert_eq!("fetch-failed", err.code(), "{err}");
    }

    #[test]
    fn revalidation_sends_the_etag() {
        let server = TestServer::start("127.0.0.1", |_, inm| {
            if inm == "\"v1\"" {
                Answer::status("304 Not Modified")
            } else {
                Answer::ok("text/plain", b"x")
            }
        });
        let fetcher = loopback_fetcher();
        let (fresh, body) = run(fetch_all(
            &fetcher,
            &server.url("/"),
            &FetchLimits::default(),
            Some("\"v1\""),
        ))
        .unwrap();
        assert!(fresh.not_modified);
        assert!(body.is_empty());
        let changed = run(fetcher.open(&server.url("/"), &FetchLimits::default(), Some("\"v0\""))).unwrap();
        assert!(!changed.not_modified);
    }

    #[test]
    fn malformed_headers_are_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("image/png"));
        assert_eq!(Some("image/png".into()), media_type(&headers));
        for bad in [
            "",
            "image",
            "image/",
            "/png",
            "image/png/x",
            "im age/png",
            "<script>/x",
        ] {
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(bad).unwrap());
            assert_eq!(None, media_type(&headers), "{bad:?}");
        }
        headers.insert(ETAG, HeaderValue::from_static("W/\"abc\""));
        assert_eq!(Some("W/\"abc\"".into()), etag(&headers));
        headers.insert(ETAG, HeaderValue::from_str(&"x".repeat(300)).unwrap());
        assert_eq!(None, etag(&headers));
    }
}
