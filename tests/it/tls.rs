//! TLS on both ports with certificates made here (rcgen): HTTPS and gRPC over TLS, plain text
//! refused, mutual TLS refusing a client without a certificate (or with one from another CA),
//! a rotated certificate served without a restart while a half-written rotation is not, and
//! bad files failing the start with the file named.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use cairn::config::ServerConfig;
use cairn::server::RunningServer;
use cairn::tls::TlsFiles;

use crate::common::{Repo, TestServer};

/// A CA that signs server and client certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM, DER).
    fn leaf(&self, name: &str) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// Writes a file whole, by rename, as a careful operator's rotation does.
fn put(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Client {
    roots: rustls::RootCertStore,
    identity: Option<(String, String)>,
}

impl Client {
    fn trusting(ca: &Ca) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile_certs(&ca.pem) {
            roots.add(cert).unwrap();
        }
        Client {
            roots,
            identity: None,
        }
    }

    fn with_identity(mut self, cert_pem: &str, key_pem: &str) -> Client {
        self.identity = Some((cert_pem.to_string(), key_pem.to_string()));
        self
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        alpn: &[u8],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        use rustls::pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots.clone());
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    rustls_pemfile_certs(cert),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        connector.connect(name, tcp).await
    }

    /// `GET path` over HTTPS (HTTP/1.1) on a new connection.
    async fn get(&self, addr: SocketAddr, path: &str) -> Result<(StatusCode, Bytes), String> {
        let tls = self
            .connect(addr, b"http/1.1")
            .await
            .map_err(|e| e.to_string())?;
        https_get(tls, path).await
    }
}

async fn https_get(tls: TlsStream<TcpStream>, path: &str) -> Result<(StatusCode, Bytes), String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(format!("https://127.0.0.1{path}"))
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    let status = answer.status();
    let body = answer
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes()))
}

fn rustls_pemfile_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// `ServerLive` by hand over TLS and HTTP/2: a gRPC frame holding an empty message, answered by
/// a frame holding `live = true` (field 1, varint 1) and `grpc-status: 0`.
async fn grpc_server_live(tls: TlsStream<TcpStream>) -> Result<(Bytes, String), String> {
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::post("https://127.0.0.1/inference.GRPCInferenceService/ServerLive")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let answer = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let collected = answer
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Ok((collected.to_bytes(), status))
}

struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new(ca: &Ca, name: &str) -> (Certs, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs { dir };
        let (cert, key, der) = ca.leaf(name);
        put(&certs.cert(), &cert);
        put(&certs.key(), &key);
        put(&certs.dir.path().join("ca.pem"), &ca.pem);
        (certs, der)
    }

    fn cert(&self) -> std::path::PathBuf {
        self.dir.path().join("server.pem")
    }

    fn key(&self) -> std::path::PathBuf {
        self.dir.path().join("server.key")
    }

    fn files(&self, mutual: bool) -> TlsFiles {
        TlsFiles {
            cert: self.cert(),
            key: self.key(),
            client_ca: mutual.then(|| self.dir.path().join("ca.pem")),
        }
    }
}

