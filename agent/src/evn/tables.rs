//! The local tables a condition's SQL reads on each agent: the system
//! tables (`attrs`, this agent's leaf row; `components`, its CHM
//! components; `processes`, the host's processes) and the tables
//! applications fill through the API, each replaced whole.

use std::collections::BTreeMap;
use zone_sql::adhoc::NamedTable;
use zone_sql::{Attrs, Value};

/// The most application tables one agent holds.
pub const MAX_TABLES: usize = 32;
/// The most rows of one application table.
pub const MAX_ROWS: usize = 10_000;
/// The most bytes of one table as JSON (the request bound).
pub const MAX_TABLE_BYTES: usize = 1024 * 1024;
/// The most columns of one table.
pub const MAX_COLUMNS: usize = 64;
/// Names the system tables take.
pub const SYSTEM: [&str; 3] = ["attrs", "components", "processes"];

/// Why a table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error(
        "table name {0:?} is not allowed: 1 to 32 lower-case letters, digits or '_', starting with a letter"
    )]
    BadName(String),
    #[error("{0} is a system table; choose another name")]
    System(String),
    #[error("{0} rows; a table holds at most {MAX_ROWS}")]
    TooManyRows(usize),
    #[error("{0} columns; a table has at most {MAX_COLUMNS}")]
    TooManyColumns(usize),
    #[error("{MAX_TABLES} tables are held, the most an agent keeps; replace one")]
    Full,
    #[error("the rows are not a JSON array of objects with plain values: {0}")]
    Json(String),
}

/// The application tables of one agent.
#[derive(Debug, Default, Clone)]
pub struct LocalTables {
    tables: BTreeMap<String, Vec<Attrs>>,
    /// Each table's columns, typed by a sample value, kept when it is
    /// emptied so queries naming them still plan.
    columns: BTreeMap<String, Vec<(String, Value)>>,
}

/// Checks a table's name.
pub fn check_name(name: &str) -> Result<(), TableError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        return Err(TableError::BadName(name.to_string()));
    }
    if SYSTEM.contains(&name) {
        return Err(TableError::System(name.to_string()));
    }
    Ok(())
}

impl LocalTables {
    /// Replaces table `name` with `rows` (a JSON array of row objects).
    pub fn put(&mut self, name: &str, rows_json: &str) -> Result<usize, TableError> {
        check_name(name)?;
        let rows = zone_sql::json::table_from_json(rows_json)
            .map_err(|e| TableError::Json(e.to_string()))?;
        if rows.len() > MAX_ROWS {
            return Err(TableError::TooManyRows(rows.len()));
        }
        let mut cols: BTreeMap<String, Value> = BTreeMap::new();
        for r in &rows {
            for (n, v) in r.iter() {
                if !matches!(v, Value::Null) {
                    cols.entry(n.to_string()).or_insert_with(|| v.clone());
                }
            }
        }
        if cols.len() > MAX_COLUMNS {
            return Err(TableError::TooManyColumns(cols.len()));
        }
        if !self.tables.contains_key(name) && self.tables.len() >= MAX_TABLES {
            return Err(TableError::Full);
        }
        let n = rows.len();
        if !cols.is_empty() || rows.is_empty() {
            let kept = self.columns.entry(name.to_string()).or_default();
            if !cols.is_empty() {
                *kept = cols.into_iter().collect();
            }
        }
        self.tables.insert(name.to_string(), rows);
        Ok(n)
    }

    /// Drops table `name`; whether it was held.
    pub fn remove(&mut self, name: &str) -> bool {
        self.columns.remove(name);
        self.tables.remove(name).is_some()
    }

    /// Each table's name and row count.
    pub fn list(&self) -> Vec<(String, usize)> {
        self.tables
            .iter()
            .map(|(n, r)| (n.clone(), r.len()))
            .collect()
    }

    /// The tables as the query engine takes them.
    pub fn named(&self) -> Vec<NamedTable> {
        self.tables
            .iter()
            .map(|(n, rows)| {
                let mut t = table(n, rows.clone());
                t.columns = self.columns.get(n).cloned().unwrap_or_default();
                t
            })
            .collect()
    }
}

/// A table of rows keyed by their position.
pub fn table(name: &str, rows: Vec<Attrs>) -> NamedTable {
    NamedTable {
        name: name.to_string(),
        columns: Vec::new(),
        rows: rows
            .into_iter()
            .enumerate()
            .map(|(i, a)| (i.to_string(), a))
            .collect(),
    }
}

