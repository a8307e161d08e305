//! HTTPS to the provisioning service and the hub: rustls (client certificates
//! signed through keyd, never exported), a CONNECT tunnel through the
//! configured proxy or the one `https_proxy` names, a timeout per request, and retries with
//! exponential backoff and jitter when the service is unreachable or answers
//! 5xx / 429. Errors name the endpoint and the status the service answered.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use edgeid_certd::signer::KeydKey;
use edgeid_common::encoding::SecretString;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use zeroize::Zeroizing;

use crate::config::CloudConfig;
use crate::error::Error;

/// Largest answer read from a service.
const MAX_RESPONSE: usize = 1 << 20;

/// A TLS client identity: a chain (DER, leaf first) and its key in keyd.
pub type Identity = (Vec<Vec<u8>>, Arc<KeydKey>);

/// One request to a service.
pub struct Call<'a> {
    /// The method.
    pub method: Method,
    /// `host` or `host:port`.
    pub authority: &'a str,
    /// Path and query.
    pub path: String,
    /// An `Authorization` header (a SAS token).
    pub authorization: Option<SecretString>,
    /// A TLS client identity.
    pub identity: Option<Identity>,
    /// A JSON body.
    pub body: Option<serde_json::Value>,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
}

impl<'a> Call<'a> {
    /// A request with no body, credentials or extra headers.
    pub fn new(method: Method, authority: &'a str, path: String) -> Self {
        Self {
            method,
            authority,
            path,
            authorization: None,
            identity: None,
            body: None,
            headers: Vec::new(),
        }
    }

    /// What errors call this request: host and path, no query.
    pub fn endpoint(&self) -> String {
        let path = self.path.split('?').next().unwrap_or_default();
        format!("{} {}{path}", self.method, self.authority)
    }
}

/// A service's answer.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// `Retry-After`, in seconds, when given.
    pub retry_after: Option<Duration>,
    /// The body.
    pub body: Bytes,
    /// The request, for errors.
    pub endpoint: String,
}

impl Reply {
    /// The body as `T`, if the status is a success; otherwise the error that names it.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        if !self.status.is_success() {
            return Err(self.refusal());
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::Upstream(format!(
                "{} answered {} with a body that is not the expected JSON: {e}",
                self.endpoint, self.status
            ))
        })
    }

    /// The error for an answer that refused the request.
    pub fn refusal(&self) -> Error {
        let text: String = String::from_utf8_lossy(&self.body)
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect();
        Error::Cloud {
            endpoint: self.endpoint.clone(),
            status: self.status,
            message: if text.trim().is_empty() {
                "(no message)".into()
            } else {
                text.trim().to_owned()
            },
        }
    }
}

/// An HTTP proxy: configured, or from `https_proxy`.
#[derive(Debug, Clone)]
struct Proxy {
    authority: String,
    /// `Proxy-Authorization` for `user:password@` in the URL.
    basic: Option<Zeroizing<String>>,
}

impl Proxy {
    /// The configured proxy (`"none"`: none), else `https_proxy` /
    /// `HTTPS_PROXY` unless `no_proxy` names `host`.
    fn choose(configured: Option<&str>, host: &str) -> Result<Option<Self>, Error> {
        if let Some(url) = configured {
            return if url == "none" {
                Ok(None)
            } else {
                Self::parse(url)
            };
        }
        let Some(url) = ["https_proxy", "HTTPS_PROXY"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        else {
            return Ok(None);
        };
        let no_proxy = ["no_proxy", "NO_PROXY"]
            .iter()
            .find_map(|v| std::env::var(v).ok())
            .unwrap_or_default();
        let excluded = no_proxy.split(',').map(str::trim).any(|n| {
            n == "*"
                || (!n.is_empty()
                    && (host == n.trim_start_matches('.')
                        || host.ends_with(&format!(".{}", n.trim_start_matches('.')))))
        });
        if excluded {
            return Ok(None);
        }
        Self::parse(&url)
    }

    /// An `http://[user:password@]host[:port]` proxy URL.
    fn parse(url: &str) -> Result<Option<Self>, Error> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| Error::Setup(format!("proxy '{url}' is not a URL: {e}")))?;
        if uri.scheme_str().is_some_and(|s| s != "http") {
            return Err(Error::Setup(format!(
                "proxy '{url}': only http:// proxies are supported"
            )));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| Error::Setup(format!("proxy '{url}' has no host")))?;
        let (userinfo, hostport) = match authority.as_str().rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority.as_str()),
        };
        let hostport = if hostport.contains(':') {
            hostport.to_owned()
        } else {
            format!("{hostport}:80")
        };
        Ok(Some(Self {
            authority: hostport,
            basic: userinfo.map(|u| Zeroizing::new(format!("Basic {}", STANDARD.encode(u)))),
        }))
    }
}

