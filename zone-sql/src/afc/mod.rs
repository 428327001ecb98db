//! Aggregation function certificates: the SQL programs that compute a zone's
//! summary row from its child table. Compiled once, evaluated every round.
//!
//! The dialect is one `SELECT` over the child table (`FROM` optional, any
//! single table name), with optional `WHERE` (filters child rows) and
//! `ORDER BY` (orders child rows for `FIRST`/`RANDOM`). Every item is an
//! aggregate, possibly inside scalar expressions, and needs `AS name`
//! unless it is a bare aggregate over one column, which keeps the column's
//! name (`MAX(load)` outputs `load`).
//!
//! Aggregates: `MIN`, `MAX`, `SUM`, `COUNT(*)`, `COUNT(x)`, `AVG(x)`,
//! `AVG(x, w)` (weighted), `OR`/`AND` (also `BOOL_OR`/`BOOL_AND`; bitwise
//! over ints, and over bitmaps written as hex strings of one length, such
//! as Bloom filters), `FIRST(n, a)` and `RANDOM(n, a)` (lists of at most
//! `MAX_FIRST_N` strings, lists flattened). Scalars: arithmetic,
//! comparisons, three-valued `AND`/`OR`/`NOT`, `IS [NOT] NULL`, `BETWEEN`,
//! `IN`, `LIKE`/`ILIKE`, `CASE`, `COALESCE`, `NULLIF`, `ABS`, `ROUND`,
//! `LEAST`, `GREATEST`, `CAST`, `||`, `TIMESTAMP '...'`, `INTERVAL '...'`.
//! Identifiers are case-sensitive attribute names.

mod agg;
mod compile;
mod error;
mod expr;

pub use error::{AfcError, EvalError, Pos};

use crate::frame::{Column, Frame};
use crate::value::{Attrs, Name, Value};
use agg::{AggFault, AggSpec, RowEnv, Sel};
use compile::SortKey;
use expr::{Env, Fault, Node};
use std::cmp::Ordering;
use std::sync::Arc;

/// Bytes of SQL text an AFC may have.
pub const MAX_AFC_TEXT: usize = 4096;
/// `Attrs::encoded_len` an output row may have.
pub const MAX_OUTPUT_BYTES: usize = 2048;
/// The largest `n` in `FIRST(n, a)` and `RANDOM(n, a)`.
pub const MAX_FIRST_N: usize = 16;
/// Output columns an AFC may have.
pub const MAX_OUTPUTS: usize = 64;
/// Expression nodes an AFC may have.
pub const MAX_NODES: usize = 256;
/// How deep expressions may nest.
pub const MAX_DEPTH: usize = 32;
/// Steps (child rows times expression nodes) one evaluation may take.
pub const EVAL_BUDGET: u64 = 1_000_000;

/// A compiled AFC. Cheap to clone and shareable across threads.
#[derive(Clone, Debug)]
pub struct Program {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sql: String,
    outputs: Vec<Name>,
    inputs: Vec<Name>,
    exprs: Vec<Node>,
    aggs: Vec<AggSpec>,
    filter: Option<Node>,
    /// Sort keys, kept only when some aggregate depends on row order.
    order: Vec<SortKey>,
    /// Output indexes in name order, to build the row without sorting.
    by_name: Vec<usize>,
    /// Budget steps per selected row, and for the rest.
    per_row: u64,
    per_filter_row: u64,
    fixed: u64,
}

/// Stack room for resolved columns before falling back to the heap.
const INLINE_COLS: usize = 16;
/// Stack room for aggregate results before falling back to the heap.
const INLINE_AGGS: usize = 16;

