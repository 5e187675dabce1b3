//! A real WebSocket client and server (tokio-tungstenite) through the
//! proxy: the upgrade is passed on and the frames flow both ways.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::{SinkExt, StreamExt};
use linnet_app::OrigDst;
use linnet_test_support::proxy::Proxy;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    let proxy = Proxy::start(OrigDst::Fixed(addr), &[]).await;
    let (mut ws, rsp) = tokio_tungstenite::connect_async(format!("ws://{}/chat", proxy.outbound))
        .await
        .expect("the handshake passes through the proxy");
    assert_eq!(rsp.status(), 101);
    for i in 0..50 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.close(None).await.unwrap();
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("response_total", &[("status_code", "101")]),
        1.0,
        "{}",
        m.0
    );
}