/// The HTTPS client.
#[derive(Clone)]
pub struct Cloud {
    roots: Arc<RootCertStore>,
    proxy: Option<String>,
    timeout: Duration,
    attempts: u32,
    retry_min: Duration,
    retry_max: Duration,
}

impl Cloud {
    /// A client trusting the configured anchors, or the system's store;
    /// with `offline` (local provisioning) it trusts nothing and reads nothing.
    pub fn new(config: &CloudConfig, offline: bool) -> Result<Self, Error> {
        let mut roots = RootCertStore::empty();
        match &config.trust_anchors {
            _ if offline => {}
            Some(path) => {
                let text = std::fs::read(path).map_err(|e| {
                    Error::Setup(format!(
                        "cannot read cloud.trust_anchors {}: {e}",
                        path.display()
                    ))
                })?;
                let blocks = pem::parse_many(&text).map_err(|e| {
                    Error::Setup(format!("cloud.trust_anchors {}: {e}", path.display()))
                })?;
                for block in blocks.iter().filter(|b| b.tag() == "CERTIFICATE") {
                    roots
                        .add(CertificateDer::from(block.contents().to_vec()))
                        .map_err(|e| {
                            Error::Setup(format!("cloud.trust_anchors {}: {e}", path.display()))
                        })?;
                }
                if roots.is_empty() {
                    return Err(Error::Setup(format!(
                        "cloud.trust_anchors {} holds no certificate",
                        path.display()
                    )));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    tracing::warn!(
                        "no CA certificates found in the system store; cloud TLS will fail (install ca-certificates or set cloud.trust_anchors)"
                    );
                }
            }
        }
        if let Some(p) = config.proxy.as_deref().filter(|p| *p != "none") {
            Proxy::parse(p)?;
        }
        Ok(Self {
            roots: Arc::new(roots),
            proxy: config.proxy.clone(),
            timeout: Duration::from_secs(config.timeout_secs.max(1)),
            attempts: config.attempts.max(1),
            retry_min: Duration::from_millis(config.retry_min_ms.max(1)),
            retry_max: Duration::from_secs(config.retry_max_secs.max(1)),
        })
    }

    /// Sends `call`, retrying while the service is unreachable or answers 5xx
    /// or 429, and returns the last answer (whatever its status).
    pub async fn send(&self, call: &Call<'_>) -> Result<Reply, Error> {
        let mut attempt = 1;
        loop {
            let outcome = self.once(call).await;
            let retry_after = match &outcome {
                Ok(r)
                    if r.status.is_server_error() || r.status == StatusCode::TOO_MANY_REQUESTS =>
                {
                    r.retry_after
                }
                Err(Error::Unavailable(_)) => None,
                _ => return outcome,
            };
            if attempt >= self.attempts {
                return outcome;
            }
            let wait = retry_after
                .unwrap_or_else(|| self.backoff(attempt))
                .min(self.retry_max);
            match &outcome {
                Ok(r) => {
                    tracing::warn!(endpoint = %r.endpoint, status = %r.status, attempt, wait_ms = wait.as_millis() as u64, "cloud service failed; retrying")
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, wait_ms = wait.as_millis() as u64, "cloud service unreachable; retrying")
                }
            }
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Full jitter: a random wait between half and all of `min * 2^(attempt-1)`.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .retry_min
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(self.retry_max);
        let mut byte = [0u8; 1];
        let _ = aws_lc_rs::rand::fill(&mut byte);
        ceiling / 2 + ceiling / 2 * u32::from(byte[0]) / 255
    }