fn addrs(s: &TestServer) -> (SocketAddr, SocketAddr) {
    let server = s.server.as_ref().unwrap();
    (server.addr, server.grpc_addr.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_grpc_over_tls_work_and_plain_text_is_refused() {
    let ca = Ca::new("cairn test CA");
    let (certs, _) = Certs::new(&ca, "server");
    let files = certs.files(false);
    let s = TestServer::start_with(Repo::with(&["iris"]), |c| c.tls = Some(files)).await;
    let (http, grpc) = addrs(&s);
    let client = Client::trusting(&ca);

    let (status, _) = client.get(http, "/v2/health/ready").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    // HTTP/2 over TLS on the HTTP port too (ALPN h2).
    let tls = client.connect(http, b"h2").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let tls = client.connect(grpc, b"h2").await.unwrap();
    let (body, status) = grpc_server_live(tls).await.unwrap();
    assert_eq!(status, "0");
    assert_eq!(&body[..], &[0, 0, 0, 0, 2, 0x08, 0x01], "live = true");

    // A plain-text request to the TLS port gets no answer, and is counted.
    let plain = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        plain.get(format!("http://{http}/v2/health/live").parse().unwrap()),
    )
    .await
    .expect("the server closes a plain-text connection");
    assert!(refused.is_err(), "plain text answered: {refused:?}");
    let (_, metrics) = client.get(http, "/metrics").await.unwrap();
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(
        metrics.contains("cairn_tls_handshake_failures_total{listener=\"http\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("tls"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate_of_its_ca() {
    let ca = Ca::new("cairn test CA");
    let (certs, _) = Certs::new(&ca, "server");
    let files = certs.files(true);
    let s = TestServer::start_with(Repo::with(&["iris"]), |c| c.tls = Some(files)).await;
    let (http, grpc) = addrs(&s);

    let anonymous = Client::trusting(&ca);
    assert!(
        anonymous.get(http, "/v2/health/live").await.is_err(),
        "a client without a certificate was answered"
    );
    let grpc_refused = match anonymous.connect(grpc, b"h2").await {
        Err(_) => true,
        Ok(tls) => grpc_server_live(tls).await.is_err(),
    };
    assert!(
        grpc_refused,
        "a gRPC client without a certificate was answered"
    );

    let other = Ca::new("another CA");
    let (cert, key, _) = other.leaf("intruder");
    let intruder = Client::trusting(&ca).with_identity(&cert, &key);
    assert!(
        intruder.get(http, "/v2/health/live").await.is_err(),
        "a client certificate of another CA was accepted"
    );

    let (cert, key, _) = ca.leaf("client");
    let known = Client::trusting(&ca).with_identity(&cert, &key);
    let (status, _) = known.get(http, "/v2/health/live").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let tls = known.connect(grpc, b"h2").await.unwrap();
    let (_, status) = grpc_server_live(tls).await.unwrap();
    assert_eq!(status, "0");
}

/// The certificate a new connection is served.
async fn served(client: &Client, addr: SocketAddr) -> Vec<u8> {
    let tls = client.connect(addr, b"http/1.1").await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Waits (up to a generous deadline, never as a test of speed) until new connections on `addr`
/// are served `want`.
async fn until_served(client: &Client, addr: SocketAddr, want: &[u8]) {
    for _ in 0..300 {
        if served(client, addr).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the rotated certificate was never served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_restart() {
    let ca = Ca::new("cairn test CA");
    let (certs, first) = Certs::new(&ca, "first");
    let files = certs.files(false);
    let s = TestServer::start_with(Repo::with(&["iris"]), |c| c.tls = Some(files)).await;
    let (http, grpc) = addrs(&s);
    let client = Client::trusting(&ca);
    assert_eq!(served(&client, http).await, first);
    // A connection opened before the rotation keeps working after it.
    let (mut kept, conn) = hyper::client::conn::http1::handshake(TokioIo::new(
        client.connect(http, b"http/1.1").await.unwrap(),
    ))
    .await
    .unwrap();
    tokio::spawn(conn);

    // Half a rotation: the new certificate beside the old key. It does not build, so the first
    // certificate keeps serving.
    let (cert, key, second) = ca.leaf("second");
    put(&certs.cert(), &cert);
    let mut errors = 0.0;
    for _ in 0..300 {
        let (_, metrics) = client.get(http, "/metrics").await.unwrap();
        errors = metric(&metrics, "cairn_tls_reloads_total{result=\"error\"}");
        if errors > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(errors > 0.0, "the half-written rotation was never seen");
    assert_eq!(served(&client, http).await, first);

    // The key arrives: the second certificate serves new connections on both ports.
    put(&certs.key(), &key);
    until_served(&client, http, &second).await;
    let tls = client.connect(grpc, b"h2").await.unwrap();
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
        second
    );
    let (_, status) = grpc_server_live(tls).await.unwrap();
    assert_eq!(status, "0");

    let req = Request::get("https://127.0.0.1/v2/health/live")
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = kept.send_request(req).await.unwrap();
    assert_eq!(
        answer.status(),
        StatusCode::OK,
        "the connection from before"
    );
    let (_, metrics) = client.get(http, "/metrics").await.unwrap();
    assert!(metric(&metrics, "cairn_tls_reloads_total{result=\"ok\"}") >= 1.0);
}

fn metric(text: &[u8], series: &str) -> f64 {
    String::from_utf8_lossy(text)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_fail_the_start_naming_the_file() {
    let ca = Ca::new("cairn test CA");
    let (certs, _) = Certs::new(&ca, "server");
    let repo = Repo::with(&["iris"]);
    let start = |files: TlsFiles| {
        let mut config = ServerConfig::for_repository(repo.path());
        config.tls = Some(files);
        RunningServer::start(config)
    };

    let missing = TlsFiles {
        cert: certs.dir.path().join("nope.pem"),
        ..certs.files(false)
    };
    let e = start(missing).await.err().expect("a missing file fails");
    assert!(e.to_string().contains("nope.pem"), "{e}");

    std::fs::write(certs.key(), "not a key").unwrap();
    let e = start(certs.files(false))
        .await
        .err()
        .expect("a bad key fails");
    assert!(e.to_string().contains("server.key"), "{e}");

    let (_, other_key, _) = ca.leaf("other");
    std::fs::write(certs.key(), other_key).unwrap();
    let e = start(certs.files(false))
        .await
        .err()
        .expect("a key of another certificate fails");
    assert!(
        e.to_string().contains("does not go with the certificate"),
        "{e}"
    );

    std::fs::write(certs.dir.path().join("ca.pem"), "").unwrap();
    let (cert, key, _) = ca.leaf("server");
    std::fs::write(certs.cert(), cert).unwrap();
    std::fs::write(certs.key(), key).unwrap();
    let e = start(certs.files(true))
        .await
        .err()
        .expect("an empty client CA fails");
    assert!(e.to_string().contains("ca.pem"), "{e}");
}
