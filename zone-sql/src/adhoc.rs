//! Ad-hoc SQL over zone tables, run by DataFusion: each zone table becomes
//! an in-memory table named by its zone path, queried read-only.

use crate::json::value_to_json;
use crate::value::{Attrs, Value};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, DurationMicrosecondBuilder, Float64Builder,
    Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, DurationMicrosecondType, Field, Float64Type, Int64Type, Schema, TimeUnit,
    TimestampMicrosecondType,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::catalog::MemTable;
use datafusion::common::TableReference;
use datafusion::execution::context::{SQLOptions, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;
use serde_json::{Map, Value as Json};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Rows a query may return.
pub const MAX_RESULT_ROWS: usize = 10_000;
/// Bytes of query text accepted.
pub const MAX_QUERY_TEXT: usize = 64 * 1024;

/// A zone table to query: its rows keyed by child zone name.
#[derive(Clone, Debug, Default)]
pub struct NamedTable {
    /// The zone path, used as the table name (e.g. "/eu/paris").
    pub name: String,
    /// (child zone name, attributes) per row.
    pub rows: Vec<(String, Attrs)>,
    /// Columns the table has even when no row holds them, each typed by a
    /// sample value (a table emptied keeps the columns it had).
    pub columns: Vec<(String, Value)>,
}

/// Why an ad-hoc query failed.
#[derive(Debug, thiserror::Error)]
pub enum AdhocError {
    #[error("only a single SELECT (or WITH ... SELECT) query is allowed: {0}")]
    NotAQuery(String),
    #[error("query text is {len} bytes, more than the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("table {0} is given twice")]
    DuplicateTable(String),
    #[error("the result has more than {max} rows; add a LIMIT or a WHERE")]
    TooManyRows { max: usize },
    #[error("{0}")]
    Sql(String),
}

impl From<datafusion::error::DataFusionError> for AdhocError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        AdhocError::Sql(e.to_string())
    }
}

/// A query's result: the column names in SELECT order, and the rows as
/// JSON objects keyed by them (objects do not keep an order of their own).
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Map<String, Json>>,
}

/// Runs one read-only query over the given zone tables and returns the
/// result rows as JSON objects.
pub async fn run_query(
    tables: Vec<NamedTable>,
    sql: &str,
) -> Result<Vec<Map<String, Json>>, AdhocError> {
    Ok(query(tables, sql).await?.rows)
}

/// [`run_query`], keeping the column order.
pub async fn query(tables: Vec<NamedTable>, sql: &str) -> Result<QueryResult, AdhocError> {
    check_query(sql)?;
    run(&context(&tables)?, sql).await
}

/// Runs each of `sqls` over the same tables, registered once; each query's
/// own result (a failure to register the tables fails them all).
pub async fn query_all(
    tables: &[NamedTable],
    sqls: &[&str],
) -> Result<Vec<Result<QueryResult, AdhocError>>, AdhocError> {
    let ctx = context(tables)?;
    let mut out = Vec::with_capacity(sqls.len());
    for sql in sqls {
        let r = match check_query(sql) {
            Ok(()) => run(&ctx, sql).await,
            Err(e) => Err(e),
        };
        out.push(r);
    }
    Ok(out)
}

/// A session with `tables` registered by name.
fn context(tables: &[NamedTable]) -> Result<SessionContext, AdhocError> {
    let ctx = SessionContext::new();
    let mut seen = HashSet::new();
    for t in tables {
        if !seen.insert(t.name.as_str()) {
            return Err(AdhocError::DuplicateTable(t.name.clone()));
        }
        let batch = record_batch(t)?;
        let mem = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        ctx.register_table(TableReference::bare(t.name.as_str()), Arc::new(mem))?;
    }
    Ok(ctx)
}

/// Runs one checked query in `ctx`.
async fn run(ctx: &SessionContext, sql: &str) -> Result<QueryResult, AdhocError> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx.sql_with_options(sql, options).await?;
    let keys = column_keys(
        df.schema()
            .iter()
            .map(|(q, f)| (q.map(|q| q.to_string()), f.name().clone())),
    );
    let batches = df.limit(0, Some(MAX_RESULT_ROWS + 1))?.collect().await?;
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    if total > MAX_RESULT_ROWS {
        return Err(AdhocError::TooManyRows {
            max: MAX_RESULT_ROWS,
        });
    }
    let mut out = Vec::with_capacity(total);
    for b in &batches {
        let cols: Vec<Vec<Json>> = b
            .columns()
            .iter()
            .map(|c| array_to_json(c.as_ref()))
            .collect();
        for r in 0..b.num_rows() {
            let mut m = Map::new();
            for (k, col) in keys.iter().zip(&cols) {
                m.insert(k.clone(), col.get(r).cloned().unwrap_or(Json::Null));
            }
            out.push(m);
        }
    }
    Ok(QueryResult {
        columns: keys,
        rows: out,
    })
}

