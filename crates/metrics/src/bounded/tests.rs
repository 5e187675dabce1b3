use super::*;
use crate::{
    Direction,
    http::HttpMetrics,
    tcp::{CloseReason, Peer, TcpMetrics, Tls},
};
use std::net::SocketAddr;

const TARGET: &str = "10.0.0.1:80";

struct Fixture {
    registry: Registry,
    clock: Clock,
    tcp: TcpMetrics,
    http: HttpMetrics,
}

fn fixture(max_values: usize) -> Fixture {
    let mut registry = Registry::default();
    let clock = Clock::manual();
    let limits = Limits {
        max_values,
        idle_timeout: Duration::from_secs(60),
    };
    let bounds = Bounds::with_clock(&mut registry, limits, clock.clone());
    let tcp = TcpMetrics::register(&mut registry, &bounds);
    let http = HttpMetrics::register(&mut registry, &bounds);
    Fixture {
        registry,
        clock,
        tcp,
        http,
    }
}

impl Fixture {
    fn text(&self) -> String {
        crate::encode(&self.registry)
    }

    fn lines(&self, prefix: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    fn request(&self, authority: &str) -> crate::http::LabeledMetrics {
        let m = self.http.labeled(
            Direction::Outbound,
            authority,
            TARGET.parse().unwrap(),
            "disabled",
            None,
        );
        m.request();
        m
    }

    fn sni(&self, sni: &str) -> crate::tcp::ConnMetrics {
        let tls = Tls {
            status: "opaque",
            sni: Some(sni.into()),
            peer_id: None,
        };
        let target: SocketAddr = TARGET.parse().unwrap();
        self.tcp.open(Direction::Outbound, Peer::Src, &tls, target)
    }
}

#[test]
fn values_beyond_the_cap_overflow_and_are_counted() {
    let f = fixture(3);
    let held: Vec<_> = (0..10).map(|i| f.request(&format!("h{i}:80"))).collect();
    // The 4th to 10th authorities share one series.
    let requests = f.lines("request_total{");
    assert_eq!(requests.len(), 4, "{requests:#?}");
    for i in 0..3 {
        assert!(
            requests
                .iter()
                .any(|l| l.contains(&format!("authority=\"h{i}:80\"")) && l.ends_with(" 1")),
            "{requests:#?}"
        );
    }
    assert!(
        requests
            .iter()
            .any(|l| l.contains("authority=\"<overflow>\"") && l.ends_with(" 7")),
        "{requests:#?}"
    );
    let text = f.text();
    assert!(
        text.contains("metrics_label_overflow_total{family=\"http\",label=\"authority\"} 7"),
        "{text}"
    );
    // A known value still resolves to itself, and a held overflowed one
    // knows what it was asked for.
    assert!(f.request("h1:80").is_for("h1:80", TARGET.parse().unwrap()));
    assert!(held[9].is_for("h9:80", TARGET.parse().unwrap()));
    assert!(!held[9].is_for("h8:80", TARGET.parse().unwrap()));

    // TCP: SNIs, with their own cap and counter.
    let conns: Vec<_> = (0..5).map(|i| f.sni(&format!("s{i}.example"))).collect();
    let open = f.lines("tcp_open_connections{");
    assert_eq!(open.len(), 4, "{open:#?}");
    assert!(
        open.iter()
            .any(|l| l.contains("sni=\"<overflow>\"") && l.ends_with(" 2")),
        "{open:#?}"
    );
    let text = f.text();
    assert!(
        text.contains("metrics_label_overflow_total{family=\"tcp\",label=\"sni\"} 2"),
        "{text}"
    );
    // A value that looks like the overflow marker is the marker, not a
    // second series with the same labels, and it is not counted.
    let fake = f.sni(OVERFLOW);
    assert!(
        f.lines("tcp_open_connections{")
            .iter()
            .any(|l| l.contains("sni=\"<overflow>\"") && l.ends_with(" 3"))
    );
    assert!(
        f.text()
            .contains("metrics_label_overflow_total{family=\"tcp\",label=\"sni\"} 2")
    );
    drop((held, conns, fake));
}

#[test]
fn idle_series_are_evicted_and_values_freed() {
    let f = fixture(2);
    drop(f.request("a:80"));
    drop(f.request("b:80"));
    f.clock.advance(Duration::from_secs(59));
    assert_eq!(f.lines("request_total{").len(), 2);
    // Full: a third value overflows until the others have been idle long
    // enough.
    drop(f.request("c:80"));
    assert!(
        f.text()
            .contains("metrics_label_overflow_total{family=\"http\",label=\"authority\"} 1")
    );
    f.clock.advance(Duration::from_secs(1));
    let requests = f.lines("request_total{");
    // a and b went; the overflow series was used at 59 s, so it stays.
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert!(requests[0].contains("<overflow>"), "{requests:#?}");
    // Their values are free again: d gets its own series.
    drop(f.request("d:80"));
    assert!(
        f.lines("request_total{")
            .iter()
            .any(|l| l.contains("authority=\"d:80\"") && l.ends_with(" 1"))
    );
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(f.lines("request_total{"), Vec::<String>::new());

    // Counting restarts for a value that comes back after eviction.
    drop(f.request("a:80"));
    assert!(
        f.lines("request_total{")
            .iter()
            .any(|l| l.contains("authority=\"a:80\"") && l.ends_with(" 1"))
    );

    // TCP: a closed connection's series, close_total included, go too.
    let conn = f.sni("gone.example");
    conn.close(CloseReason::CLEAN);
    assert!(f.text().contains("sni=\"gone.example\""));
    f.clock.advance(Duration::from_secs(60));
    let text = f.text();
    assert!(!text.contains("gone.example"), "{text}");
    assert!(!text.contains("tcp_open_total{"), "{text}");
    // The overflow counter itself is never evicted.
    assert!(text.contains("metrics_label_overflow_total{family=\"http\",label=\"authority\"} 1"));
}

#[test]
fn series_in_use_are_not_evicted() {
    let f = fixture(10);
    let kept = f.request("kept:80");
    let conn = f.sni("open.example");
    drop(f.request("dropped:80"));
    f.clock.advance(Duration::from_secs(3600));
    let text = f.text();
    assert!(!text.contains("dropped:80"), "{text}");
    assert!(text.contains("authority=\"kept:80\""), "{text}");
    assert!(text.contains("sni=\"open.example\""), "{text}");
    // Still counting into the same series.
    kept.request();
    conn.read_bytes.inc_by(5);
    let text = f.text();
    assert!(
        f.lines("request_total{")
            .iter()
            .any(|l| l.contains("kept:80") && l.ends_with(" 2")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("tcp_read_bytes_total{")
            && l.contains("open.example")
            && l.ends_with(" 5")),
        "{text}"
    );
    // Once let go, they are kept for the idle timeout, then removed.
    drop((kept, conn));
    f.clock.advance(Duration::from_secs(59));
    assert!(f.text().contains("kept:80"));
    f.clock.advance(Duration::from_secs(1));
    let text = f.text();
    assert!(
        !text.contains("kept:80") && !text.contains("open.example"),
        "{text}"
    );
}

#[test]
fn peer_text_is_escaped() {
    let f = fixture(10);
    let id = "spiffe://example.org/ns/a\"b\\c\nd";
    let target: SocketAddr = TARGET.parse().unwrap();
    let _conn = f.tcp.open(
        Direction::Inbound,
        Peer::Src,
        &Tls::mesh(Some(id.into())),
        target,
    );
    let _req = f
        .http
        .labeled(Direction::Inbound, "web:80", target, "true", Some(id));
    let text = f.text();
    let escaped = r#"client_id="spiffe://example.org/ns/a\"b\\c\nd""#;
    assert!(
        text.lines()
            .any(|l| l.starts_with("tcp_open_total{") && l.contains(escaped)),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("request_total{") && l.contains(escaped)),
        "{text}"
    );
    // Every sample is one line: no raw newline got through.
    assert!(
        text.lines().all(|l| l.starts_with('#')
            || l.rsplit_once(' ')
                .is_some_and(|(_, v)| v.parse::<f64>().is_ok())),
        "{text}"
    );
}

#[test]
fn a_scrape_frees_idle_values() {
    let mut registry = Registry::default();
    let clock = Clock::manual();
    let bounds = Bounds::with_clock(&mut registry, Limits::default(), clock.clone());
    let values = bounds.values::<Text>("test", "label");
    let held = values.get("held");
    drop(values.get("dropped"));
    assert_eq!(values.len(), 2);
    clock.advance(Duration::from_secs(60));
    let text = crate::encode(&registry);
    assert_eq!(values.len(), 1);
    assert!(
        text.contains("metrics_label_values{family=\"test\",label=\"label\"} 1"),
        "{text}"
    );
    assert!(held.label().is("held"));
    drop(held);
    clock.advance(Duration::from_secs(60));
    crate::encode(&registry);
    assert!(values.is_empty());
    // A dropped table is forgotten.
    drop(values);
    crate::encode(&registry);
    assert!(bounds.0.tables.lock().unwrap().is_empty());
}
