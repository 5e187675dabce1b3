//! The one rule, end to end in-process: a target that the control plane
//! names with an identity is reached only over mTLS that proves it. A pod
//! address (GetProfile's endpoint) and opaque TCP without a transport port
//! go over mTLS; every way mTLS can fail (an unusable identity or server
//! name, no certificate of our own, a refused handshake, a control plane
//! that does not answer, no identity at all) fails the request or resets
//! the connection, and a server that records every byte on its side of
//! the wire never sees the application's bytes in plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Recorder;
use linnet_app::OrigDst;
use linnet_test_support::{
    control::ControlPlane,
    eventually,
    http::{HttpServer, collect, h1_client},
    proxy::Proxy,
    tcp::{ExchangeServer, exchange, random_payload},
};
use std::{net::SocketAddr, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER: &str = "db.test.serviceaccount.identity.linkerd.cluster.local";
const CLIENT: &str = "app.test.serviceaccount.identity.linkerd.cluster.local";
const VIP: &str = "10.96.0.9:80";
/// The application's bytes: never to be seen on the wire in plaintext.
const MARKER: &str = "plaintext-marker-6f1c";

/// A mesh file: the service at [`VIP`] has one endpoint, `endpoint`, with
/// the endpoint fields `fields` (its identity and such).
fn mesh(endpoint: SocketAddr, fields: &str, opaque: bool) -> String {
    let profile = if opaque {
        "    profile: {opaque: true}\n"
    } else {
        ""
    };
    format!(
        "identity:\n  tokens:\n    {SERVER}: s\n    {CLIENT}: c\n\
         services:\n  db.test.svc.cluster.local:80:\n    addresses: [\"{VIP}\"]\n{profile}    endpoints:\n      - addr: \"{endpoint}\"\n{fields}"
    )
}

fn identity(id: &str) -> String {
    format!("        identity: \"{id}\"\n")
}

/// An HTTP request carrying the marker through `client`'s outbound
/// listener: its status and `l5d-proxy-error`.
async fn http_attempt(client: &Proxy) -> (u16, String) {
    let req = hyper::Request::get(format!("http://{}/{MARKER}", client.outbound))
        .header("x-marker", MARKER)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let rsp = h1_client().request(req).await.unwrap();
    let (status, headers, _, _) = collect(rsp).await;
    let error = headers
        .get("l5d-proxy-error")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status.as_u16(), error)
}

