//! `GET /metrics`: the status counters in Prometheus' text format.

use super::ApiState;
use super::error::ApiError;
use crate::node::Status;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use std::fmt::Write;

const CONTENT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn metrics(State(s): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let status = s.handle.status().await?;
    Ok(([(CONTENT_TYPE, CONTENT)], render(&status)))
}

/// Renders the status as Prometheus metrics.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let mut family = String::new();
    for (key, value) in &s.counters {
        let (name, labels) = split_labels(key);
        let name = metric_name(name);
        let name = name.strip_suffix("_total").unwrap_or(&name);
        if family != name {
            let _ = writeln!(out, "# TYPE armillary_{name}_total counter");
            family = name.to_string();
        }
        let _ = writeln!(out, "armillary_{name}_total{labels} {value}");
    }
    for (key, value) in &s.gauges {
        let (name, labels) = split_labels(key);
        let name = metric_name(name);
        if family != name {
            let _ = writeln!(out, "# TYPE armillary_{name} gauge");
            family = name.clone();
        }
        let _ = writeln!(out, "armillary_{name}{labels} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP armillary_rejected_total Messages, rows and AFCs refused, by reason."
    );
    let _ = writeln!(out, "# TYPE armillary_rejected_total counter");
    for (reason, value) in &s.rejected {
        let _ = writeln!(
            out,
            "armillary_rejected_total{{reason=\"{}\"}} {value}",
            label_value(reason)
        );
    }
    let _ = writeln!(out, "# HELP armillary_round Gossip rounds run since start.");
    let _ = writeln!(out, "# TYPE armillary_round gauge");
    let _ = writeln!(out, "armillary_round {}", s.round);
    let _ = writeln!(
        out,
        "# HELP armillary_insecure 1 when the agent runs without keys."
    );
    let _ = writeln!(out, "# TYPE armillary_insecure gauge");
    let _ = writeln!(out, "armillary_insecure {}", u8::from(s.insecure));
    out
}

/// A counter name reduced to the characters Prometheus allows.
fn metric_name(n: &str) -> String {
    n.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// `name{label="v"}` into the name and its labels (kept as written: the
/// services that name them write valid labels).
fn split_labels(key: &str) -> (&str, &str) {
    match key.find('{') {
        Some(i) if key.ends_with('}') => (&key[..i], &key[i..]),
        _ => (key, ""),
    }
}

fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::ZonePath;
    use std::collections::BTreeMap;

    #[test]
    fn renders_counters_reasons_and_gauges() {
        let s = Status {
            leaf: ZonePath::parse("/a/h1").unwrap(),
            gossip_addr: "127.0.0.1:1".into(),
            insecure: true,
            identity: None,
            zones: vec![ZonePath::root()],
            round: 7,
            now: 0,
            counters: BTreeMap::from([
                ("msgs_sent".to_string(), 3),
                ("odd-name".to_string(), 1),
                ("chm_checks_run{kind=\"http\"}".to_string(), 4),
                ("chm_checks_run{kind=\"tcp\"}".to_string(), 5),
            ]),
            gauges: BTreeMap::from([("chm_components{status=\"passing\"}".to_string(), 2)]),
            rejected: BTreeMap::from([("bad \"sig\"".to_string(), 2)]),
        };
        let text = render(&s);
        assert!(text.contains("armillary_msgs_sent_total 3\n"), "{text}");
        assert!(text.contains("armillary_odd_name_total 1\n"), "{text}");
        assert!(
            text.contains("armillary_rejected_total{reason=\"bad \\\"sig\\\"\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("armillary_round 7\n"), "{text}");
        assert_eq!(
            text.matches("# TYPE armillary_chm_checks_run_total counter")
                .count(),
            1
        );
        assert!(
            text.contains("armillary_chm_checks_run_total{kind=\"tcp\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE armillary_chm_components gauge\narmillary_chm_components{status=\"passing\"} 2\n"), "{text}");
        assert!(text.contains("armillary_insecure 1\n"), "{text}");
    }
}
