//! The HTTP client for upstream providers.
//!
//! An upstream reached directly goes through hyper-util's pooled client: rustls with the platform's trust
//! (the same verifier, protocol versions and ALPN — HTTP/2 where the provider offers it — as reqwest's),
//! a request built once from the parts the proxy already has. reqwest costs more per request than the
//! exchange itself on this path: it parses the URL of every request twice in its redirect layer (even with
//! redirects off), copies the header map and boxes a retry and a timeout layer around the send. Measured,
//! this client takes 6 % fewer instructions per request (issue #19, docs/benchmarks.md).
//!
//! An upstream the outbound proxy settings send through a proxy (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`,
//! `NO_PROXY`, read as reqwest reads them: [`crate::config::proxy`]) goes through reqwest, which tunnels
//! HTTPS with `CONNECT` and sends the proxy its credentials. Which path a provider takes is decided once,
//! from its base URL, when the router is built ([`UpstreamClient::proxied`]).
//!
//! Both paths: no redirects (an upstream that redirects is misconfigured, and following one with our API
//! key attached would leak it), `TCP_NODELAY`, idle connections kept 90 s, the connect timeout of the
//! target, the total timeout over the whole exchange — the answer's body included.

use super::providers::UpstreamError;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// An answer's body, chunk by chunk.
pub type BodyStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// How long an idle upstream connection is kept for the next request.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The upstream client of one connect timeout (targets share it by their timeout).
#[derive(Clone)]
pub struct UpstreamClient {
    direct: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Built on the first request through a proxy: most brokers never send one, and building it loads the
    /// platform's roots a second time.
    proxied: Arc<std::sync::OnceLock<reqwest::Client>>,
    connect_timeout: Duration,
    proxies: Arc<Matcher>,
}

/// An upstream's answer, up to its headers.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: BodyStream,
}

impl UpstreamClient {
    /// `proxies`: the outbound proxy settings ([`crate::config::proxy::ProxyEnv`]); the reqwest path asks
    /// them too, so both paths take the same decisions.
    pub fn new(connect_timeout: Duration, proxies: Arc<Matcher>) -> Self {
        Self::with_tls(connect_timeout, proxies, tls_config())
    }

    fn with_tls(
        connect_timeout: Duration,
        proxies: Arc<Matcher>,
        tls: rustls::ClientConfig,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        // The connector sees `https://` URLs too; the TLS layer above it takes them.
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let direct = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        UpstreamClient {
            direct,
            proxied: Arc::default(),
            connect_timeout,
            proxies,
        }
    }

    /// The reqwest client for upstreams behind a proxy: the same settings, the proxy from `proxies`.
    fn proxied_client(&self) -> &reqwest::Client {
        self.proxied.get_or_init(|| {
            let proxies = self.proxies.clone();
            reqwest::Client::builder()
                .connect_timeout(self.connect_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .pool_idle_timeout(POOL_IDLE)
                .tcp_nodelay(true)
                .no_proxy()
                .proxy(reqwest::Proxy::custom(move |url| proxy_url(&proxies, url)))
                .build()
                .unwrap_or_else(|_| reqwest::Client::new())
        })
    }

    /// Whether the outbound proxy settings send requests to `base` through a proxy (decided once per
    /// provider: its endpoints share the base URL's scheme and host).
    pub fn proxied(proxies: &Matcher, base: &str) -> bool {
        base.parse::<Uri>()
            .ok()
            .is_some_and(|u| proxies.intercept(&u).is_some())
    }

    /// POST `body` to `uri`, with `headers` as they are; the answer once its headers are here. The total
    /// timeout runs from now over the whole exchange: the answer's body fails with a timeout error when it
    /// has not ended by then.
    pub async fn post(
        &self,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
        proxied: bool,
        total_timeout: Duration,
    ) -> Result<Answer, UpstreamError> {
        if proxied {
            return self.post_proxied(uri, headers, body, total_timeout).await;
        }
        let deadline = Instant::now() + total_timeout;
        let mut req = Request::post(uri)
            .body(Full::new(body))
            .map_err(|e| UpstreamError::Transport(format!("request: {e}")))?;
        *req.headers_mut() = headers;
        let resp = match tokio::time::timeout_at(deadline, self.direct.request(req)).await {
            Err(_) => return Err(UpstreamError::Timeout),
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(r)) => r,
        };
        let (parts, body) = resp.into_parts();
        let body = body.into_data_stream().map_err(std::io::Error::other);
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: Deadline::new(body, deadline).boxed(),
        })
    }

    async fn post_proxied(
        &self,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
        total_timeout: Duration,
    ) -> Result<Answer, UpstreamError> {
        let url = reqwest::Url::parse(&uri.to_string())
            .map_err(|e| UpstreamError::Transport(format!("url: {e}")))?;
        let resp = self
            .proxied_client()
            .post(url)
            .headers(headers)
            .timeout(total_timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    UpstreamError::Timeout
                } else if e.is_connect() {
                    UpstreamError::Connect(e.without_url().to_string())
                } else {
                    UpstreamError::Transport(e.without_url().to_string())
                }
            })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes_stream()
            .map_err(|e| std::io::Error::other(e.without_url().to_string()))
            .boxed();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// The proxy for `url`, its credentials in the URL (reqwest sends them as `Proxy-Authorization`).
fn proxy_url(proxies: &Matcher, url: &reqwest::Url) -> Option<reqwest::Url> {
    let intercept = proxies.intercept(&url.as_str().parse::<Uri>().ok()?)?;
    let mut proxy = reqwest::Url::parse(&intercept.uri().to_string()).ok()?;
    if let Some((user, pass)) = intercept.raw_auth() {
        proxy.set_username(user).ok()?;
        proxy.set_password(Some(pass)).ok()?;
    }
    Some(proxy)
}

