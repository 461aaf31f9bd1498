//! Prometheus metrics: the counters of `switchyard stats`, served over HTTP
//! for scrapers (`--metrics ADDR`). Reads the same snapshot the API's `stats`
//! returns, at scrape time, so the two never disagree and the packet path
//! gains nothing: no second set of counters, no lock a worker could meet.
//!
//! The listener is bound before the daemon starts, so a taken or forbidden
//! address is an error at start, not a silent gap in monitoring. Each scrape
//! runs on its own short-lived thread, a few at once at most, with time
//! limits on reading the request and writing the answer.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::api::StatsReply;

/// Events of `switchyard stats` that are levels, not counts; every other
/// event only ever grows and is exported as a counter.
const GAUGE_EVENTS: [&str; 5] = [
    "mac-entries",
    "nat-active-flows",
    "gateway-threads",
    "cluster-connected",
    "cluster-remote-endpoints",
];

/// Flows opened per gateway stack thread: one family with a `thread` label
/// instead of one metric per thread.
const THREAD_FLOWS_PREFIX: &str = "nat-flows-thread-";

/// Scrapes served at once; more are answered 503 at once.
const MAX_SCRAPES: usize = 4;
/// Longest request head read.
const MAX_HEAD: usize = 8192;
/// Time a client has to send its request, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Content type of the OpenMetrics text format, served when asked for.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format, served otherwise.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Failures to set up the listener.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// bind(2) failed.
    #[error("cannot serve metrics on {addr}: {source}; choose another --metrics address")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The serving thread could not start.
    #[error("cannot start the metrics thread: {0}")]
    Thread(#[source] io::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    port: u32,
    name: String,
    network: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThreadLabels {
    thread: String,
}

/// A metric name from an event name (`dns-queries` → `dns_queries`).
fn metric_name(event: &str) -> String {
    event
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Renders a stats snapshot as exposition text: OpenMetrics (ending in
/// `# EOF`) or the Prometheus text format.
pub fn render(reply: &StatsReply, open_metrics: bool) -> String {
    let mut reg = Registry::with_prefix("switchyard");
    reg.register(
        "build",
        "Version of the running daemon",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );

    type PortField = fn(&crate::stats::PortStats) -> u64;
    let port_fields: [(&str, &str, PortField); 6] = [
        ("port_rx_packets", "Frames received from the port", |p| {
            p.rx_packets
        }),
        ("port_rx_bytes", "Bytes received from the port", |p| {
            p.rx_bytes
        }),
        (
            "port_rx_errors",
            "Frames read from the port but discarded",
            |p| p.rx_errors,
        ),
        ("port_tx_packets", "Frames sent out of the port", |p| {
            p.tx_packets
        }),
        ("port_tx_bytes", "Bytes sent out of the port", |p| {
            p.tx_bytes
        }),
        ("port_tx_errors", "Frames the port refused", |p| p.tx_errors),
    ];
    let owners: HashMap<_, _> = reply.endpoints.iter().map(|o| (o.port, o)).collect();
    let ports: Vec<_> = reply
        .stats
        .ports
        .iter()
        .map(|p| {
            let owner = owners.get(&p.port);
            let labels = PortLabels {
                port: p.port.0,
                name: p.name.clone(),
                network: owner.map(|o| o.network.clone()).unwrap_or_default(),
                endpoint: owner.map(|o| o.endpoint.clone()).unwrap_or_default(),
            };
            (p, labels)
        })
        .collect();
    for (name, help, field) in port_fields {
        let family = Family::<PortLabels, Counter>::default();
        for (p, labels) in &ports {
            family.get_or_create(labels).inc_by(field(p));
        }
        reg.register(name, help, family);
    }

    let drops = Family::<ReasonLabels, Counter>::default();
    for (reason, v) in &reply.stats.drops {
        let labels = ReasonLabels {
            reason: reason.clone(),
        };
        drops.get_or_create(&labels).inc_by(*v);
    }
    reg.register("drops", "Frames dropped, by reason", drops);

    let per_thread = Family::<ThreadLabels, Counter>::default();
    for (event, v) in &reply.stats.events {
        let help = format!("The `{event}` figure of `switchyard stats`");
        if let Some(thread) = event.strip_prefix(THREAD_FLOWS_PREFIX) {
            let labels = ThreadLabels {
                thread: thread.to_string(),
            };
            per_thread.get_or_create(&labels).inc_by(*v);
        } else if GAUGE_EVENTS.contains(&event.as_str()) {
            let g = Gauge::<i64>::default();
            g.set(i64::try_from(*v).unwrap_or(i64::MAX));
            reg.register(metric_name(event), help, g);
        } else {
            let c = Counter::<u64>::default();
            c.inc_by(*v);
            reg.register(metric_name(event), help, c);
        }
    }
    reg.register(
        "nat_thread_flows",
        "Flows opened through the gateway, by stack thread",
        per_thread,
    );

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = if open_metrics {
        text::encode(&mut out, &reg)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, &reg)
    };
    out
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    /// The metrics, in OpenMetrics format or not.
    Metrics { open_metrics: bool },
    /// Any other path.
    NotFound,
}

/// A refused request: HTTP status and reason.
type Refusal = (u16, &'static str);

/// Reads a request head: its request line and `Accept` header.
fn parse_request(head: &[u8]) -> Result<Ask, Refusal> {
    let text = std::str::from_utf8(head).map_err(|_| (400, "Bad Request"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err((400, "Bad Request"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err((505, "HTTP Version Not Supported"));
    }
    if method != "GET" {
        return Err((405, "Method Not Allowed"));
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Ok(Ask::NotFound);
    }
    let open_metrics = lines
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
        .any(|(_, v)| v.contains("application/openmetrics-text"));
    Ok(Ask::Metrics { open_metrics })
}

/// Reads up to the end of the request head (a blank line).
fn read_head(stream: &mut impl Read) -> Result<Vec<u8>, Refusal> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut buf)
            .map_err(|_| (408, "Request Timeout"))?;
        if n == 0 {
            return Err((400, "Bad Request"));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err((431, "Request Header Fields Too Large"));
        }
    }
}

fn write_response(
    stream: &mut impl Write,
    status: Refusal,
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    let (code, reason) = status;
    write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// Answers one connection: reads its request and writes the metrics from
/// `source`, or the status saying why not. Any bytes get an HTTP answer.
pub fn serve_one<S: Read + Write>(stream: &mut S, source: &dyn Fn() -> Option<StatsReply>) {
    let ask = read_head(stream).and_then(|head| parse_request(&head));
    let _ = match ask {
        Ok(Ask::Metrics { open_metrics }) => match source() {
            Some(reply) => {
                let kind = if open_metrics {
                    OPENMETRICS
                } else {
                    PROMETHEUS_TEXT
                };
                write_response(stream, (200, "OK"), kind, &render(&reply, open_metrics))
            }
            None => write_response(
                stream,
                (503, "Service Unavailable"),
                "text/plain",
                "the daemon is stopping\n",
            ),
        },
        Ok(Ask::NotFound) => write_response(
            stream,
            (404, "Not Found"),
            "text/plain",
            "metrics are at /metrics\n",
        ),
        Err(refusal) => write_response(stream, refusal, "text/plain", ""),
    };
}

/// A bound metrics listener, not yet serving.
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Binds `addr` (port 0: any free port).
    pub fn bind(addr: SocketAddr) -> Result<MetricsServer, MetricsError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(MetricsServer { listener })
    }

    /// The address bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves scrapes on a thread of its own until the process ends.
    /// `source` gives the current stats, or `None` once the daemon is gone.
    pub fn spawn(
        self,
        source: impl Fn() -> Option<StatsReply> + Send + Sync + 'static,
    ) -> Result<(), MetricsError> {
        let source: Arc<dyn Fn() -> Option<StatsReply> + Send + Sync> = Arc::new(source);
        let busy = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("sy-metrics".into())
            .spawn(move || {
                for stream in self.listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                    if busy.fetch_add(1, Ordering::SeqCst) >= MAX_SCRAPES {
                        busy.fetch_sub(1, Ordering::SeqCst);
                        let _ = write_response(
                            &mut stream,
                            (503, "Service Unavailable"),
                            "text/plain",
                            "too many scrapes at once\n",
                        );
                        continue;
                    }
                    let (source, done) = (source.clone(), busy.clone());
                    let spawned =
                        std::thread::Builder::new()
                            .name("sy-scrape".into())
                            .spawn(move || {
                                serve_one(&mut stream, &*source);
                                done.fetch_sub(1, Ordering::SeqCst);
                            });
                    if spawned.is_err() {
                        busy.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            })
            .map(|_| ())
            .map_err(MetricsError::Thread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::PortOwner;
    use crate::ports::PortId;
    use crate::stats::{PortStats, StatsSnapshot};
    use std::collections::BTreeMap;
    use std::net::TcpStream;

    /// One request to `server`, the whole answer back.
    fn scrape(server: &MetricsServer, path: &str, accept: &str) -> io::Result<String> {
        let mut s = TcpStream::connect(server.local_addr()?)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    fn reply() -> StatsReply {
        let mut drops = BTreeMap::new();
        drops.insert("no-route".to_string(), 3);
        drops.insert("mac-cap".to_string(), 0);
        let mut events = BTreeMap::new();
        events.insert("dns-queries".to_string(), 42);
        events.insert("nat-active-flows".to_string(), 7);
        events.insert("nat-flows-thread-0".to_string(), 5);
        events.insert("nat-flows-thread-1".to_string(), 6);
        StatsReply {
            stats: StatsSnapshot {
                ports: vec![
                    PortStats {
                        port: PortId(1),
                        name: "tap-a".into(),
                        rx_packets: 10,
                        rx_bytes: 1000,
                        rx_errors: 0,
                        tx_packets: 9,
                        tx_bytes: 900,
                        tx_errors: 1,
                    },
                    PortStats {
                        port: PortId(2),
                        name: "vxlan0".into(),
                        ..PortStats::default()
                    },
                ],
                drops,
                events,
            },
            endpoints: vec![PortOwner {
                port: PortId(1),
                network: "front".into(),
                endpoint: "we\"b".into(),
                endpoint_id: "e1".into(),
            }],
        }
    }

    #[test]
    fn counters_gauges_and_labels_are_exported() {
        let text = render(&reply(), true);
        for line in [
            "switchyard_port_rx_packets_total{port=\"1\",name=\"tap-a\",network=\"front\",endpoint=\"we\\\"b\"} 10",
            "switchyard_port_tx_errors_total{port=\"1\",name=\"tap-a\",network=\"front\",endpoint=\"we\\\"b\"} 1",
            "switchyard_port_rx_packets_total{port=\"2\",name=\"vxlan0\",network=\"\",endpoint=\"\"} 0",
            "switchyard_drops_total{reason=\"no-route\"} 3",
            "switchyard_drops_total{reason=\"mac-cap\"} 0",
            "switchyard_dns_queries_total 42",
            "# TYPE switchyard_nat_active_flows gauge",
            "switchyard_nat_active_flows 7",
            "switchyard_nat_thread_flows_total{thread=\"1\"} 6",
            "switchyard_build_info{version=\"",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(!text.contains("nat_flows_thread_0"), "{text}");
    }

    #[test]
    fn prometheus_text_has_no_eof_marker() {
        let text = render(&reply(), false);
        assert!(text.contains("switchyard_dns_queries_total 42"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn requests_are_parsed_strictly() {
        let get = |h: &str| parse_request(h.as_bytes());
        assert_eq!(
            get("GET /metrics HTTP/1.1\r\nHost: a"),
            Ok(Ask::Metrics {
                open_metrics: false
            })
        );
        assert_eq!(
            get("GET /metrics?x=1 HTTP/1.0\r\naccept: application/openmetrics-text;version=1.0.0"),
            Ok(Ask::Metrics { open_metrics: true })
        );
        assert_eq!(get("GET / HTTP/1.1"), Ok(Ask::NotFound));
        assert_eq!(get("POST /metrics HTTP/1.1").map_err(|e| e.0), Err(405));
        assert_eq!(get("GET /metrics SPDY/3").map_err(|e| e.0), Err(505));
        assert_eq!(get("GET /metrics").map_err(|e| e.0), Err(400));
        assert_eq!(get("").map_err(|e| e.0), Err(400));
        assert_eq!(
            parse_request(b"GET \xff HTTP/1.1").map_err(|e| e.0),
            Err(400)
        );
    }

    #[test]
    fn heads_are_bounded() {
        let mut long = io::Cursor::new(vec![b'a'; MAX_HEAD * 2]);
        assert_eq!(read_head(&mut long).map_err(|e| e.0), Err(431));
        let mut cut = io::Cursor::new(b"GET /metrics HTTP/1.1\r\n".to_vec());
        assert_eq!(read_head(&mut cut).map_err(|e| e.0), Err(400));
        let mut ok = io::Cursor::new(b"GET / HTTP/1.1\r\n\r\nbody".to_vec());
        assert_eq!(read_head(&mut ok).as_deref(), Ok(&b"GET / HTTP/1.1"[..]));
    }

    #[test]
    fn served_over_tcp_with_status_codes() {
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let served = MetricsServer {
            listener: server.listener.try_clone().unwrap(),
        };
        served.spawn(|| Some(reply())).unwrap();
        let ok = scrape(&server, "/metrics", "application/openmetrics-text").unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(OPENMETRICS), "{ok}");
        assert!(
            ok.contains("switchyard_drops_total{reason=\"no-route\"} 3"),
            "{ok}"
        );
        let plain = scrape(&server, "/metrics", "*/*").unwrap();
        assert!(plain.contains(PROMETHEUS_TEXT), "{plain}");
        let missing = scrape(&server, "/other", "*/*").unwrap();
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        // A second bind of the same address is a clear error.
        let err = MetricsServer::bind(addr).err().unwrap().to_string();
        assert!(err.contains("--metrics"), "{err}");
    }

    #[test]
    fn a_gone_daemon_answers_503() {
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let served = MetricsServer {
            listener: server.listener.try_clone().unwrap(),
        };
        served.spawn(|| None).unwrap();
        let out = scrape(&server, "/metrics", "*/*").unwrap();
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    }
}
