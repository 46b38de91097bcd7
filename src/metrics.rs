#![doc = include_str!("docs/metrics.md")]

#[cfg(feature = "metrics")]
mod imp {
    use std::sync::Arc;
    use std::time::Duration;

    use metrics::{
        counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
        Unit,
    };

    /// The handle `$handle` makes, made once per call site and kept (a `static` each): the
    /// recorder's lookup of a key, hashed under a lock, cost about 250 instructions per counter
    /// and there are a dozen per session. The recorder must be installed before the first
    /// session, as `ws-proxy` does at startup.
    macro_rules! cached {
        ($ty:ty, $handle:expr) => {{
            static HANDLE: std::sync::OnceLock<$ty> = std::sync::OnceLock::new();
            HANDLE.get_or_init(|| $handle)
        }};
    }

    pub(crate) const SESSIONS_LIVE: &str = "ws_proxy_sessions_live";
    pub(crate) const SESSIONS_TOTAL: &str = "ws_proxy_sessions_total";
    pub(crate) const HANDSHAKE_FAILURES: &str = "ws_proxy_handshake_failures_total";
    pub(crate) const MESSAGES: &str = "ws_proxy_messages_total";
    pub(crate) const BYTES: &str = "ws_proxy_bytes_total";
    pub(crate) const COMPRESSED_BYTES: &str = "ws_proxy_compressed_bytes_total";
    pub(crate) const UNDELIVERABLE: &str = "ws_proxy_undeliverable_messages_total";
    pub(crate) const HANDSHAKE_SECONDS: &str = "ws_proxy_upstream_handshake_seconds";
    pub(crate) const CLOSE_CODES: &str = "ws_proxy_close_codes_total";
    pub(crate) const SPLICED_BYTES: &str = "ws_proxy_spliced_bytes_total";
    pub(crate) const SESSIONS_OPENED: &str = "ws_proxy_sessions_opened_total";
    pub(crate) const TLS_RELOADS: &str = "ws_proxy_tls_reloads_total";
    pub(crate) const SESSIONS_SHED: &str = "ws_proxy_sessions_shed_total";

    /// Registers descriptions (the `# HELP` lines) with the installed recorder; call it once
    /// after installing one.
    ///
    /// ```
    /// // With e.g. metrics-exporter-prometheus:
    /// // let handle = PrometheusBuilder::new().install_recorder()?;
    /// axum_ws_proxy::metrics::describe_metrics();
    /// ```
    pub fn describe_metrics() {
        describe_gauge!(
            SESSIONS_LIVE,
            "WebSocket sessions open now, per upstream endpoint"
        );
        describe_counter!(SESSIONS_TOTAL, "Ended sessions, by who ended them");
        describe_counter!(
            HANDSHAKE_FAILURES,
            "Upgrades that did not become sessions, by cause"
        );
        describe_counter!(MESSAGES, "Data messages forwarded, by direction");
        describe_counter!(BYTES, Unit::Bytes, "Payload bytes forwarded, by direction");
        describe_counter!(
            COMPRESSED_BYTES,
            Unit::Bytes,
            "permessage-deflate payload bytes on the client's wire, by direction"
        );
        describe_counter!(
            UNDELIVERABLE,
            "Data messages read that could not be delivered (after a close began, or cut), by mode"
        );
        describe_histogram!(
            HANDSHAKE_SECONDS,
            Unit::Seconds,
            "Dial to the upstream's answer, failover included"
        );
        describe_counter!(
            CLOSE_CODES,
            "Close codes per leg (1005: none, 1006: dropped)"
        );
        describe_counter!(
            SPLICED_BYTES,
            Unit::Bytes,
            "Tunnel payload bytes moved socket to socket with splice(2)"
        );
        describe_counter!(
            SESSIONS_OPENED,
            "Sessions opened, by the client's protocol (h1, h2) and whether it came over TLS"
        );
        describe_counter!(TLS_RELOADS, "Certificate reloads, by result");
        describe_counter!(
            SESSIONS_SHED,
            "Sessions the proxy asked to close with 1012, by reason (drain, rebalance)"
        );
    }

    /// The close-code counter of leg `$leg` for label `$label` (one of [`code_label`]'s), from
    /// a key kept in a static (one per arm).
    macro_rules! close_code_counter {
        ($leg:literal, $label:expr) => {
            close_code_counter!(@arms $leg, $label, [
                "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009",
                "1010", "1011", "1012", "1013", "1014", "1015", "3000-3999", "4000-4999"
            ])
        };
        (@arms $leg:literal, $label:expr, [$($code:literal),*]) => {
            match $label {
                $($code => cached!(Counter, counter!(CLOSE_CODES, "leg" => $leg, "code" => $code)),)*
                _ => cached!(Counter, counter!(CLOSE_CODES, "leg" => $leg, "code" => "other")),
            }
        };
    }

