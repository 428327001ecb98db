//! What CHM puts in the zone tree: each agent's components in its leaf
//! row, compactly, and the built-in aggregation that gives every zone its
//! health counts, its first critical ids and its Bloom filter.
//!
//! Leaf row attributes:
//!
//! | attribute | value |
//! |---|---|
//! | `chm_components` | one entry per component (see [`Entry`]), at most [`COMPONENTS_BYTES`] |
//! | `chm_passing`, `chm_warning`, `chm_critical` | counts of this agent's components |
//! | `chm_adj_passing`, `chm_adj_warning`, `chm_adj_critical` | corrections for the dead neighbours this agent accounts for |
//! | `chm_critical_ids` | its critical ids, then those of the dead neighbours it accounts for (first [`CRITICAL_IDS`]) |
//! | `chm_bloom` | the Bloom filter of its component ids and keywords |
//! | `chm_dead` | the leaf names of the neighbours it holds dead |
//!
//! The components of a dead agent count as critical: its row cannot say
//! so, so one neighbour, the first live one after it in name order (as
//! the neighbour sees the zone), publishes corrections that take the dead
//! row's contribution out of the sums and put all its components back as
//! critical. When that neighbour dies too, the next one takes over both.

use super::qos::{Level, QosView};
use super::registry::{ComponentId, MAX_ADDRESS, MAX_ID, MAX_KEYWORD, MAX_KEYWORDS, Status, cut};
use crate::limits::{MAX_LIST_LEN, MAX_VALUE_BYTES};
use crate::row::{Micros, Row};
use zone_sql::Value;

pub const COMPONENTS: &str = "chm_components";
pub const PASSING: &str = "chm_passing";
pub const WARNING: &str = "chm_warning";
pub const CRITICAL: &str = "chm_critical";
pub const ADJ_PASSING: &str = "chm_adj_passing";
pub const ADJ_WARNING: &str = "chm_adj_warning";
pub const ADJ_CRITICAL: &str = "chm_adj_critical";
pub const CRITICAL_IDS: &str = "chm_critical_ids";
pub const BLOOM: &str = "chm_bloom";
pub const DEAD: &str = "chm_dead";

/// Critical ids a row lists.
pub const CRITICAL_IDS_N: usize = 8;
/// Bytes of the `chm_components` value.
pub const COMPONENTS_BYTES: usize = MAX_VALUE_BYTES;
/// Bytes of a reason in the row.
pub const ROW_REASON: usize = 48;
/// Dead neighbours a row lists.
pub const MAX_DEAD_LISTED: usize = 16;

/// The built-in aggregation of every zone.
pub fn aggregation() -> String {
    let count =
        |c: &str, adj: &str| format!("GREATEST(SUM({c}) + COALESCE(SUM({adj}), 0), 0) AS {c}");
    format!(
        "SELECT {}, {}, {}, FIRST({CRITICAL_IDS_N}, {CRITICAL_IDS}) AS {CRITICAL_IDS}, OR({BLOOM}) AS {BLOOM}",
        count(PASSING, ADJ_PASSING),
        count(WARNING, ADJ_WARNING),
        count(CRITICAL, ADJ_CRITICAL),
    )
}

/// One component in its agent's leaf row:
/// `id|status|since_ms|qos|address|keywords|reason`, the status one
/// letter, QoS a level letter with the outlier share in thousandths and
/// the sample count (`o12/400`), keywords comma-separated, the reason
/// (cut to [`ROW_REASON`] bytes) only for a component that is not passing.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: ComponentId,
    pub status: Status,
    pub since: Micros,
    pub qos: QosView,
    pub address: Option<String>,
    pub keywords: Vec<String>,
    pub reason: String,
}

impl Entry {
    pub fn encode(&self) -> String {
        let reason = if self.status == Status::Passing {
            ""
        } else {
            &self.reason
        };
        format!(
            "{}|{}|{}|{}{}/{}|{}|{}|{}",
            self.id,
            self.status.letter(),
            self.since / 1000,
            self.qos.level.letter(),
            (self.qos.outlier_ratio * 1000.0).round().clamp(0.0, 1000.0) as u32,
            self.qos.samples,
            self.address.as_deref().unwrap_or(""),
            self.keywords.join(","),
            cut(&reason.replace('|', "/"), ROW_REASON),
        )
    }