/// Opaque bytes carrying the marker through `client`'s outbound listener:
/// true when the connection was reset or closed without a byte back.
async fn opaque_refused(client: &Proxy) -> bool {
    let mut s = tokio::net::TcpStream::connect(client.outbound)
        .await
        .unwrap();
    let _ = s.write_all(format!("{MARKER}\n").as_bytes()).await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Both kinds of traffic fail, say `reason`, and leave no plaintext on
/// the recorder's side of the wire.
async fn assert_fails_closed(client: &Proxy, recorder: &Recorder, reason: &str) {
    let (status, error) = http_attempt(client).await;
    assert_eq!(status, 502, "{reason}: {error}");
    assert!(error.contains(reason), "{reason}: {error}");
    assert!(opaque_refused(client).await, "{reason}: opaque not refused");
    assert!(
        !recorder.saw(MARKER.as_bytes()),
        "{reason}: the application's bytes crossed the wire in plaintext"
    );
    let m = client.metrics().await;
    assert!(
        m.sum(
            "tls_fail_closed_total",
            &[("direction", "outbound"), ("reason", reason)]
        ) >= 2.0,
        "{reason}: {}",
        m.0
    );
}

#[tokio::test]
async fn a_pod_address_is_reached_over_mtls_with_the_verified_client_id() {
    let app = HttpServer::start().await;
    let plane = ControlPlane::start(&mesh(
        "127.0.0.1:1".parse().unwrap(),
        &identity(SERVER),
        false,
    ))
    .await;
    let server = plane
        .meshed_proxy(SERVER, "s", OrigDst::Fixed(app.addr), &[])
        .await;
    plane.write(&mesh(server.inbound, &identity(SERVER), false));
    // The application dials the pod's own address, not a service's.
    let client = plane
        .meshed_proxy(CLIENT, "c", OrigDst::Fixed(server.inbound), &[])
        .await;
    eventually(
        "the pod's identity is known",
        Duration::from_secs(10),
        || async {
            let req = hyper::Request::get(format!("http://{}/", client.outbound))
                .header("l5d-client-id", "forged.identity.linkerd.cluster.local")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let rsp = h1_client().request(req).await.ok()?;
            (collect(rsp).await.0 == 200).then_some(())?;
            let seen = app.seen();
            let last = seen.last()?;
            (last.headers.get("l5d-client-id")?.to_str().ok()? == CLIENT).then_some(())
        },
    )
    .await;
    let m = client.metrics().await;
    assert!(
        m.sum(
            "tcp_open_total",
            &[
                ("direction", "outbound"),
                ("peer", "dst"),
                ("tls", "true"),
                ("server_id", SERVER)
            ]
        ) >= 1.0,
        "{}",
        m.0
    );
    let _ = &plane;
}

#[tokio::test]
async fn opaque_tcp_without_a_transport_port_goes_over_mtls_to_the_target_port() {
    let backend = ExchangeServer::start(4096).await;
    let fields = |id: &str| format!("{}        protocol: opaque\n", identity(id));
    let plane =
        ControlPlane::start(&mesh("127.0.0.1:1".parse().unwrap(), &fields(SERVER), true)).await;
    // The server side's redirected inbound terminates the mTLS.
    let server = plane
        .meshed_proxy(SERVER, "s", OrigDst::Fixed(backend.addr), &[])
        .await;
    plane.write(&mesh(server.inbound, &fields(SERVER), true));
    let client = plane
        .meshed_proxy(CLIENT, "c", OrigDst::Fixed(VIP.parse().unwrap()), &[])
        .await;
    let payload = random_payload(100_000);
    eventually("an exchange over mTLS", Duration::from_secs(10), || async {
        let s = tokio::net::TcpStream::connect(client.outbound).await.ok()?;
        exchange(s, &payload).await.ok()?;
        let m = server.metrics().await;
        (m.sum(
            "tcp_open_total",
            &[
                ("direction", "inbound"),
                ("peer", "src"),
                ("tls", "true"),
                ("client_id", CLIENT),
            ],
        ) >= 1.0)
            .then_some(())
    })
    .await;
    assert!(backend.stats().completed() >= 1);
    let m = client.metrics().await;
    assert!(
        m.sum(
            "tcp_open_total",
            &[
                ("direction", "outbound"),
                ("peer", "dst"),
                ("tls", "true"),
                ("server_id", SERVER)
            ]
        ) >= 1.0,
        "{}",
        m.0
    );
}

#[tokio::test]
async fn an_unusable_identity_or_server_name_is_refused() {
    let recorder = Recorder::start().await;
    for (fields, reason) in [
        // A label may not start with a hyphen: not an identity.
        (
            identity("-db.test.serviceaccount.identity.linkerd.cluster.local"),
            "bad_identity",
        ),
        // A SPIFFE ID cannot be sent as SNI, and no server name is given.
        (
            identity("spiffe://cluster.local/ns/test/sa/db"),
            "bad_server_name",
        ),
    ] {
        let plane = ControlPlane::start(&mesh(recorder.addr, &fields, false)).await;
        let client = plane
            .meshed_proxy(CLIENT, "c", OrigDst::Fixed(VIP.parse().unwrap()), &[])
            .await;
        assert_fails_closed(&client, &recorder, reason).await;
        assert_eq!(recorder.connections(), 0, "{reason}: nothing was dialled");
    }
}

#[tokio::test]
async fn no_certificate_of_our_own_is_refused() {
    let recorder = Recorder::start().await;
    let plane = ControlPlane::start(&mesh(recorder.addr, &identity(SERVER), false)).await;
    // The wrong token: never certified.
    let client = plane
        .meshed_proxy_unready(CLIENT, "wrong", OrigDst::Fixed(VIP.parse().unwrap()), &[])
        .await;
    assert_fails_closed(&client, &recorder, "no_certificate").await;
    assert_eq!(recorder.connections(), 0, "nothing was dialled");
}

#[tokio::test]
async fn a_refused_handshake_sends_nothing_in_plaintext() {
    // The endpoint is not the meshed peer the file says: it answers no
    // handshake.
    let recorder = Recorder::start().await;
    let plane = ControlPlane::start(&mesh(recorder.addr, &identity(SERVER), false)).await;
    let client = plane
        .meshed_proxy(
            CLIENT,
            "c",
            OrigDst::Fixed(VIP.parse().unwrap()),
            &[("LINNET_OUTBOUND_CONNECT_TIMEOUT", "300ms")],
        )
        .await;
    assert_fails_closed(&client, &recorder, "handshake").await;
    assert!(recorder.connections() >= 2);
    // What crossed was a TLS handshake.
    assert_eq!(recorder.bytes().first(), Some(&0x16), "a TLS record");
}

#[tokio::test]
async fn without_an_identity_of_our_own_meshed_peers_are_refused() {
    let recorder = Recorder::start().await;
    let plane = ControlPlane::start(&mesh(recorder.addr, &identity(SERVER), false)).await;
    let addr = plane.addr.to_string();
    let client = Proxy::start(
        OrigDst::Fixed(VIP.parse().unwrap()),
        &[
            ("LINNET_DESTINATION_SVC_ADDR", &addr),
            ("LINNET_IDENTITY_DISABLED", "true"),
        ],
    )
    .await;
    assert_fails_closed(&client, &recorder, "no_local_identity").await;
    assert_eq!(recorder.connections(), 0);
}

#[tokio::test]
async fn a_silent_control_plane_is_not_a_licence_for_plaintext() {
    // A control plane that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let recorder = Recorder::start().await;
    let target = recorder.addr.to_string();
    let env = |networks: Option<&'static str>| {
        let mut env = vec![
            ("LINNET_DESTINATION_SVC_ADDR", silent_addr.clone()),
            ("LINNET_DISCOVERY_INITIAL_WAIT", "300ms".to_string()),
        ];
        if let Some(n) = networks {
            env.push(("LINNET_DESTINATION_PROFILE_NETWORKS", n.to_string()));
        }
        env
    };
    let start = |env: Vec<(&'static str, String)>| {
        let target = target.clone();
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Proxy::start(OrigDst::Fixed(target.parse().unwrap()), &env).await
        }
    };
    let client = start(env(None)).await;
    assert_fails_closed(&client, &recorder, "discovery_timeout").await;
    assert_eq!(recorder.connections(), 0, "nothing was dialled");

    // The control: outside the mesh's networks nothing is waited for, and
    // the recorder sees the bytes, as it would any plaintext.
    let outside = start(env(Some("10.0.0.0/8"))).await;
    let mut s = tokio::net::TcpStream::connect(outside.outbound)
        .await
        .unwrap();
    s.write_all(format!("{MARKER}\n").as_bytes()).await.unwrap();
    eventually("plaintext is recorded", Duration::from_secs(5), || async {
        recorder.saw(MARKER.as_bytes()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn explicit_mode_reaches_a_meshed_address_over_mtls_or_not_at_all() {
    // The client dials the proxy itself (explicit mode), naming the
    // address of a peer the control plane calls meshed; the peer answers
    // no handshake.
    let recorder = Recorder::start().await;
    let plane = ControlPlane::start(&mesh(recorder.addr, &identity(SERVER), false)).await;
    let client = plane
        .meshed_proxy(
            CLIENT,
            "c",
            OrigDst::from_fn(|s| s.local_addr()),
            &[("LINNET_OUTBOUND_CONNECT_TIMEOUT", "300ms")],
        )
        .await;
    let target = recorder.addr;
    // A request in absolute form, and a CONNECT tunnel.
    for request in [
        format!(
            "GET http://{target}/{MARKER} HTTP/1.1\r\nhost: {target}\r\nx-marker: {MARKER}\r\n\r\n"
        ),
        format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n{MARKER}\r\n"),
    ] {
        let mut s = tokio::net::TcpStream::connect(client.outbound)
            .await
            .unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut rsp = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut rsp))
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&rsp[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 502"), "{request:?}: {head}");
        assert!(head.contains("mTLS required (handshake)"), "{head}");
    }
    assert!(
        !recorder.saw(MARKER.as_bytes()),
        "plaintext crossed the wire"
    );
    assert_eq!(recorder.bytes().first(), Some(&0x16), "a TLS record");
}
