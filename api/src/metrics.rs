//! The gateway's Prometheus registry as a processor sees it, for counters of its own
//! beyond what the chain measures for every hook.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use prometheus::core::Collector;
use prometheus::{IntCounterVec, Opts, Registry};

/// Metric families processors add to the gateway's `/metrics`. A family is registered
/// once and handed out again to every route and every reload that asks for the same
/// name: Prometheus refuses a second registration under one name, and a reload must
/// keep counting where the last config stopped.
pub struct MetricFamilies {
    registry: Registry,
    counters: Mutex<HashMap<String, IntCounterVec>>,
}

impl fmt::Debug for MetricFamilies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_set().entries(counters.keys()).finish()
    }
}

impl MetricFamilies {
    /// Families registered on `registry` (the one `/metrics` exports).
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            counters: Mutex::new(HashMap::new()),
        }
    }

    /// The counter family `name` with `labels`, registered on first use. Asking again
    /// with other labels is an error, not a second family: one name means one series
    /// layout in every scrape.
    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(family) = counters.get(name) {
            let same = family.desc().first().is_some_and(|d| {
                d.variable_labels
                    .iter()
                    .map(String::as_str)
                    .eq(labels.iter().copied())
            });
            return if same {
                Ok(family.clone())
            } else {
                Err(prometheus::Error::Msg(format!(
                    "metric `{name}` is already registered with other labels"
                )))
            };
        }
        let family = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.registry.register(Box::new(family.clone()))?;
        counters.insert(name.to_string(), family.clone());
        Ok(family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder;

    #[test]
    fn a_family_is_registered_once_and_shared() {
        let registry = Registry::new();
        let families = MetricFamilies::new(registry.clone());
        let a = families.counter_vec("x_total", "x", &["route"]).unwrap();
        let b = families.counter_vec("x_total", "x", &["route"]).unwrap();
        a.with_label_values(&["r"]).inc();
        b.with_label_values(&["r"]).inc();
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("x_total{route=\"r\"} 2"), "{text}");
        let err = families
            .counter_vec("x_total", "x", &["route", "other"])
            .unwrap_err();
        assert!(err.to_string().contains("other labels"), "{err}");
        assert!(families.counter_vec("bad name", "x", &[]).is_err());
    }
}
