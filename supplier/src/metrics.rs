//! Prometheus metrics, served as text on their own plain-HTTP address
//! (`/metrics` only; no data, no keys).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// gRPC method name.
    pub method: String,
    /// gRPC status code name.
    pub code: String,
}

/// The supplier's metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Requests by method and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Refused authorizations and proofs.
    pub auth_failures: Counter,
    /// Bytes stored for customers, staged and committed.
    pub stored_bytes: Gauge<u64, AtomicU64>,
    /// Committed fragments.
    pub fragments: Gauge<u64, AtomicU64>,
    /// Bytes free on the data directory's disk.
    pub disk_free_bytes: Gauge<u64, AtomicU64>,
    /// Bytes of the files holding fragment payloads, deleted ones not yet
    /// reclaimed included.
    pub fragment_file_bytes: Gauge<u64, AtomicU64>,
    /// Open `Subscribe` streams.
    pub subscriptions: Gauge,
    /// Contacts in the DHT routing table.
    pub dht_contacts: Gauge<u64, AtomicU64>,
    /// DHT records held.
    pub dht_records: Gauge<u64, AtomicU64>,
    /// DHT lookups run.
    pub dht_lookups: Gauge<u64, AtomicU64>,
    /// DHT lookups that failed or reached no node.
    pub dht_lookups_failed: Gauge<u64, AtomicU64>,
    /// Seconds spent in DHT lookups, summed (divide by lookups for the mean).
    pub dht_lookup_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("silt_supplier");
        let requests = Family::<RequestLabels, Counter>::default();
        let auth_failures = Counter::default();
        let stored_bytes = Gauge::<u64, AtomicU64>::default();
        let fragments = Gauge::<u64, AtomicU64>::default();
        let disk_free_bytes = Gauge::<u64, AtomicU64>::default();
        let fragment_file_bytes = Gauge::<u64, AtomicU64>::default();
        let subscriptions = Gauge::default();
        let dht_contacts = Gauge::<u64, AtomicU64>::default();
        let dht_records = Gauge::<u64, AtomicU64>::default();
        let dht_lookups = Gauge::<u64, AtomicU64>::default();
        let dht_lookups_failed = Gauge::<u64, AtomicU64>::default();
        let dht_lookup_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "requests",
            "gRPC requests by method and status",
            requests.clone(),
        );
        registry.register(
            "auth_failures",
            "refused authorizations and proofs",
            auth_failures.clone(),
        );
        registry.register(
            "stored_bytes",
            "bytes stored for customers",
            stored_bytes.clone(),
        );
        registry.register("fragments", "committed fragments", fragments.clone());
        registry.register(
            "disk_free_bytes",
            "bytes free on the data directory's disk",
            disk_free_bytes.clone(),
        );
        registry.register(
            "fragment_file_bytes",
            "bytes of the files holding fragment payloads, deleted ones not yet reclaimed included",
            fragment_file_bytes.clone(),
        );
        registry.register(
            "subscriptions",
            "open update subscriptions",
            subscriptions.clone(),
        );
        registry.register(
            "dht_contacts",
            "contacts in the DHT routing table",
            dht_contacts.clone(),
        );
        registry.register("dht_records", "DHT records held", dht_records.clone());
        registry.register("dht_lookups", "DHT lookups run", dht_lookups.clone());
        registry.register(
            "dht_lookups_failed",
            "DHT lookups that failed or reached no node",
            dht_lookups_failed.clone(),
        );
        registry.register(
            "dht_lookup_seconds",
            "seconds spent in DHT lookups, summed",
            dht_lookup_seconds.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            auth_failures,
            stored_bytes,
            fragments,
            disk_free_bytes,
            fragment_file_bytes,
            subscriptions,
            dht_contacts,
            dht_records,
            dht_lookups,
            dht_lookups_failed,
            dht_lookup_seconds,
        }
    }
}

impl Metrics {
    /// Counts one request.
    pub fn request(&self, method: &str, code: tonic::Code) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                code: format!("{code:?}"),
            })
            .inc();
        if matches!(
            code,
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        ) {
            self.auth_failures.inc();
        }
    }

    /// Sets the usage gauges.
    pub fn set_usage(&self, bytes: u64, fragments: u64) {
        self.stored_bytes.set(bytes);
        self.fragments.set(fragments);
    }

    /// Sets the DHT gauges.
    pub fn set_dht(&self, stats: &dht::node::NodeStats) {
        self.dht_contacts.set(stats.contacts as u64);
        self.dht_records.set(stats.records as u64);
        self.dht_lookups.set(stats.lookups);
        self.dht_lookups_failed.set(stats.lookups_failed);
        self.dht_lookup_seconds
            .set(stats.lookup_micros as f64 / 1e6);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            warn!("cannot encode metrics");
        }
        text
    }

    /// Serves `/metrics` on `listener` until `cancel` fires.
    pub fn serve(
        self,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    () = cancel.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            warn!(error = %e, "metrics accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let metrics = self.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let metrics = metrics.clone();
                            async move { Ok::<_, std::convert::Infallible>(metrics.respond(&request)) }
                        },
                    );
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service);
                    let deadline =
                        tokio::time::timeout(std::time::Duration::from_secs(30), connection);
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        result = deadline => if let Ok(Err(e)) = result {
                            debug!(error = %e, "metrics connection failed");
                        },
                    }
                });
            }
        })
    }

    fn respond(&self, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let (status, body) =
            if request.method() == hyper::Method::GET && request.uri().path() == "/metrics" {
                (StatusCode::OK, self.encode())
            } else {
                (
                    StatusCode::NOT_FOUND,
                    "not found: try /metrics\n".to_owned(),
                )
            };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if status == StatusCode::OK
            && let Ok(value) = "text/plain; version=0.0.4; charset=utf-8".parse()
        {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    }
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
