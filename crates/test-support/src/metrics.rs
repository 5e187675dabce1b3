//! Reading the admin server.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.1 request to the admin server; returns status and body.
pub async fn http(admin: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    try_http(admin, method, path, body)
        .await
        .unwrap_or_else(|e| panic!("{method} http://{admin}{path}: {e}"))
}

/// Like [`http()`], but a connection failure is an error, not a panic.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut rsp = String::new();
    s.read_to_string(&mut rsp).await?;
    let status = rsp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {rsp:?}")))?;
    let body = rsp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// One scrape of `/metrics`.
#[derive(Clone, Debug)]
pub struct Scrape(pub String);

/// Scrapes `/metrics`.
pub async fn scrape(admin: SocketAddr) -> Scrape {
    let (status, body) = http(admin, "GET", "/metrics", "").await;
    assert_eq!(status, 200, "{body}");
    Scrape(body)
}

impl Scrape {
    /// The sum of the samples of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (n, rest) = series.split_once('{').unwrap_or((series, ""));
                if n != name {
                    return None;
                }
                labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                    .then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }
}