    /// `upstream`: the endpoint's address as text, made once per endpoint.
    /// One upstream endpoint's live-sessions gauge: its label made once, and the handle taken
    /// from the recorder at the endpoint's first session (a key with a label from a variable
    /// is built, allocated and hashed on every call). The recorder must be installed before
    /// the first session, as `ws-proxy` does at startup.
    #[derive(Debug)]
    pub(crate) struct LiveGauge {
        label: Arc<str>,
        gauge: std::sync::OnceLock<metrics::Gauge>,
    }

    impl LiveGauge {
        pub(crate) fn new(addr: std::net::SocketAddr) -> Self {
            Self {
                label: addr.to_string().into(),
                gauge: std::sync::OnceLock::new(),
            }
        }

        fn gauge(&self) -> &metrics::Gauge {
            self.gauge
                .get_or_init(|| gauge!(SESSIONS_LIVE, "upstream" => Arc::clone(&self.label)))
        }
    }

    pub(crate) fn session_opened(upstream: &LiveGauge, protocol: &'static str, tls: bool) {
        upstream.gauge().increment(1.0);
        // Every label a literal in its own arm: the macro keeps each key in a static, where a
        // label from a variable would build (allocate) the key on every call.
        match (protocol, tls) {
            ("h2", true) => cached!(
                Counter,
                counter!(SESSIONS_OPENED, "protocol" => "h2", "tls" => "true")
            ),
            ("h2", false) => cached!(
                Counter,
                counter!(SESSIONS_OPENED, "protocol" => "h2", "tls" => "false")
            ),
            (_, true) => cached!(
                Counter,
                counter!(SESSIONS_OPENED, "protocol" => "h1", "tls" => "true")
            ),
            (_, false) => cached!(
                Counter,
                counter!(SESSIONS_OPENED, "protocol" => "h1", "tls" => "false")
            ),
        }
        .increment(1);
    }

    pub(crate) fn tls_reloaded(ok: bool) {
        counter!(TLS_RELOADS, "result" => if ok { "ok" } else { "error" }).increment(1);
    }

    /// A session ended: who closed it (`client`, `upstream`, `proxy`) and each leg's code.
    pub(crate) fn session_closed(
        upstream: &LiveGauge,
        closed_by: &'static str,
        client_code: u16,
        upstream_code: u16,
    ) {
        upstream.gauge().decrement(1.0);
        match closed_by {
            "client" => cached!(Counter, counter!(SESSIONS_TOTAL, "outcome" => "client")),
            "upstream" => cached!(Counter, counter!(SESSIONS_TOTAL, "outcome" => "upstream")),
            _ => cached!(Counter, counter!(SESSIONS_TOTAL, "outcome" => "proxy")),
        }
        .increment(1);
        close_code_counter!("client", code_label(client_code)).increment(1);
        close_code_counter!("upstream", code_label(upstream_code)).increment(1);
    }