/// The `components` table: this agent's own CHM components, one row each
/// with their plain fields.
pub fn components(own: &[crate::chm::views::Own]) -> NamedTable {
    let rows = own
        .iter()
        .map(|o| {
            let mut a = Attrs::new();
            if let serde_json::Value::Object(m) = crate::chm::views::own(o) {
                for (k, v) in m {
                    if let Ok(v) = zone_sql::json::value_from_json(&v) {
                        a.set(k.as_str(), v);
                    }
                }
            }
            a
        })
        .collect();
    table("components", rows)
}

/// The `processes` table: one row per process (pid, name, cpu percent
/// since the previous reading, memory bytes). The readings are kept from
/// one evaluation to the next, since CPU use is a difference of two.
pub fn processes() -> NamedTable {
    use std::sync::{Mutex, OnceLock};
    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
    static SYS: OnceLock<Mutex<System>> = OnceLock::new();
    let mut sys = SYS
        .get_or_init(|| Mutex::new(System::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    sys.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing().with_cpu().with_memory(),
    );
    let rows = sys
        .processes()
        .iter()
        .take(MAX_ROWS)
        .map(|(pid, p)| {
            let mut a = Attrs::new();
            a.set("pid", Value::Int(pid.as_u32() as i64));
            a.set("pname", Value::Str(p.name().to_string_lossy().into()));
            a.set("cpu", Value::Float(p.cpu_usage() as f64));
            a.set("memory", Value::Int(p.memory() as i64));
            a
        })
        .collect();
    table("processes", rows)
}

/// A query's first row read as a truth value: its `hit` column, or else
/// its first column; true for `true` or a non-zero number. No row: false.
pub fn truth(result: &zone_sql::adhoc::QueryResult) -> Result<bool, String> {
    let Some(row) = result.rows.first() else {
        return Ok(false);
    };
    let col = if row.contains_key("hit") {
        "hit"
    } else {
        result
            .columns
            .first()
            .map(String::as_str)
            .ok_or("the query selects no column")?
    };
    match row.get(col) {
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(serde_json::Value::Number(n)) => Ok(n.as_f64().is_some_and(|x| x != 0.0)),
        Some(serde_json::Value::Null) | None => Ok(false),
        Some(other) => Err(format!(
            "column {col} is {other}, not a truth value; select a boolean AS hit"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_bounded_and_named() {
        let mut t = LocalTables::default();
        assert_eq!(
            t.put(
                "conns",
                r#"[{"peer":"a","failed":7},{"peer":"b","failed":1}]"#
            ),
            Ok(2)
        );
        assert!(matches!(t.put("attrs", "[]"), Err(TableError::System(_))));
        assert!(matches!(t.put("Bad", "[]"), Err(TableError::BadName(_))));
        assert!(matches!(t.put("x", "{}"), Err(TableError::Json(_))));
        assert!(matches!(
            t.put("x", r#"[{"a":{"b":1}}]"#),
            Err(TableError::Json(_))
        ));
        let wide: serde_json::Map<String, serde_json::Value> = (0..=MAX_COLUMNS)
            .map(|i| (format!("c{i}"), 1.into()))
            .collect();
        let wide = serde_json::Value::Array(vec![wide.into()]).to_string();
        assert!(matches!(
            t.put("x", &wide),
            Err(TableError::TooManyColumns(_))
        ));
        assert_eq!(t.list(), vec![("conns".to_string(), 2)]);
    }

    #[tokio::test]
    async fn a_condition_reads_the_tables() {
        let mut t = LocalTables::default();
        t.put(
            "conns",
            r#"[{"peer":"a","failed":7},{"peer":"b","failed":1}]"#,
        )
        .unwrap();
        let q = |sql: &'static str| {
            let tables = t.named();
            async move {
                zone_sql::adhoc::query(tables, sql)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        let r = q("SELECT COUNT(*) > 0 AS hit FROM conns WHERE failed > 5")
            .await
            .unwrap();
        assert_eq!(truth(&r), Ok(true));
        let r = q("SELECT COUNT(*) > 0 AS hit FROM conns WHERE failed > 50")
            .await
            .unwrap();
        assert_eq!(truth(&r), Ok(false));
        let r = q("SELECT 'x' AS hit").await.unwrap();
        assert!(truth(&r).is_err());
        assert!(q("SELECT * FROM nowhere").await.is_err());
        // Emptied, it keeps its columns: the query still plans, and is false.
        t.put("conns", "[]").unwrap();
        let tables = t.named();
        let r = zone_sql::adhoc::query(
            tables,
            "SELECT COUNT(*) > 0 AS hit FROM conns WHERE failed > 5",
        )
        .await
        .unwrap();
        assert_eq!(truth(&r), Ok(false));
    }
}
