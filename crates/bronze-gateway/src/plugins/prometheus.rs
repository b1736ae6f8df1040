//! prometheus: Kong's per-route metrics on top of the status-class counter
//! every route has (`bronze_gateway_http_requests_total`):
//! `status_code_metrics` counts exact codes (with the consumer when
//! `per_consumer`), `latency_metrics` observes request, upstream and
//! gateway latencies. Handles are resolved once per route, so a request
//! pays atomics (and a read lock for a code seen before).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use http::StatusCode;
use http::header::HeaderMap;
use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use serde::Deserialize;

use super::{Ctx, Plugin, parse_config};
use crate::declarative::Invalid;
use crate::metrics::{CodeLabels, GatewayMetrics, LatencyLabels};

/// Kong's configuration of prometheus with nothing set, as Kong shows it
/// (3.9's `kong/plugins/prometheus/schema.lua`): every field, with its
/// default or null. Bronze reads an unset field as that default.
pub(crate) fn kong_defaults() -> serde_json::Value {
    serde_json::json!({
        "per_consumer": false,
        "status_code_metrics": false,
        "ai_metrics": false,
        "latency_metrics": false,
        "bandwidth_metrics": false,
        "upstream_health_metrics": false,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    per_consumer: Option<bool>,
    #[serde(default)]
    status_code_metrics: Option<bool>,
    #[serde(default)]
    latency_metrics: Option<bool>,
    #[serde(default)]
    bandwidth_metrics: Option<bool>,
    #[serde(default)]
    upstream_health_metrics: Option<bool>,
    #[serde(default)]
    ai_metrics: Option<bool>,
}

#[derive(Clone, Copy)]
pub struct Prometheus {
    per_consumer: bool,
    status_codes: bool,
    latency: bool,
}

impl Prometheus {
    pub fn new(config: Option<&serde_json::Value>, field: &str) -> Result<Self, Invalid> {
        let c: Config = parse_config(config, field)?;
        for (on, name) in [
            (c.bandwidth_metrics, "bandwidth_metrics"),
            (c.upstream_health_metrics, "upstream_health_metrics"),
            (c.ai_metrics, "ai_metrics"),
        ] {
            if on == Some(true) {
                return Err(Invalid::new(
                    format!("{field}.{name}"),
                    "not implemented in Bronze; expected false",
                ));
            }
        }
        Ok(Self {
            per_consumer: c.per_consumer.unwrap_or(false),
            status_codes: c.status_code_metrics.unwrap_or(false),
            latency: c.latency_metrics.unwrap_or(false),
        })
    }
}

struct Latencies {
    request: Histogram,
    upstream: Histogram,
    gateway: Histogram,
}

/// The instance of one route.
struct ForRoute {
    conf: Prometheus,
    route: String,
    service: String,
    latencies: OnceLock<Latencies>,
    /// (status, source, consumer index or u32::MAX) to its counter.
    codes: RwLock<HashMap<(u16, &'static str, u32), Counter, foldhash::fast::RandomState>>,
}

impl Plugin for Prometheus {
    fn name(&self) -> &'static str {
        "prometheus"
    }

    fn priority(&self) -> i32 {
        13
    }

    fn for_route(&self, route: &str, service: &str) -> Option<Arc<dyn Plugin>> {
        Some(Arc::new(ForRoute {
            conf: *self,
            route: route.to_string(),
            service: service.to_string(),
            latencies: OnceLock::new(),
            codes: RwLock::new(HashMap::default()),
        }))
    }
}

impl Plugin for ForRoute {
    fn name(&self) -> &'static str {
        "prometheus"
    }

    fn priority(&self) -> i32 {
        13
    }

    fn log(&self, ctx: &Ctx, status: StatusCode, _headers: &HeaderMap, m: &GatewayMetrics) {
        if self.conf.status_codes {
            let consumer = ctx.consumer.as_ref().filter(|_| self.conf.per_consumer);
            let key = (
                status.as_u16(),
                ctx.source(),
                consumer.map_or(u32::MAX, |c| c.index),
            );
            let known = self.codes.read().get(&key).cloned();
            let counter = known.unwrap_or_else(|| {
                let c = m
                    .codes
                    .get_or_create(&CodeLabels {
                        route: self.route.clone(),
                        service: self.service.clone(),
                        code: key.0,
                        source: key.1,
                        consumer: consumer.map(|c| c.username.clone()).unwrap_or_default(),
                    })
                    .clone();
                self.codes.write().insert(key, c.clone());
                c
            });
            counter.inc();
        }
        if self.conf.latency {
            let l = self.latencies.get_or_init(|| {
                let labels = LatencyLabels {
                    route: self.route.clone(),
                    service: self.service.clone(),
                };
                Latencies {
                    request: m.request_latency.get_or_create(&labels).clone(),
                    upstream: m.upstream_latency.get_or_create(&labels).clone(),
                    gateway: m.gateway_latency.get_or_create(&labels).clone(),
                }
            });
            let total = ctx.started.elapsed();
            l.request.observe(total.as_secs_f64());
            if let Some(up) = ctx.upstream_latency {
                l.upstream.observe(up.as_secs_f64());
                l.gateway.observe(total.saturating_sub(up).as_secs_f64());
            } else {
                l.gateway.observe(total.as_secs_f64());
            }
        }
    }
}