    /// A close code as a label: the registered codes as themselves, the rest in ranges, so no
    /// peer can create series (the code space has 65 536 values per leg).
    pub(crate) fn code_label(code: u16) -> &'static str {
        const REGISTERED: [&str; 16] = [
            "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010",
            "1011", "1012", "1013", "1014", "1015",
        ];
        match code {
            1000..=1015 => REGISTERED[usize::from(code - 1000)],
            3000..=3999 => "3000-3999",
            4000..=4999 => "4000-4999",
            _ => "other",
        }
    }

    /// The proxy asked a healthy session to close (`reason`: `drain`, `rebalance`).
    pub(crate) fn session_shed(reason: &'static str) {
        counter!(SESSIONS_SHED, "reason" => reason).increment(1);
    }

    pub(crate) fn handshake_failed(cause: &'static str) {
        counter!(HANDSHAKE_FAILURES, "cause" => cause).increment(1);
    }

    /// A session ended with `lost` data messages it could not deliver (`mode`: `frames`,
    /// `tunnel`).
    pub(crate) fn undeliverable(mode: &'static str, lost: u64) {
        if lost > 0 {
            counter!(UNDELIVERABLE, "mode" => mode).increment(lost);
        }
    }

    pub(crate) fn upstream_answered(after: Duration) {
        cached!(metrics::Histogram, histogram!(HANDSHAKE_SECONDS)).record(after.as_secs_f64());
    }

    pub(crate) fn spliced(bytes: usize) {
        counter!(SPLICED_BYTES).increment(bytes as u64);
    }

    /// Handles for one direction's message and byte counters, looked up once per session
    /// (the compressed bytes' when there are some).
    #[derive(Debug)]
    pub(crate) struct TrafficCounters {
        messages: Counter,
        bytes: Counter,
        compressed: Option<Counter>,
        to_upstream: bool,
        /// Counts nothing (what a reader that only hands bytes on walks).
        none: bool,
    }

    impl TrafficCounters {
        // Literal labels: the macro keeps each key in a static instead of building a label
        // list per session.
        pub(crate) fn to_upstream() -> Self {
            Self {
                messages: cached!(Counter, counter!(MESSAGES, "direction" => "to_upstream"))
                    .clone(),
                bytes: cached!(Counter, counter!(BYTES, "direction" => "to_upstream")).clone(),
                compressed: None,
                to_upstream: true,
                none: false,
            }
        }

        pub(crate) fn to_client() -> Self {
            Self {
                messages: cached!(Counter, counter!(MESSAGES, "direction" => "to_client")).clone(),
                bytes: cached!(Counter, counter!(BYTES, "direction" => "to_client")).clone(),
                compressed: None,
                to_upstream: false,
                none: false,
            }
        }

        pub(crate) fn none() -> Self {
            Self {
                messages: Counter::noop(),
                bytes: Counter::noop(),
                compressed: Some(Counter::noop()),
                to_upstream: false,
                none: true,
            }
        }

        pub(crate) fn add(&self, bytes: u64) {
            self.messages.increment(1);
            self.bytes.increment(bytes);
        }

        pub(crate) fn compressed(&mut self, bytes: u64) {
            if self.none {
                return;
            }
            let to_upstream = self.to_upstream;
            self.compressed
                .get_or_insert_with(|| {
                    if to_upstream {
                        counter!(COMPRESSED_BYTES, "direction" => "to_upstream")
                    } else {
                        counter!(COMPRESSED_BYTES, "direction" => "to_client")
                    }
                })
                .increment(bytes);
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use std::time::Duration;

    #[derive(Debug)]
    pub(crate) struct LiveGauge;

    impl LiveGauge {
        pub(crate) fn new(_: std::net::SocketAddr) -> Self {
            Self
        }
    }

    pub(crate) fn session_opened(_: &LiveGauge, _: &'static str, _: bool) {}
    #[allow(dead_code)]
    pub(crate) fn tls_reloaded(_: bool) {}
    pub(crate) fn session_closed(_: &LiveGauge, _: &'static str, _: u16, _: u16) {}
    pub(crate) fn handshake_failed(_: &'static str) {}
    pub(crate) fn session_shed(_: &'static str) {}
    pub(crate) fn undeliverable(_: &'static str, _: u64) {}
    pub(crate) fn upstream_answered(_: Duration) {}
    pub(crate) fn spliced(_: usize) {}

    #[derive(Debug)]
    pub(crate) struct TrafficCounters;

    impl TrafficCounters {
        pub(crate) fn to_upstream() -> Self {
            Self
        }

        pub(crate) fn to_client() -> Self {
            Self
        }

        pub(crate) fn none() -> Self {
            Self
        }

        pub(crate) fn add(&self, _: u64) {}

        pub(crate) fn compressed(&mut self, _: u64) {}
    }
}

#[cfg(feature = "metrics")]
pub use imp::describe_metrics;
#[cfg(all(feature = "serve", feature = "tls"))]
pub(crate) use imp::tls_reloaded;
pub(crate) use imp::{
    handshake_failed, session_closed, session_opened, session_shed, spliced, undeliverable,
    upstream_answered, LiveGauge, TrafficCounters,
};

#[cfg(all(test, feature = "metrics"))]
mod tests {
    #[test]
    fn close_code_labels_are_bounded() {
        let labels: std::collections::BTreeSet<_> =
            (0..=u16::MAX).map(super::imp::code_label).collect();
        assert_eq!(labels.len(), 16 + 3, "{labels:?}");
        for code in 1000..=1015 {
            assert_eq!(super::imp::code_label(code), code.to_string());
        }
        assert_eq!(super::imp::code_label(4000), "4000-4999");
        assert_eq!(super::imp::code_label(999), "other");
    }
}
