//! Listeners: login, Graph and ARM each on their own port (HTTP, or HTTPS with a CA generated at start),
//! an optional HTTPS proxy that answers CONNECT for Microsoft's own host names, and the ready line.
//!
//! The proxy lets unmodified tools (Microsoft's SDKs, other vendors' connectors) talk to the emulator:
//! with `HTTPS_PROXY=http://{proxy}` and `SSL_CERT_FILE={ca_file}`, a request to
//! `https://graph.microsoft.com/v1.0/users` reaches the emulated Graph.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::SimError;
use crate::auth::Keys;
use crate::ctx::{Settings, Sim};
use crate::generate::{CONNECTOR_APP, READER_APP};
use crate::model::Tenant;
use crate::store::State;

/// How to run the emulator.
pub struct Options {
    pub tenant: Tenant,
    pub settings: Settings,
    /// Address to bind; port 0 picks free ports, port P uses P, P+1 and P+2.
    pub listen: SocketAddr,
    pub tls: bool,
    /// Address for the CONNECT proxy (implies a CA, even without `tls`).
    pub proxy: Option<SocketAddr>,
    /// Where the CA certificate is written.
    pub state_dir: PathBuf,
}

/// The one JSON line `steward sim serve` prints when ready.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Ready {
    pub login: String,
    pub graph: String,
    pub arm: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub ca_file: Option<String>,
    /// `host:port` of the CONNECT proxy, when started.
    pub proxy: Option<String>,
    /// An app with read permissions only (for testing refusals).
    pub reader_client_id: Option<String>,
    pub reader_client_secret: Option<String>,
}

pub struct Running {
    pub ready: Ready,
    pub sim: Arc<Sim>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn app_credentials(t: &Tenant, name: &str) -> (Option<String>, Option<String>) {
    let app = t.applications.iter().find(|a| a.display_name == name);
    (
        app.map(|a| a.app_id.to_string()),
        app.and_then(|a| a.secrets.first()).map(|s| s.secret.clone()),
    )
}

/// A CA and a leaf certificate for the emulator's own names and Microsoft's.
pub struct Pki {
    pub ca_pem: String,
    pub acceptor: TlsAcceptor,
}

pub const MICROSOFT_HOSTS: &[(&str, &str)] = &[
    ("login.microsoftonline.com", "login"),
    ("login.microsoftonline.us", "login"),
    ("login.chinacloudapi.cn", "login"),
    ("login.windows.net", "login"),
    ("graph.microsoft.com", "graph"),
    ("graph.microsoft.us", "graph"),
    ("dod-graph.microsoft.us", "graph"),
    ("microsoftgraph.chinacloudapi.cn", "graph"),
    ("management.azure.com", "arm"),
    ("management.usgovcloudapi.net", "arm"),
    ("management.chinacloudapi.cn", "arm"),
];

pub fn make_pki() -> Result<Pki, SimError> {
    let tls = |e: rcgen::Error| SimError::Tls(e.to_string());
    let ca_key = rcgen::KeyPair::generate().map_err(tls)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Steward tenant emulator CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(tls)?;
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    names.extend(MICROSOFT_HOSTS.iter().map(|(h, _)| h.to_string()));
    let leaf_key = rcgen::KeyPair::generate().map_err(tls)?;
    let mut leaf_params = rcgen::CertificateParams::new(names).map_err(tls)?;
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Steward tenant emulator");
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(tls)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SimError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .map_err(|e| SimError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Pki {
        ca_pem: ca.pem(),
        acceptor: TlsAcceptor::from(Arc::new(cfg)),
    })
}

/// Marks requests with the scheme they arrived on (handlers build absolute URLs from it). A client-sent
/// value is overwritten.
fn with_scheme(router: Router, https: bool) -> Router {
    router.layer(tower::util::MapRequestLayer::new(
        move |mut req: axum::extract::Request| {
            // HTTP/2 carries the host in :authority, not in a Host header; handlers read Host.
            if !req.headers().contains_key(http::header::HOST)
                && let Some(v) = req
                    .uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers_mut().insert(http::header::HOST, v);
            }
            req.headers_mut().insert(
                "x-steward-scheme",
                HeaderValue::from_static(if https { "https" } else { "http" }),
            );
            req
        },
    ))
}

async fn serve_conn<S>(stream: S, router: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = TowerToHyperService::new(router);
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .await;
}

fn spawn_listener(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.changed() => break,
            };
            let Ok((stream, _)) = accepted else { continue };
            let _ = stream.set_nodelay(true);
            let router = router.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acc) => {
                        if let Ok(s) = acc.accept(stream).await {
                            serve_conn(s, router).await;
                        }
                    }
                    None => serve_conn(stream, router).await,
                }
            });
        }
    })
}

async fn bind(ip: IpAddr, port: u16) -> Result<TcpListener, SimError> {
    TcpListener::bind(SocketAddr::new(ip, port)).await.map_err(|e| {
        SimError::Config(format!(
            "cannot listen on {ip}:{port}: {e} (choose another --listen address or port 0)"
        ))
    })
}

