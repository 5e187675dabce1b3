//! Writes the seed corpora in `fuzz/seeds/TARGET/`: real examples of
//! each target's input, made by the real producers where there is one
//! (rustls' ClientHello, hyper's HTTP/2 client, rcgen's certificates,
//! `linnet control` answering for `examples/mesh.yaml`).
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example seeds
//!
//! Byte-stream seeds start with the two-byte [`Head`]. Rerun it when an
//! input format changes; review the difference before committing it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use linkerd2_proxy_api::{destination as dst, identity, inbound, outbound};
use linnet_fuzz::{Head, frame};
use linnet_tls::rustls;
use prost::Message;
use std::{
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = root.join("seeds");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut w = Writer::new(&seeds);
    detect(&mut w);
    tls_client_hello(&mut w);
    transport_header(&mut w);
    identity_der(&mut w);
    rt.block_on(http_proxy(&mut w));
    rt.block_on(control_plane(&mut w, &root.join("../examples/mesh.yaml")));
    control_api(&mut w);
    mesh_file(&mut w, &root.join("../examples/mesh.yaml"));
    kubernetes(&mut w);
    println!("wrote {} seeds under {}", w.count, seeds.display());
}

/// Writes seed files, replacing each target's directory.
struct Writer {
    dir: PathBuf,
    count: usize,
}

impl Writer {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            count: 0,
        }
    }

    fn target(&mut self, name: &str) {
        let d = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
    }

    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        std::fs::write(self.dir.join(target).join(name), bytes).unwrap();
        self.count += 1;
    }

    /// A byte-stream seed: head, then the bytes.
    fn stream(&mut self, target: &str, name: &str, flags: u8, cuts: u8, bytes: &[u8]) {
        let mut v = Head { flags, cuts }.bytes().to_vec();
        v.extend_from_slice(bytes);
        self.put(target, name, &v);
    }
}

// === detect ===

fn detect(w: &mut Writer) {
    w.target("detect");
    let hello = rustls_hello(
        "web.default.serviceaccount.identity.linkerd.cluster.local",
        &[b"transport.l5d.io/v1"],
    );
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 1500));
    long.extend_from_slice(b" HTTP/1.1\r\nHost: web\r\n\r\n");
    let mut h2 = H2_PREFACE.to_vec();
    h2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
    let cases: [(&str, &[u8]); 8] = [
        (
            "http1",
            b"GET / HTTP/1.1\r\nHost: web.default.svc.cluster.local\r\n\r\n",
        ),
        (
            "http1-blank-lines",
            b"\r\n\r\nPOST /x HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
        ),
        ("http1-long-target", &long),
        ("http2", &h2),
        ("tls", &hello),
        ("ssh", b"SSH-2.0-OpenSSH_9.6\r\n"),
        ("smtp-like", b"EHLO mail.example.com\r\n"),
        ("binary", &[0x00, 0x01, 0x16, 0x03, 0xff, 0x80]),
    ];
    for (name, bytes) in cases {
        w.stream("detect", &format!("{name}-whole"), 0, 0, bytes);
        w.stream("detect", &format!("{name}-bytes"), 0, 0x01, bytes);
        w.stream("detect", &format!("{name}-stalls"), 1, 0x15, bytes);
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// === tls_client_hello ===

/// A ClientHello as rustls sends it (the mesh's TLS 1.3 provider, or
/// rustls' defaults), first record only.
fn rustls_hello_with(
    provider: Arc<rustls::crypto::CryptoProvider>,
    sni: &str,
    alpn: &[&[u8]],
) -> Vec<u8> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

fn rustls_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
    rustls_hello_with(linnet_tls::provider(), sni, alpn)
}