/// Accepts exactly one query statement (SELECT, WITH, set operations).
pub fn check_query(sql: &str) -> Result<(), AdhocError> {
    if sql.len() > MAX_QUERY_TEXT {
        return Err(AdhocError::TooLong {
            len: sql.len(),
            max: MAX_QUERY_TEXT,
        });
    }
    let stmts = DFParser::parse_sql(sql).map_err(|e| AdhocError::Sql(e.to_string()))?;
    if stmts.len() != 1 {
        return Err(AdhocError::NotAQuery(format!(
            "found {} statements",
            stmts.len()
        )));
    }
    match stmts.front() {
        Some(DfStatement::Statement(s)) if matches!(s.as_ref(), Statement::Query(_)) => Ok(()),
        _ => Err(AdhocError::NotAQuery(
            "found another kind of statement".into(),
        )),
    }
}

/// Result keys: the column name, qualified by its table when two columns
/// share a name (as in a join), numbered if still ambiguous.
fn column_keys(cols: impl Iterator<Item = (Option<String>, String)>) -> Vec<String> {
    let cols: Vec<(Option<String>, String)> = cols.collect();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, n) in &cols {
        *count.entry(n.as_str()).or_default() += 1;
    }
    let mut used = HashSet::new();
    cols.iter()
        .map(|(q, n)| {
            let mut key = match (count.get(n.as_str()), q) {
                (Some(c), Some(q)) if *c > 1 => format!("{q}.{n}"),
                _ => n.clone(),
            };
            let base = key.clone();
            let mut k = 2;
            while !used.insert(key.clone()) {
                key = format!("{base}#{k}");
                k += 1;
            }
            key
        })
        .collect()
}

/// The Arrow type of an attribute column, from the values it holds.
#[derive(Clone, Copy, PartialEq, Debug)]
enum ColType {
    Empty,
    Int,
    Float,
    Str,
    Bool,
    Time,
    Duration,
    List,
    /// Conflicting types: the displayed value as text.
    Mixed,
}

fn col_type(t: ColType, v: &Value) -> ColType {
    let vt = match v {
        Value::Null => return t,
        Value::Int(_) => ColType::Int,
        Value::Float(_) => ColType::Float,
        Value::Str(_) => ColType::Str,
        Value::Bool(_) => ColType::Bool,
        Value::Time(_) => ColType::Time,
        Value::Duration(_) => ColType::Duration,
        Value::List(_) => ColType::List,
    };
    match (t, vt) {
        (ColType::Empty, vt) => vt,
        (a, b) if a == b => a,
        (ColType::Int, ColType::Float) | (ColType::Float, ColType::Int) => ColType::Float,
        _ => ColType::Mixed,
    }
}