/// reqwest's TLS for upstreams, without reqwest: the broker's crypto provider ([`crate::tls::provider`]),
/// TLS 1.2 and 1.3, the platform verifier (the system's roots, `SSL_CERT_FILE`). The connector adds
/// ALPN: `h2`, then `http/1.1`.
fn tls_config() -> rustls::ClientConfig {
    let provider = crate::tls::provider();
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .expect("the provider supports TLS 1.2 and 1.3");
    match verifier {
        Ok(v) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(v))
            .with_no_client_auth(),
        // No platform roots could be loaded: Mozilla's would be a silent change of trust; fail closed
        // instead (every TLS connection is refused, and says so).
        Err(e) => {
            tracing::error!(error = %e, "no platform certificate verifier: upstream TLS will fail");
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    }
}

/// A failed send: a connect timeout is a timeout (as reqwest reports it), any other connect failure a
/// connect error, the rest transport. The message is the error's chain, which names no URL.
fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut chain = e.to_string();
    let mut timed_out = false;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
        }
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    if timed_out {
        UpstreamError::Timeout
    } else if e.is_connect() {
        UpstreamError::Connect(chain)
    } else {
        UpstreamError::Transport(chain)
    }
}

/// A body that fails with a timeout error once `deadline` passes before it ends.
struct Deadline<S> {
    inner: S,
    sleep: Pin<Box<Sleep>>,
    done: bool,
}

impl<S> Deadline<S> {
    fn new(inner: S, deadline: Instant) -> Self {
        Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            done: false,
        }
    }
}

impl<S> Stream for Deadline<S>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            Poll::Pending => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.done = true;
                    Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the upstream answer did not end within the total timeout",
                    ))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_settings_decide_per_base_url() {
        let m = Matcher::builder()
            .https("http://proxy.corp.example:3128")
            .no("internal.example,127.0.0.1")
            .build();
        assert!(UpstreamClient::proxied(&m, "https://api.openai.com/v1"));
        assert!(!UpstreamClient::proxied(
            &m,
            "https://llm.internal.example/v1"
        ));
        assert!(!UpstreamClient::proxied(&m, "http://127.0.0.1:8080/v1"));
        // HTTPS_PROXY only: plain-HTTP upstreams go direct.
        assert!(!UpstreamClient::proxied(&m, "http://api.example.com/v1"));
        let none = Matcher::builder().build();
        assert!(!UpstreamClient::proxied(&none, "https://api.openai.com/v1"));
        assert!(!UpstreamClient::proxied(&m, "not a url"));
    }

    /// An HTTPS upstream on 127.0.0.1 with a certificate for `localhost` from a test CA; HTTP/2 when the
    /// client offers it. Answers every request with its HTTP version and the body it got.
    async fn https_upstream(
        ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    ) -> std::net::SocketAddr {
        use hyper::service::service_fn;
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&leaf_key, ca)
            .expect("leaf");
        let mut cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .expect("server config");
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                        let version = format!("{:?}", req.version());
                        let body = req.into_body().collect().await?.to_bytes();
                        let mut out = version.into_bytes();
                        out.push(b' ');
                        out.extend_from_slice(&body);
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(out))))
                    });
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        addr
    }

    fn test_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().expect("key"))
            .expect("ca")
    }

    /// The client's TLS with `ca` as its only root (the platform verifier's roots are the machine's).
    fn client_trusting(ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) -> UpstreamClient {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).expect("root");
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        UpstreamClient::with_tls(
            Duration::from_secs(5),
            Arc::new(Matcher::builder().build()),
            tls,
        )
    }

    #[tokio::test]
    async fn https_upstreams_are_verified_and_speak_http2_when_offered() {
        let ca = test_ca("upstream ca");
        let addr = https_upstream(&ca).await;
        let uri: Uri = format!("https://localhost:{}/v1/responses", addr.port())
            .parse()
            .expect("uri");
        let client = client_trusting(&ca);
        let answer = client
            .post(
                uri.clone(),
                HeaderMap::new(),
                Bytes::from_static(b"{\"model\":\"m\"}"),
                false,
                Duration::from_secs(5),
            )
            .await
            .expect("an answer");
        assert_eq!(answer.status, StatusCode::OK);
        let body: Vec<Bytes> = answer.body.try_collect().await.expect("the body");
        assert_eq!(body.concat(), b"HTTP/2.0 {\"model\":\"m\"}");

        // A certificate from another CA is refused before anything is sent.
        let stranger = client_trusting(&test_ca("another ca"));
        let err = stranger
            .post(
                uri,
                HeaderMap::new(),
                Bytes::new(),
                false,
                Duration::from_secs(5),
            )
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(&err, UpstreamError::Connect(m) if m.contains("certificate")),
            "{err:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_outlives_the_total_timeout_fails_with_a_timeout() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, std::io::Error>>();
        tx.unbounded_send(Ok(Bytes::from_static(b"first")))
            .expect("send");
        let mut body = Deadline::new(rx, Instant::now() + Duration::from_secs(5));
        let first = body.next().await.expect("a chunk").expect("not an error");
        assert_eq!(first, "first");
        // Nothing more comes: the paused clock runs to the deadline.
        let err = body
            .next()
            .await
            .expect("an item")
            .expect_err("the timeout");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(body.next().await.is_none(), "ended after the timeout");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_in_time_is_passed_through() {
        let chunks =
            futures::stream::iter([Ok(Bytes::from_static(b"a")), Ok(Bytes::from_static(b"b"))]);
        let body = Deadline::new(chunks, Instant::now() + Duration::from_secs(5));
        let all: Vec<Bytes> = body.try_collect().await.expect("no error");
        assert_eq!(all, [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
    }
}