fn tls_client_hello(w: &mut Writer) {
    w.target("tls_client_hello");
    let mesh = rustls_hello(
        "web.default.serviceaccount.identity.linkerd.cluster.local",
        &[b"transport.l5d.io/v1"],
    );
    let default = rustls_hello_with(
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        "api.example.com",
        &[b"h2", b"http/1.1"],
    );
    let ip = rustls_hello("10.0.0.1", &[]);
    let built = linnet_detect::test_util::client_hello(Some("Web.Example.COM"), 16);
    let no_sni = linnet_detect::test_util::client_hello(None, 0);
    for (name, record) in [
        ("rustls-mesh", &mesh),
        ("rustls-default", &default),
        ("rustls-ip", &ip),
        ("built-upper-case", &built),
        ("built-no-sni", &no_sni),
    ] {
        // As sent...
        let mut raw = vec![0];
        raw.extend_from_slice(record);
        w.put("tls_client_hello", &format!("{name}-record"), &raw);
        // ...and the hello's body alone (after record and handshake
        // headers), for the target to frame.
        let mut body = vec![1];
        body.extend_from_slice(&record[9..]);
        w.put("tls_client_hello", &format!("{name}-body"), &body);
    }
}

// === transport_header ===

fn transport_header(w: &mut Writer) {
    use linnet_transport::header::{PREFACE, SessionProtocol, TransportHeader};
    w.target("transport_header");
    let headers = [
        TransportHeader {
            port: 8080,
            name: None,
            protocol: None,
        },
        TransportHeader {
            port: 80,
            name: None,
            protocol: Some(SessionProtocol::Http1),
        },
        TransportHeader {
            port: 4143,
            name: Some("web.default.svc.cluster.local".into()),
            protocol: Some(SessionProtocol::Http2),
        },
    ];
    for (i, h) in headers.iter().enumerate() {
        let mut wire = h.encode().to_vec();
        wire.extend_from_slice(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n");
        w.stream("transport_header", &format!("header-{i}"), 0, 0, &wire);
        w.stream(
            "transport_header",
            &format!("header-{i}-bytes"),
            0,
            0x01,
            &wire,
        );
        w.stream(
            "transport_header",
            &format!("header-{i}-truncated"),
            1,
            0x03,
            &wire[..wire.len() / 2],
        );
    }
    let mut long = PREFACE.to_vec();
    long.extend_from_slice(&2000u32.to_be_bytes());
    long.extend(std::iter::repeat_n(b'x', 64));
    w.stream("transport_header", "too-long", 0, 0, &long);
    w.stream(
        "transport_header",
        "not-a-header",
        0,
        0,
        b"GET / HTTP/1.1\r\n\r\n",
    );
}

// === identity_der ===

fn identity_der(w: &mut Writer) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    w.target("identity_der");
    let key = KeyPair::generate().unwrap();
    let ca = {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap()
    };
    w.put("identity_der", "ca", ca.der());
    let leaves: [(&str, Vec<SanType>); 4] = [
        (
            "dns",
            vec![SanType::DnsName(
                "web.default.serviceaccount.identity.linkerd.cluster.local"
                    .try_into()
                    .unwrap(),
            )],
        ),
        (
            "spiffe",
            vec![SanType::URI(
                "spiffe://cluster.local/ns/default/sa/web"
                    .try_into()
                    .unwrap(),
            )],
        ),
        (
            "mixed",
            vec![
                SanType::URI(
                    "spiffe://cluster.local/ns/default/sa/web"
                        .try_into()
                        .unwrap(),
                ),
                SanType::DnsName("*.default.svc.cluster.local".try_into().unwrap()),
                SanType::DnsName("Web.Default.Svc".try_into().unwrap()),
                SanType::IpAddress("10.0.0.1".parse().unwrap()),
                SanType::URI("https://example.com/".try_into().unwrap()),
            ],
        ),
        ("none", vec![]),
    ];
    for (name, sans) in leaves {
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans;
        let leaf = p.self_signed(&key).unwrap();
        w.put("identity_der", name, leaf.der());
    }
}

// === http_proxy ===

/// Flags of the HTTP target (see its module doc).
const H2: u8 = 1;
const INBOUND: u8 = 2;
const EXPLICIT: u8 = 4;
const CLIENT_ID: u8 = 8;
const MAX_BODY: u8 = 16;
const STREAMED_ANSWER: u8 = 1 << 5;