/// Builds the record batch of one zone table: `name` first, then one
/// column per attribute seen in any row, typed from its values. An
/// attribute called `name` is shadowed by the child name.
pub fn record_batch(t: &NamedTable) -> Result<RecordBatch, AdhocError> {
    let mut types: BTreeMap<&str, ColType> = BTreeMap::new();
    for (_, attrs) in &t.rows {
        for (n, v) in attrs.iter() {
            if &**n == "name" {
                continue;
            }
            let e = types.entry(n).or_insert(ColType::Empty);
            *e = col_type(*e, v);
        }
    }
    for (n, v) in &t.columns {
        if n != "name" {
            let e = types.entry(n).or_insert(ColType::Empty);
            *e = col_type(*e, v);
        }
    }
    let mut fields = Vec::with_capacity(types.len() + 1);
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(types.len() + 1);

    let mut names = StringBuilder::new();
    for (n, _) in &t.rows {
        names.append_value(n);
    }
    fields.push(Field::new("name", DataType::Utf8, false));
    arrays.push(Arc::new(names.finish()));

    for (col, ty) in &types {
        let vals = t
            .rows
            .iter()
            .map(|(_, a)| a.get(col).unwrap_or(&Value::Null));
        let array: ArrayRef = match ty {
            ColType::Int => {
                let mut b = Int64Builder::new();
                for v in vals {
                    b.append_option(match v {
                        Value::Int(i) => Some(*i),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ColType::Float => {
                let mut b = Float64Builder::new();
                for v in vals {
                    b.append_option(
                        v.as_f64()
                            .filter(|_| matches!(v, Value::Int(_) | Value::Float(_))),
                    );
                }
                Arc::new(b.finish())
            }
            ColType::Bool => {
                let mut b = BooleanBuilder::new();
                for v in vals {
                    b.append_option(match v {
                        Value::Bool(x) => Some(*x),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ColType::Time => {
                let mut b = TimestampMicrosecondBuilder::new();
                for v in vals {
                    b.append_option(match v {
                        Value::Time(x) => Some(*x),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ColType::Duration => {
                let mut b = DurationMicrosecondBuilder::new();
                for v in vals {
                    b.append_option(match v {
                        Value::Duration(x) => Some(*x),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ColType::List => {
                let mut b = ListBuilder::new(StringBuilder::new());
                for v in vals {
                    match v {
                        Value::List(items) => {
                            for s in items.iter() {
                                b.values().append_value(s);
                            }
                            b.append(true);
                        }
                        _ => b.append(false),
                    }
                }
                Arc::new(b.finish())
            }
            ColType::Str | ColType::Mixed | ColType::Empty => {
                let mut b = StringBuilder::new();
                for v in vals {
                    match v {
                        Value::Null => b.append_null(),
                        Value::Str(s) => b.append_value(s),
                        v => b.append_value(v.to_string()),
                    }
                }
                Arc::new(b.finish())
            }
        };
        fields.push(Field::new(*col, array.data_type().clone(), true));
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| AdhocError::Sql(e.to_string()))
}

/// Converts one result column to JSON values, one per row.
fn array_to_json(a: &dyn Array) -> Vec<Json> {
    let n = a.len();
    let nulls = |f: &dyn Fn(usize) -> Json| -> Vec<Json> {
        (0..n)
            .map(|i| if a.is_null(i) { Json::Null } else { f(i) })
            .collect()
    };
    match a.data_type() {
        DataType::Null => vec![Json::Null; n],
        DataType::Boolean => match a.as_boolean_opt() {
            Some(b) => nulls(&|i| Json::Bool(b.value(i))),
            None => formatted(a),
        },
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => match cast(a, &DataType::Int64) {
            Ok(c) => match c.as_primitive_opt::<Int64Type>() {
                Some(p) => nulls(&|i| Json::from(p.value(i))),
                None => formatted(a),
            },
            Err(_) => formatted(a),
        },
        DataType::UInt64
        | DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => match cast(a, &DataType::Float64) {
            Ok(c) => match c.as_primitive_opt::<Float64Type>() {
                Some(p) => nulls(&|i| value_to_json(&Value::Float(p.value(i)))),
                None => formatted(a),
            },
            Err(_) => formatted(a),
        },
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => match cast(a, &DataType::Utf8)
        {
            Ok(c) => match c.as_string_opt::<i32>() {
                Some(s) => nulls(&|i| Json::String(s.value(i).to_string())),
                None => formatted(a),
            },
            Err(_) => formatted(a),
        },
        DataType::Timestamp(_, tz) => {
            match cast(a, &DataType::Timestamp(TimeUnit::Microsecond, tz.clone())) {
                Ok(c) => match c.as_primitive_opt::<TimestampMicrosecondType>() {
                    Some(p) => nulls(&|i| value_to_json(&Value::Time(p.value(i)))),
                    None => formatted(a),
                },
                Err(_) => formatted(a),
            }
        }
        DataType::Duration(_) => match cast(a, &DataType::Duration(TimeUnit::Microsecond)) {
            Ok(c) => match c.as_primitive_opt::<DurationMicrosecondType>() {
                Some(p) => nulls(&|i| value_to_json(&Value::Duration(p.value(i)))),
                None => formatted(a),
            },
            Err(_) => formatted(a),
        },
        DataType::List(_) => match a.as_list_opt::<i32>() {
            Some(l) => nulls(&|i| Json::Array(array_to_json(l.value(i).as_ref()))),
            None => formatted(a),
        },
        DataType::LargeList(_) => match a.as_list_opt::<i64>() {
            Some(l) => nulls(&|i| Json::Array(array_to_json(l.value(i).as_ref()))),
            None => formatted(a),
        },
        DataType::Struct(fields) => match a.as_struct_opt() {
            Some(s) => {
                let cols: Vec<Vec<Json>> = s
                    .columns()
                    .iter()
                    .map(|c| array_to_json(c.as_ref()))
                    .collect();
                nulls(&|i| {
                    Json::Object(
                        fields
                            .iter()
                            .zip(&cols)
                            .map(|(f, c)| {
                                (f.name().clone(), c.get(i).cloned().unwrap_or(Json::Null))
                            })
                            .collect(),
                    )
                })
            }
            None => formatted(a),
        },
        _ => formatted(a),
    }
}

/// Any other type, as Arrow displays it.
fn formatted(a: &dyn Array) -> Vec<Json> {
    let opts = FormatOptions::default();
    match ArrayFormatter::try_new(a, &opts) {
        Ok(f) => (0..a.len())
            .map(|i| {
                if a.is_null(i) {
                    Json::Null
                } else {
                    Json::String(f.value(i).to_string())
                }
            })
            .collect(),
        Err(_) => vec![Json::Null; a.len()],
    }
}