impl Program {
    /// Parses, validates and compiles an AFC; done once per AFC text.
    pub fn compile(sql: &str) -> Result<Program, AfcError> {
        let c = compile::compile(sql)?;
        let mut by_name: Vec<usize> = (0..c.outputs.len()).collect();
        by_name.sort_by(|a, b| c.outputs[*a].cmp(&c.outputs[*b]));
        let order = if c.aggs.iter().any(|a| a.kind.order_sensitive()) {
            c.order
        } else {
            Vec::new()
        };
        let order_size: u64 = order.iter().map(|k| k.expr.size()).sum();
        let agg_size: u64 = c
            .aggs
            .iter()
            .map(|a| {
                1 + a.arg.as_ref().map_or(0, Node::size) + a.weight.as_ref().map_or(0, Node::size)
            })
            .sum();
        let per_filter_row = 1 + c.filter.as_ref().map_or(0, Node::size);
        let fixed = 1 + c.exprs.iter().map(Node::size).sum::<u64>();
        Ok(Program {
            inner: Arc::new(Inner {
                sql: sql.to_string(),
                outputs: c.outputs,
                inputs: c.inputs,
                exprs: c.exprs,
                aggs: c.aggs,
                filter: c.filter,
                order,
                by_name,
                per_row: agg_size + order_size,
                per_filter_row,
                fixed,
            }),
        })
    }

    /// The AFC text as given.
    pub fn sql(&self) -> &str {
        &self.inner.sql
    }

    /// The output attribute names, in SELECT order.
    pub fn outputs(&self) -> &[Name] {
        &self.inner.outputs
    }

    /// The attribute names read from the child rows.
    pub fn inputs(&self) -> &[Name] {
        &self.inner.inputs
    }

    /// An upper bound on the steps evaluating over `rows` child rows takes.
    pub fn cost(&self, rows: usize) -> u64 {
        let n = rows as u64;
        let sort = if self.inner.order.is_empty() || n < 2 {
            0
        } else {
            n.saturating_mul(64 - n.leading_zeros() as u64)
                .saturating_mul(self.inner.order.len() as u64)
        };
        n.saturating_mul(self.inner.per_filter_row + self.inner.per_row)
            .saturating_add(sort)
            .saturating_add(self.inner.fixed)
    }

    /// Evaluates the AFC over a child table, producing the summary row.
    /// `seed` makes RANDOM deterministic.
    pub fn eval(&self, table: &Frame, seed: u64) -> Result<Attrs, EvalError> {
        let needed = self.cost(table.len());
        if needed > EVAL_BUDGET {
            return Err(EvalError::BudgetExceeded {
                needed,
                budget: EVAL_BUDGET,
            });
        }
        let inputs = &self.inner.inputs;
        if inputs.len() <= INLINE_COLS {
            let mut cols: [Option<&Column>; INLINE_COLS] = [None; INLINE_COLS];
            for (slot, name) in cols.iter_mut().zip(inputs) {
                *slot = table.column(name);
            }
            self.eval_with(table, &cols[..inputs.len()], seed)
        } else {
            let cols: Vec<Option<&Column>> = inputs.iter().map(|n| table.column(n)).collect();
            self.eval_with(table, &cols, seed)
        }
    }

    fn eval_with(
        &self,
        table: &Frame,
        cols: &[Option<&Column>],
        seed: u64,
    ) -> Result<Attrs, EvalError> {
        let inner = &*self.inner;
        let n = table.len();
        let where_name = "WHERE";

        let mut selected: Option<Vec<u32>> = None;
        if let Some(f) = &inner.filter {
            let mut keep = Vec::with_capacity(n);
            for row in 0..n {
                let v = f
                    .eval(&RowEnv { cols, row })
                    .map_err(|e| scalar_error(where_name, e))?;
                match v {
                    Value::Bool(true) => keep.push(row as u32),
                    Value::Bool(false) | Value::Null => {}
                    v => {
                        return Err(EvalError::Type {
                            output: where_name.into(),
                            message: format!("WHERE needs a bool, found {}", v.type_name()),
                        });
                    }
                }
            }
            selected = Some(keep);
        }
        if !inner.order.is_empty() {
            let rows = selected.unwrap_or_else(|| (0..n as u32).collect());
            selected = Some(self.sort_rows(cols, rows)?);
        }
        let sel = match &selected {
            Some(ix) => Sel::Idx(ix),
            None => Sel::All(n),
        };

        if inner.aggs.len() <= INLINE_AGGS {
            let mut buf: [Value; INLINE_AGGS] = Default::default();
            self.aggregate(cols, sel, seed, &mut buf[..inner.aggs.len()])
        } else {
            let mut buf = vec![Value::Null; inner.aggs.len()];
            self.aggregate(cols, sel, seed, &mut buf)
        }
    }