async fn http_proxy(w: &mut Writer) {
    const T: &str = "http_proxy";
    w.target(T);
    let h1: [(&str, u8, &[u8]); 26] = [
        ("get", 0, b"GET / HTTP/1.1\r\nHost: web.default.svc.cluster.local\r\n\r\n"),
        ("get-inbound", INBOUND | CLIENT_ID, b"GET /x?y=1 HTTP/1.1\r\nHost: web:8080\r\nUser-Agent: curl/8\r\n\r\n"),
        ("post-length", 0, b"POST /submit HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello"),
        ("post-chunked", STREAMED_ANSWER, b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5;ext=1\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n"),
        ("smuggle-cl-te", 0, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("smuggle-te-cl", 0, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
        ("smuggle-te-named", 0, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ("smuggle-te-identity", 0, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ("smuggle-te-space", 0, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc"),
        ("smuggle-te-fold", 0, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ("smuggle-two-lengths", 0, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"),
        ("same-two-lengths", 0, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
        ("hop-by-hop", INBOUND, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-hop, te\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nProxy-Connection: close\r\nTE: trailers, deflate\r\n\r\n"),
        ("websocket", 0, b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
        ("h2c", 0, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"),
        ("connect", EXPLICIT, b"CONNECT web.default.svc.cluster.local:443 HTTP/1.1\r\nHost: web.default.svc.cluster.local:443\r\n\r\n"),
        ("absolute-form", 0, b"GET http://web.default:80/x HTTP/1.1\r\nHost: other\r\n\r\n"),
        ("explicit", EXPLICIT, b"GET http://api.default.svc.cluster.local/x HTTP/1.1\r\nHost: api.default.svc.cluster.local\r\nProxy-Authorization: Basic dTpw\r\n\r\nGET https://secure.example/ HTTP/1.1\r\nHost: secure.example\r\n\r\nGET / HTTP/1.1\r\nHost: nowhere.invalid\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
        ("l5d-headers", INBOUND, b"GET / HTTP/1.1\r\nHost: a\r\nl5d-client-id: forged.ns.serviceaccount.identity.linkerd.cluster.local\r\nL5D-Orig-Proto: HTTP/1.1\r\nl5d-require-id: x\r\n\r\n"),
        ("l5d-headers-named", INBOUND | CLIENT_ID, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: l5d-client-id\r\nl5d-client-id: forged\r\n\r\n"),
        ("expect-continue", 0, b"PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody"),
        ("pipelined", 0, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: a\r\n\r\nDELETE /3 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
        ("http10", 0, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        ("bare-lf", 0, b"\r\nGET / HTTP/1.1\nHost: a\n\n"),
        ("too-large", MAX_BODY, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"),
        ("too-large-chunked", MAX_BODY, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n50\r\n01234567890123456789012345678901234567890123456789012345678901234567890123456789\r\n0\r\n\r\n"),
    ];
    for (name, flags, bytes) in h1 {
        w.stream(T, &format!("h1-{name}"), flags, 0, bytes);
    }
    w.stream(T, "h1-get-fragments", 0, 0x03, h1[0].2);

    // HTTP/2, as hyper's client sends it.
    let get = || {
        Request::get("http://web.default.svc.cluster.local/")
            .body(Bytes::new())
            .unwrap()
    };
    let orig = |v: &'static str| {
        Request::post("http://web.default.svc.cluster.local:8080/x")
            .header("l5d-orig-proto", v)
            .header("l5d-client-id", "forged")
            .header(
                "l5d-require-id",
                "web.default.serviceaccount.identity.linkerd.cluster.local",
            )
            .body(Bytes::from_static(b"hello"))
            .unwrap()
    };
    let grpc = Request::post("http://api.default.svc.cluster.local:9090/pkg.Svc/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]))
        .unwrap();
    let conversations: [(&str, u8, Vec<Request<Bytes>>); 4] = [
        ("get", H2, vec![get(), get()]),
        (
            "orig-proto",
            H2 | INBOUND | CLIENT_ID,
            vec![orig("HTTP/1.1"), orig("HTTP/1.0")],
        ),
        ("orig-proto-outbound", H2, vec![orig("HTTP/1.1")]),
        ("grpc", H2 | INBOUND, vec![grpc]),
    ];
    for (name, flags, reqs) in conversations {
        let bytes = h2_client_bytes(reqs).await;
        w.stream(T, &format!("h2-{name}"), flags, 0, &bytes);
    }
}

/// What hyper's HTTP/2 client writes to send `reqs` to a server that
/// answers each with `200`.
async fn h2_client_bytes(reqs: Vec<Request<Bytes>>) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let written = Arc::new(Mutex::new(Vec::new()));
    let recording = Recording {
        io: client,
        written: written.clone(),
    };
    let server = tokio::spawn(async move {
        let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
            let _ = req.into_body().collect().await;
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(
                b"ok",
            ))))
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(server), svc)
            .await;
    });
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(recording))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    for req in reqs {
        let rsp = send.send_request(req.map(Full::new)).await.unwrap();
        let _ = rsp.into_body().collect().await;
    }
    drop(send);
    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
    server.abort();
    written.lock().unwrap().clone()
}

/// An I/O that keeps a copy of what is written to it.
struct Recording<I> {
    io: I,
    written: Arc<Mutex<Vec<u8>>>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Recording<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Recording<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// === control_plane ===

/// The control-plane target's API selector.
const UPDATE: u8 = 0;
const PROFILE: u8 = 1;
const SERVER: u8 = 2;
const POLICY: u8 = 3;

/// `linnet control`'s answers about every service and workload port of
/// `mesh`, as a proxy receives them.
async fn control_plane(w: &mut Writer, mesh: &Path) {
    use dst::destination_client::DestinationClient;
    use inbound::inbound_server_policies_client::InboundServerPoliciesClient;
    use outbound::outbound_policies_client::OutboundPoliciesClient;
    const T: &str = "control_plane";
    w.target(T);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::copy(mesh, &path).unwrap();
    std::fs::create_dir_all(dir.path().join("tokens")).unwrap();
    std::fs::write(dir.path().join("tokens/client"), "client-token\n").unwrap();
    let mesh = linnet_control::Mesh::load(&path).unwrap();
    let ca = Arc::new(linnet_control::Ca::load_or_generate(&mesh.identity).unwrap());
    let mut registry = linnet_metrics::prometheus_client::registry::Registry::default();
    let metrics = linnet_control::Metrics::register(&mut registry);
    let control = linnet_control::Control {
        store: linnet_control::Store::new(mesh.clone()),
        metrics,
        ca,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(linnet_control::serve(
        listener,
        control,
        std::future::pending(),
    ));
    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut destination = DestinationClient::new(channel.clone());
    let mut policies = OutboundPoliciesClient::new(channel.clone());
    let mut servers = InboundServerPoliciesClient::new(channel);

    let msg = |first: bool, m: &dyn Fn(&mut Vec<u8>)| {
        let mut v = vec![u8::from(first)];
        m(&mut v);
        v
    };
    for (authority, svc) in &mesh.services {
        let name = authority.replace([':', '.'], "-");
        let get = dst::GetDestination {
            scheme: "k8s".into(),
            path: authority.clone(),
            context_token: String::new(),
        };
        let update = destination
            .get(get.clone())
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap();
        let removal = dst::Update {
            update: Some(dst::update::Update::Remove(dst::AddrSet {
                addrs: svc
                    .endpoints
                    .iter()
                    .take(1)
                    .map(|e| e.addr.into())
                    .collect(),
            })),
        };
        let gone = dst::Update {
            update: Some(dst::update::Update::NoEndpoints(dst::NoEndpoints {
                exists: false,
            })),
        };
        // A stream's first answer, a removal, a failure, and a new stream.
        let steps = [
            msg(true, &|v| update.encode(v).unwrap()),
            msg(false, &|v| removal.encode(v).unwrap()),
            vec![0xff, 14],
            msg(true, &|v| gone.encode(v).unwrap()),
            msg(true, &|v| update.encode(v).unwrap()),
        ];
        w.put(
            T,
            &format!("update-{name}"),
            &[&[UPDATE][..], &frame(&steps)].concat(),
        );

        let profile = destination
            .get_profile(get)
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap();
        let steps = [msg(true, &|v| profile.encode(v).unwrap())];
        w.put(
            T,
            &format!("profile-{name}"),
            &[&[PROFILE][..], &frame(&steps)].concat(),
        );

        let spec = outbound::TrafficSpec {
            source_workload: "fuzz".into(),
            target: Some(outbound::traffic_spec::Target::Authority(authority.clone())),
        };
        let policy = policies.get(spec).await.unwrap().into_inner();
        let steps = [msg(true, &|v| policy.encode(v).unwrap())];
        w.put(
            T,
            &format!("policy-{name}"),
            &[&[POLICY][..], &frame(&steps)].concat(),
        );
    }
    // The policy of an address that is no service: forwarded.
    let spec = outbound::TrafficSpec {
        source_workload: "fuzz".into(),
        target: Some(outbound::traffic_spec::Target::Addr(
            "192.0.2.1:80"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )),
    };
    let policy = policies.get(spec).await.unwrap().into_inner();
    let steps = [msg(true, &|v| policy.encode(v).unwrap())];
    w.put(
        T,
        "policy-forward",
        &[&[POLICY][..], &frame(&steps)].concat(),
    );

    for (workload, wl) in &mesh.workloads {
        for port in wl.ports.keys().copied().chain([1]) {
            let spec = inbound::PortSpec {
                workload: workload.clone(),
                port: u32::from(port),
            };
            let server = servers.get_port(spec).await.unwrap().into_inner();
            let steps = [msg(true, &|v| server.encode(v).unwrap())];
            w.put(
                T,
                &format!("server-{workload}-{port}"),
                &[&[SERVER][..], &frame(&steps)].concat(),
            );
        }
    }
}

// === control_api ===

/// What proxies ask `linnet control` about `examples/mesh.yaml`.
fn control_api(w: &mut Writer) {
    use rcgen::{CertificateParams, KeyPair};
    const T: &str = "control_api";
    w.target(T);
    let mesh =
        linnet_control::Mesh::parse(linnet_fuzz::EXAMPLE_MESH, linnet_fuzz::mesh_dir()).unwrap();
    let put = |w: &mut Writer, name: &str, rpc: u8, msg: &dyn Fn(&mut Vec<u8>)| {
        let mut v = vec![rpc];
        msg(&mut v);
        w.put(T, name, &v);
    };
    for authority in mesh.services.keys() {
        let name = authority.replace([':', '.'], "-");
        let get = dst::GetDestination {
            scheme: "k8s".into(),
            path: authority.clone(),
            context_token: String::new(),
        };
        put(w, &format!("get-{name}"), 0, &|v| get.encode(v).unwrap());
        put(w, &format!("profile-{name}"), 1, &|v| {
            get.encode(v).unwrap()
        });
        let spec = outbound::TrafficSpec {
            source_workload: "web-1".into(),
            target: Some(outbound::traffic_spec::Target::Authority(authority.clone())),
        };
        put(w, &format!("policy-{name}"), 3, &|v| {
            spec.encode(v).unwrap()
        });
    }
    let by_addr = dst::GetDestination {
        scheme: "k8s".into(),
        path: "10.0.0.1:8080".into(),
        context_token: String::new(),
    };
    put(w, "get-endpoint-address", 0, &|v| {
        by_addr.encode(v).unwrap()
    });
    for (workload, wl) in &mesh.workloads {
        for port in wl.ports.keys() {
            let spec = inbound::PortSpec {
                workload: workload.clone(),
                port: u32::from(*port),
            };
            put(w, &format!("port-{workload}-{port}"), 2, &|v| {
                spec.encode(v).unwrap()
            });
        }
    }
    // Certify: DER and PEM signing requests, the right token and not.
    let id = "web.default.serviceaccount.identity.linkerd.cluster.local";
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::new(vec![id.to_string(), "extra.example.com".to_string()])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let client = "client.default.serviceaccount.identity.linkerd.cluster.local";
    let client_csr = CertificateParams::new(vec![client.to_string()])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let certify = |csr: Vec<u8>, identity: &str, token: &[u8]| identity::CertifyRequest {
        identity: identity.into(),
        token: token.to_vec(),
        certificate_signing_request: csr,
    };
    let reqs = [
        (
            "certify-der",
            certify(csr.der().to_vec(), id, b"web-secret-token"),
        ),
        (
            "certify-pem",
            certify(csr.pem().unwrap().into_bytes(), id, b"web-secret-token\n"),
        ),
        (
            "certify-wrong-token",
            certify(csr.der().to_vec(), id, b"guess"),
        ),
        (
            "certify-file-token",
            certify(client_csr.der().to_vec(), client, b"client-token"),
        ),
    ];
    for (name, req) in reqs {
        put(w, name, 4, &|v| req.encode(v).unwrap());
    }
}

// === mesh_file ===

fn mesh_file(w: &mut Writer, mesh: &Path) {
    const T: &str = "mesh_file";
    w.target(T);
    w.put(T, "example", &std::fs::read(mesh).unwrap());
    w.put(
        T,
        "small",
        b"services:\n  web.test.svc.cluster.local:80:\n    endpoints:\n      - {addr: \"127.0.0.1:8080\", identity: web.test.serviceaccount.identity.linkerd.cluster.local, protocol: h2}\n",
    );
    w.put(T, "empty", b"");
}

// === kubernetes ===

/// Lists and watch streams as the API server writes them (one JSON object
/// per line), after the target's two bytes: the resource and cut, and
/// the event bound.
fn kubernetes(w: &mut Writer) {
    const T: &str = "kubernetes";
    w.target(T);
    let service = r#"{"metadata":{"name":"web","namespace":"demo","resourceVersion":"1"},"spec":{"type":"ClusterIP","clusterIP":"10.96.0.10","clusterIPs":["10.96.0.10"],"ports":[{"name":"http","port":80,"protocol":"TCP"}]}}"#;
    let slice = r#"{"metadata":{"name":"web-abc","namespace":"demo","labels":{"kubernetes.io/service-name":"web"}},"addressType":"IPv4","ports":[{"name":"http","port":8080,"protocol":"TCP"}],"endpoints":[{"addresses":["10.1.0.1"],"conditions":{"ready":true},"targetRef":{"kind":"Pod","name":"web-1","namespace":"demo"}},{"addresses":["10.1.0.2"]}]}"#;
    let pod = r#"{"metadata":{"name":"web-1","namespace":"demo","annotations":{"config.linkerd.io/opaque-ports":"3306,8000-8100"}},"spec":{"serviceAccountName":"web","containers":[{"name":"app"},{"name":"linnet-proxy","ports":[{"name":"linkerd-proxy","containerPort":4143}]}]},"status":{"phase":"Running"}}"#;
    let list = |items: &str| {
        format!(
            r#"{{"kind":"List","metadata":{{"resourceVersion":"100","continue":""}},"items":[{items}]}}"#
        )
    };
    let mut put = |name: &str, first: u8, body: String| {
        let mut v = vec![first, 15];
        v.extend_from_slice(body.as_bytes());
        w.put(T, name, &v);
    };
    put("services-list", 0, list(service));
    put("slices-list", 1, list(slice));
    put("pods-list", 2, list(pod));
    put(
        "watch",
        3 * 7,
        format!(
            "P{{\"type\":\"ADDED\",\"object\":{pod}}}\nS{{\"type\":\"ADDED\",\"object\":{service}}}\nE{{\"type\":\"MODIFIED\",\"object\":{slice}}}\n\
             {{\"type\":\"BOOKMARK\",\"object\":{{\"metadata\":{{\"resourceVersion\":\"12\"}}}}}}\n\
             E{{\"type\":\"DELETED\",\"object\":{slice}}}\n\
             {{\"type\":\"ERROR\",\"object\":{{\"kind\":\"Status\",\"code\":410}}}}\n"
        ),
    );
}