pub async fn start(opts: Options) -> Result<Running, SimError> {
    opts.tenant
        .validate()
        .map_err(|e| SimError::Config(e.to_string()))?;
    let keys = Keys::generate()?;
    let (client_id, client_secret) = app_credentials(&opts.tenant, CONNECTOR_APP);
    let (reader_id, reader_secret) = app_credentials(&opts.tenant, READER_APP);
    let tenant_id = opts.tenant.tenant_id.to_string();
    let sim = Arc::new(Sim::new(State::new(opts.tenant), keys, opts.settings));
    let pki = if opts.tls || opts.proxy.is_some() {
        Some(make_pki()?)
    } else {
        None
    };
    let ca_file = match &pki {
        Some(p) => {
            std::fs::create_dir_all(&opts.state_dir)?;
            let path = opts.state_dir.join("ca.pem");
            std::fs::write(&path, &p.ca_pem)?;
            Some(path.display().to_string())
        }
        None => None,
    };
    let acceptor = if opts.tls {
        pki.as_ref().map(|p| p.acceptor.clone())
    } else {
        None
    };
    let ip = opts.listen.ip();
    let port = opts.listen.port();
    let (tx, rx) = watch::channel(false);
    let routers = [
        crate::auth::router(sim.clone()),
        crate::graph::router(sim.clone()),
        crate::arm::router(sim.clone()),
    ];
    let mut urls = Vec::new();
    let mut tasks = Vec::new();
    let host = if ip.is_unspecified() {
        "127.0.0.1".to_string()
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    for (k, r) in routers.iter().enumerate() {
        let l = bind(ip, if port == 0 { 0 } else { port + k as u16 }).await?;
        let addr = l.local_addr()?;
        urls.push(format!(
            "{}://{host}:{}",
            if opts.tls { "https" } else { "http" },
            addr.port()
        ));
        tasks.push(spawn_listener(
            l,
            with_scheme(r.clone(), opts.tls),
            acceptor.clone(),
            rx.clone(),
        ));
    }
    let mut proxy_addr = None;
    if let (Some(addr), Some(p)) = (opts.proxy, &pki) {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| SimError::Config(format!("cannot listen on --proxy {addr}: {e}")))?;
        proxy_addr = Some(l.local_addr()?.to_string());
        let by_kind = [
            ("login", with_scheme(routers[0].clone(), true)),
            ("graph", with_scheme(routers[1].clone(), true)),
            ("arm", with_scheme(routers[2].clone(), true)),
        ];
        tasks.push(spawn_proxy(
            l,
            by_kind,
            p.acceptor.clone(),
            rx.clone(),
            sim.clone(),
        ));
    }
    Ok(Running {
        ready: Ready {
            login: urls[0].clone(),
            graph: urls[1].clone(),
            arm: urls[2].clone(),
            tenant_id,
            client_id: client_id.unwrap_or_default(),
            client_secret: client_secret.unwrap_or_default(),
            ca_file,
            proxy: proxy_addr,
            reader_client_id: reader_id,
            reader_client_secret: reader_secret,
        },
        sim,
        shutdown: tx,
        tasks,
    })
}

fn spawn_proxy(
    listener: TcpListener,
    routers: [(&'static str, Router); 3],
    acceptor: TlsAcceptor,
    mut stop: watch::Receiver<bool>,
    sim: Arc<Sim>,
) -> tokio::task::JoinHandle<()> {
    let routers = Arc::new(routers);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.changed() => break,
            };
            let Ok((stream, _)) = accepted else { continue };
            let routers = routers.clone();
            let acceptor = acceptor.clone();
            let sim = sim.clone();
            tokio::spawn(async move {
                let _ = proxy_conn(stream, &routers, acceptor, &sim).await;
            });
        }
    })
}

/// One proxy connection: read `CONNECT host:443`, answer 200, then speak TLS as that host.
async fn proxy_conn(
    mut stream: TcpStream,
    routers: &[(&str, Router); 3],
    acceptor: TlsAcceptor,
    sim: &Sim,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let first = text.lines().next().unwrap_or("");
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !method.eq_ignore_ascii_case("CONNECT") {
        let msg = "The emulator's proxy only tunnels HTTPS (CONNECT) to Microsoft's hosts.\n";
        let resp = format!(
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
            msg.len()
        );
        stream.write_all(resp.as_bytes()).await?;
        return Ok(());
    }
    let host = target
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(target)
        .to_ascii_lowercase();
    let Some(kind) = MICROSOFT_HOSTS.iter().find(|(h, _)| *h == host).map(|(_, k)| *k) else {
        let msg = format!("The emulator's proxy answers only for Microsoft's hosts, not '{host}'.\n");
        let resp = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
            msg.len()
        );
        stream.write_all(resp.as_bytes()).await?;
        return Ok(());
    };
    sim.stats.tunnel(&host);
    stream
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await?;
    let Some(router) = routers.iter().find(|(k, _)| *k == kind).map(|(_, r)| r.clone()) else {
        return Ok(());
    };
    let tls = acceptor.accept(stream).await?;
    serve_conn(tls, router).await;
    Ok(())
}

/// A response whose connection breaks before the body arrives (the `reset` fault).
pub fn reset_response() -> Response {
    let stream = futures::stream::iter(vec![Err::<Bytes, std::io::Error>(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "injected reset",
    ))]);
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert("content-length", HeaderValue::from_static("1024"));
    r
}

/// Sends the headers and half the body of `resp`, then breaks the connection (the `truncate` fault).
pub async fn truncate_response(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let half = bytes.slice(..bytes.len() / 2);
    if let Ok(v) = HeaderValue::from_str(&bytes.len().max(1).to_string()) {
        parts.headers.insert("content-length", v);
    }
    let stream = futures::stream::iter(vec![
        Ok(half),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected truncation",
        )),
    ]);
    Response::from_parts(parts, Body::from_stream(stream)).into_response()
}