    /// Runs the aggregates into `results` (one slot each), then builds the
    /// output row from them.
    fn aggregate(
        &self,
        cols: &[Option<&Column>],
        sel: Sel<'_>,
        seed: u64,
        results: &mut [Value],
    ) -> Result<Attrs, EvalError> {
        let inner = &*self.inner;
        for (i, (spec, slot)) in inner.aggs.iter().zip(results.iter_mut()).enumerate() {
            *slot = agg::eval_agg(spec, i, cols, sel, seed).map_err(|f| agg_error(spec, f))?;
        }

        let mut entries = Vec::with_capacity(inner.exprs.len());
        for &i in &inner.by_name {
            let v = match &inner.exprs[i] {
                Node::Agg(k) => results.get_mut(*k).map(std::mem::take).unwrap_or_default(),
                e => e
                    .eval(&OutEnv { aggs: results })
                    .map_err(|f| scalar_error(&inner.outputs[i], f))?,
            };
            entries.push((inner.outputs[i].clone(), v));
        }
        let row = Attrs::from_sorted(entries);
        let len = row.encoded_len();
        if len > MAX_OUTPUT_BYTES {
            return Err(EvalError::OutputTooLarge {
                len,
                max: MAX_OUTPUT_BYTES,
            });
        }
        Ok(row)
    }

    /// Orders the selected rows by the query's ORDER BY (stable, so ties
    /// keep table order).
    fn sort_rows(&self, cols: &[Option<&Column>], rows: Vec<u32>) -> Result<Vec<u32>, EvalError> {
        let keys = &self.inner.order;
        let order_name = "ORDER BY";
        let mut keyed: Vec<(Vec<Value>, u32)> = Vec::with_capacity(rows.len());
        for row in rows {
            let env = RowEnv {
                cols,
                row: row as usize,
            };
            let mut vals = Vec::with_capacity(keys.len());
            for k in keys {
                vals.push(k.expr.eval(&env).map_err(|e| scalar_error(order_name, e))?);
            }
            keyed.push((vals, row));
        }
        keyed.sort_by(|(a, _), (b, _)| {
            for ((x, y), k) in a.iter().zip(b).zip(keys) {
                let o = match (x.is_null(), y.is_null()) {
                    (true, true) => Ordering::Equal,
                    (true, false) => {
                        if k.nulls_first {
                            Ordering::Less
                        } else {
                            Ordering::Greater
                        }
                    }
                    (false, true) => {
                        if k.nulls_first {
                            Ordering::Greater
                        } else {
                            Ordering::Less
                        }
                    }
                    (false, false) => {
                        let o = expr::sort_cmp(x, y);
                        if k.desc { o.reverse() } else { o }
                    }
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
        Ok(keyed.into_iter().map(|(_, r)| r).collect())
    }
}

/// Aggregate results for output expressions.
struct OutEnv<'a> {
    aggs: &'a [Value],
}

impl Env for OutEnv<'_> {
    fn col(&self, _: usize) -> Value {
        Value::Null
    }
    fn agg(&self, i: usize) -> Value {
        self.aggs.get(i).cloned().unwrap_or_default()
    }
}

fn scalar_error(output: &str, f: Fault) -> EvalError {
    match f {
        Fault::Type(message) => EvalError::Type {
            output: output.into(),
            message,
        },
        Fault::Overflow(what) => EvalError::Overflow {
            output: output.into(),
            what,
        },
    }
}

fn agg_error(spec: &AggSpec, f: AggFault) -> EvalError {
    match f {
        AggFault::Scalar(f) => scalar_error(&spec.output, f),
        AggFault::WrongType(found) => EvalError::AggregateType {
            output: spec.output.clone(),
            func: spec.kind.name(),
            attr: spec.label.clone(),
            found,
        },
        AggFault::Overflow => EvalError::Overflow {
            output: spec.output.clone(),
            what: spec.kind.name(),
        },
    }
}