    /// One attempt.
    pub async fn once(&self, call: &Call<'_>) -> Result<Reply, Error> {
        let endpoint = call.endpoint();
        let unreachable = |why: String| Error::Unavailable(format!("{endpoint}: {why}"));
        let (host, port) = split_authority(call.authority)
            .map_err(|e| Error::BadRequest(format!("{endpoint}: {e}")))?;
        let proxy = Proxy::choose(self.proxy.as_deref(), host)?;
        let exchange = async {
            let tcp = match &proxy {
                None => tokio::net::TcpStream::connect((host, port))
                    .await
                    .map_err(|e| unreachable(e.to_string()))?,
                Some(p) => tokio::net::TcpStream::connect(p.authority.as_str())
                    .await
                    .map_err(|e| unreachable(format!("proxy {}: {e}", p.authority)))?,
            };
            match &proxy {
                None => self.exchange(call, host, port, tcp).await,
                Some(p) => {
                    let tunnel = connect_tunnel(p, host, port, tcp)
                        .await
                        .map_err(|e| unreachable(format!("proxy {}: {e}", p.authority)))?;
                    self.exchange(call, host, port, tunnel).await
                }
            }
        };
        let (status, retry_after, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {}s", self.timeout.as_secs())))??;
        Ok(Reply {
            status,
            retry_after,
            body,
            endpoint,
        })
    }

    /// TLS over `io`, then one HTTP/1.1 request.
    async fn exchange<S>(
        &self,
        call: &Call<'_>,
        host: &str,
        port: u16,
        io: S,
    ) -> Result<(StatusCode, Option<Duration>, Bytes), Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let endpoint = call.endpoint();
        let unreachable = |why: String| Error::Unavailable(format!("{endpoint}: {why}"));
        let tls =
            edgeid_certd::signer::tls_client_config(self.roots.clone(), call.identity.clone());
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| Error::BadRequest(format!("{endpoint}: host '{host}': {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, io)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let host_header = if port == 443 {
            host.to_owned()
        } else {
            format!("{host}:{port}")
        };
        let mut req = Request::builder()
            .method(call.method.clone())
            .uri(call.path.as_str())
            .header(http::header::HOST, host_header)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("edgeid-identityd/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(auth) = &call.authorization {
            let mut value = HeaderValue::from_str(auth)
                .map_err(|_| Error::Internal("a SAS token is not a valid header".into()))?;
            value.set_sensitive(true);
            req = req.header(http::header::AUTHORIZATION, value);
        }
        for (name, value) in &call.headers {
            req = req.header(*name, value.as_str());
        }
        let body = match &call.body {
            Some(json) => {
                req = req.header(
                    http::header::CONTENT_TYPE,
                    "application/json; charset=utf-8",
                );
                Bytes::from(serde_json::to_vec(json).map_err(|e| Error::Internal(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| Error::Internal(format!("{endpoint}: {e}")))?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, retry_after, bytes))
    }
}

/// `CONNECT host:port` through an HTTP proxy; the tunnel once it answers 200.
async fn connect_tunnel(
    proxy: &Proxy,
    host: &str,
    port: u16,
    tcp: tokio::net::TcpStream,
) -> Result<TokioIo<hyper::upgrade::Upgraded>, String> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let target = format!("{host}:{port}");
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(target.as_str())
        .header(http::header::HOST, target.as_str());
    if let Some(basic) = &proxy.basic {
        let mut value = HeaderValue::from_str(basic).map_err(|e| e.to_string())?;
        value.set_sensitive(true);
        req = req.header(http::header::PROXY_AUTHORIZATION, value);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if response.status() != StatusCode::OK {
        return Err(format!("CONNECT {target} answered {}", response.status()));
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| e.to_string())?;
    Ok(TokioIo::new(upgraded))
}

/// `host[:port]` (port 443 if absent).
pub fn split_authority(authority: &str) -> Result<(&str, u16), String> {
    match authority.rsplit_once(':') {
        Some((host, port)) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .map(|p| (host, p))
            .ok_or_else(|| format!("'{authority}' has a bad port")),
        None => Ok((authority, 443)),
    }
}

/// The authority of an `https://` URL (DPS's global endpoint).
pub fn authority_of(url: &str) -> Result<String, Error> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| Error::Setup(format!("'{url}' is not a URL: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(Error::Setup(format!("'{url}' must be an https:// URL")));
    }
    uri.authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| Error::Setup(format!("'{url}' has no host")))
}