    /// An entry from a row: None when malformed (a hostile or newer row).
    pub fn decode(s: &str) -> Option<Entry> {
        let mut f = s.splitn(7, '|');
        let id = ComponentId::parse(f.next()?).ok()?;
        let mut st = f.next()?.chars();
        let status = Status::from_letter(st.next()?)?;
        let since = f.next()?.parse::<u64>().ok()?.checked_mul(1000)?;
        let q = f.next()?;
        let mut qc = q.chars();
        let level = Level::from_letter(qc.next()?)?;
        let (ratio, samples) = qc.as_str().split_once('/')?;
        let ratio = ratio.parse::<u32>().ok().filter(|r| *r <= 1000)? as f64 / 1000.0;
        let samples = samples.parse::<u64>().ok()?;
        let address = Some(f.next()?)
            .filter(|a| !a.is_empty() && a.len() <= MAX_ADDRESS)
            .map(str::to_string);
        let kw = f.next()?;
        let keywords: Vec<String> = if kw.is_empty() {
            Vec::new()
        } else {
            kw.split(',')
                .take(MAX_KEYWORDS)
                .map(|k| cut(k, MAX_KEYWORD))
                .collect()
        };
        let reason = cut(f.next().unwrap_or(""), ROW_REASON);
        Some(Entry {
            id,
            status,
            since,
            qos: QosView {
                level,
                outlier_ratio: ratio,
                samples,
            },
            address,
            keywords,
            reason,
        })
    }

    /// The longest this component's entry can grow (every field at its
    /// widest), so that no later status change can break the row's budget.
    pub fn worst_len(id: &ComponentId, address: Option<&str>, keywords: &[String]) -> usize {
        let kw: usize = keywords.iter().map(|k| k.len() + 1).sum();
        // id | s | 13-digit ms | q + 4 + / + 20 | address | keywords | reason, and list overhead
        id.as_str().len().min(MAX_ID)
            + 2
            + 1
            + 14
            + 27
            + address.map_or(0, str::len)
            + 1
            + kw
            + 1
            + ROW_REASON
            + 2
    }
}

/// Whether entries of these widths fit the row's budget for them.
pub fn fits(worst: impl IntoIterator<Item = usize>) -> Result<(), (usize, usize)> {
    let mut n = 0;
    let mut total = 3;
    for w in worst {
        n += 1;
        total += w;
    }
    if n > MAX_LIST_LEN || total > COMPONENTS_BYTES {
        return Err((total, COMPONENTS_BYTES));
    }
    Ok(())
}

/// An integer attribute of a row (0 when absent).
pub fn int(row: &Row, attr: &str) -> i64 {
    match row.get(attr) {
        Some(Value::Int(i)) => *i,
        _ => 0,
    }
}

/// A list attribute of a row.
pub fn list<'r>(row: &'r Row, attr: &str) -> &'r [std::sync::Arc<str>] {
    match row.get(attr) {
        Some(Value::List(l)) => l,
        _ => &[],
    }
}

/// The component entries of a row that decode.
pub fn entries(row: &Row) -> impl Iterator<Item = Entry> + '_ {
    list(row, COMPONENTS)
        .iter()
        .filter_map(|e| Entry::decode(e))
}

/// What a row adds to its zone's counts: its own, corrected.
pub fn contribution(row: &Row) -> [i64; 3] {
    [
        int(row, PASSING) + int(row, ADJ_PASSING),
        int(row, WARNING) + int(row, ADJ_WARNING),
        int(row, CRITICAL) + int(row, ADJ_CRITICAL),
    ]
}

/// The correction that turns a dead agent's row into all its components
/// critical: minus what the row contributes, plus its components.
pub fn dead_correction(row: &Row) -> [i64; 3] {
    let c = contribution(row);
    let own = int(row, PASSING) + int(row, WARNING) + int(row, CRITICAL);
    [-c[0], -c[1], own - c[2]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_refuse_garbage() {
        let e = Entry {
            id: ComponentId::parse("web-1").unwrap(),
            status: Status::Critical,
            since: 1_767_225_600_123_000,
            qos: QosView {
                level: Level::Moderate,
                outlier_ratio: 0.073,
                samples: 400,
            },
            address: Some("10.0.0.1:80".into()),
            keywords: vec!["web".into(), "eu".into()],
            reason: "HTTP 503 | Service Unavailable".into(),
        };
        let s = e.encode();
        assert!(s.len() <= Entry::worst_len(&e.id, Some("10.0.0.1:80"), &e.keywords));
        let d = Entry::decode(&s).unwrap();
        assert_eq!(d.reason, "HTTP 503 / Service Unavailable");
        assert_eq!(
            (d.id, d.status, d.since, d.qos),
            (e.id.clone(), e.status, e.since, e.qos)
        );
        assert_eq!(
            (d.address, d.keywords),
            (e.address.clone(), e.keywords.clone())
        );
        for bad in [
            "",
            "X|p|1|u0/0|||",
            "a|z|1|u0/0|||",
            "a|p|x|u0/0|||",
            "a|p|1|q0/0|||",
            "a|p|1|o2000/1|||",
        ] {
            assert_eq!(Entry::decode(bad), None, "{bad}");
        }
        let p = Entry::decode("a|p|1|u0/0|||").unwrap();
        assert_eq!((p.address, p.keywords.len()), (None, 0));
    }

    #[test]
    fn the_aggregation_compiles() {
        let p = zone_sql::Program::compile(&aggregation()).expect("valid");
        assert!(p.outputs().iter().all(|o| o.starts_with("chm_")));
    }
}
