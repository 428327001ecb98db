//! A columnar view of a zone table, built once per table change and shared
//! by every AFC evaluated over it.

use crate::value::{Attrs, Name, Value};
use std::sync::Arc;

/// One attribute across all rows of a [`Frame`].
///
/// Columns whose values are all ints (or all ints and floats) are stored
/// unboxed so aggregates over them run as tight loops.
#[derive(Clone, Debug)]
pub(crate) enum Column {
    /// Ints and nulls; `valid` is `None` when there is no null.
    Int {
        vals: Vec<i64>,
        valid: Option<Vec<bool>>,
        stats: Stats<i64, i128>,
    },
    /// Floats, ints promoted to floats, and nulls.
    Float {
        vals: Vec<f64>,
        valid: Option<Vec<bool>>,
        stats: Stats<f64, f64>,
    },
    /// Anything else, boxed.
    Any(Vec<Value>),
}

/// Whole-column aggregates of a numeric column, computed once when the
/// frame is built so that unfiltered MIN/MAX/SUM/COUNT/AVG cost nothing per
/// evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Stats<T, S> {
    /// Non-null values.
    pub count: u64,
    pub sum: S,
    /// Meaningful only when `count > 0`.
    pub min: T,
    pub max: T,
}

fn int_stats(vals: &[i64], valid: Option<&[bool]>) -> Stats<i64, i128> {
    let mut st = Stats {
        count: 0,
        sum: 0i128,
        min: i64::MAX,
        max: i64::MIN,
    };
    for (i, &x) in vals.iter().enumerate() {
        if valid.is_none_or(|v| v.get(i).copied().unwrap_or(false)) {
            st.count += 1;
            st.sum += x as i128;
            st.min = st.min.min(x);
            st.max = st.max.max(x);
        }
    }
    st
}

fn float_stats(vals: &[f64], valid: Option<&[bool]>) -> Stats<f64, f64> {
    let mut st = Stats {
        count: 0,
        sum: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };
    for (i, &x) in vals.iter().enumerate() {
        if valid.is_none_or(|v| v.get(i).copied().unwrap_or(false)) {
            st.count += 1;
            st.sum += x;
            if x < st.min {
                st.min = x;
            }
            if x > st.max {
                st.max = x;
            }
        }
    }
    st
}

impl Column {
    /// The value at `row` (which must be in range).
    #[inline]
    pub(crate) fn get(&self, row: usize) -> Value {
        match self {
            Column::Int { vals, valid, .. } => {
                if valid.as_ref().is_none_or(|v| v[row]) {
                    Value::Int(vals[row])
                } else {
                    Value::Null
                }
            }
            Column::Float { vals, valid, .. } => {
                if valid.as_ref().is_none_or(|v| v[row]) {
                    Value::Float(vals[row])
                } else {
                    Value::Null
                }
            }
            Column::Any(vals) => vals[row].clone(),
        }
    }
}

/// A columnar zone table: one column per attribute present in any row,
/// missing attributes read as NULL.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    len: usize,
    /// Sorted column names.
    names: Vec<Name>,
    columns: Vec<Column>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Empty,
    Int,
    Float,
    Any,
}

impl Kind {
    fn with(self, v: &Value) -> Kind {
        match (self, v) {
            (k, Value::Null) => k,
            (Kind::Empty | Kind::Int, Value::Int(_)) => Kind::Int,
            (Kind::Empty | Kind::Int | Kind::Float, Value::Float(_)) => Kind::Float,
            (Kind::Float, Value::Int(_)) => Kind::Float,
            _ => Kind::Any,
        }
    }
}

fn same_name(a: &Name, b: &Name) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// Merges the sorted names of `row` into the sorted union `names`.
fn merge_names(names: &mut Vec<Name>, row: &Attrs) {
    let mut out = Vec::with_capacity(names.len().max(row.len()));
    let (mut i, mut j) = (0, 0);
    let entries = row.entries();
    while i < names.len() || j < entries.len() {
        match (names.get(i), entries.get(j)) {
            (Some(a), Some((b, _))) => match if Arc::ptr_eq(a, b) {
                std::cmp::Ordering::Equal
            } else {
                a.cmp(b)
            } {
                std::cmp::Ordering::Less => {
                    out.push(a.clone());
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push(b.clone());
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    out.push(a.clone());
                    i += 1;
                    j += 1;
                }
            },
            (Some(a), None) => {
                out.push(a.clone());
                i += 1;
            }
            (None, Some((b, _))) => {
                out.push(b.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    *names = out;
}

/// Calls `f(column_index, value)` for every entry of `row`, given the sorted
/// union of names (a superset of the row's names). `aligned` rows have
/// exactly the union's names, so no name needs comparing.
#[inline]
fn for_each_cell(names: &[Name], row: &Attrs, aligned: bool, mut f: impl FnMut(usize, &Value)) {
    if aligned {
        for (c, (_, v)) in row.entries().iter().enumerate() {
            f(c, v);
        }
        return;
    }
    let mut c = 0;
    for (n, v) in row.entries() {
        while c < names.len() && !same_name(&names[c], n) {
            c += 1;
        }
        if c < names.len() {
            f(c, v);
        }
    }
}

impl Frame {
    /// Builds the columnar view of `rows` (in table order).
    pub fn from_rows<'a, I: IntoIterator<Item = &'a Attrs>>(rows: I) -> Frame {
        let rows: Vec<&Attrs> = rows.into_iter().collect();
        let len = rows.len();

        // The union of names. Rows usually share one set of names; a row
        // equal to the union at the end is "aligned" and its cells need no
        // name lookups below.
        let mut names: Vec<Name> = Vec::new();
        let mut version = 0u32;
        let mut matched: Vec<Option<u32>> = Vec::with_capacity(len);
        for r in &rows {
            let same =
                r.len() == names.len() && names.iter().zip(r.names()).all(|(a, b)| same_name(a, b));
            if !same {
                merge_names(&mut names, r);
                version += 1;
            }
            // After a merge the row's names are a subset of the union, so
            // equal sizes mean equal sets.
            matched.push((r.len() == names.len()).then_some(version));
        }
        let aligned: Vec<bool> = matched.iter().map(|m| *m == Some(version)).collect();

        let mut kinds = vec![Kind::Empty; names.len()];
        for (r, &al) in rows.iter().zip(&aligned) {
            for_each_cell(&names, r, al, |c, v| kinds[c] = kinds[c].with(v));
        }

        let mut columns: Vec<Column> = kinds
            .iter()
            .map(|k| match k {
                Kind::Int => Column::Int {
                    vals: vec![0; len],
                    valid: Some(vec![false; len]),
                    stats: int_stats(&[], None),
                },
                Kind::Float => Column::Float {
                    vals: vec![0.0; len],
                    valid: Some(vec![false; len]),
                    stats: float_stats(&[], None),
                },
                Kind::Empty | Kind::Any => Column::Any(vec![Value::Null; len]),
            })
            .collect();

        for (i, (r, &al)) in rows.iter().zip(&aligned).enumerate() {
            for_each_cell(&names, r, al, |c, v| match (&mut columns[c], v) {
                (_, Value::Null) => {}
                (Column::Int { vals, valid, .. }, Value::Int(x)) => {
                    vals[i] = *x;
                    if let Some(valid) = valid {
                        valid[i] = true;
                    }
                }
                (Column::Float { vals, valid, .. }, Value::Int(x)) => {
                    vals[i] = *x as f64;
                    if let Some(valid) = valid {
                        valid[i] = true;
                    }
                }
                (Column::Float { vals, valid, .. }, Value::Float(x)) => {
                    vals[i] = *x;
                    if let Some(valid) = valid {
                        valid[i] = true;
                    }
                }
                (Column::Any(vals), v) => vals[i] = v.clone(),
                // Kinds were computed from the same values, so no other
                // combination occurs.
                _ => {}
            });
        }

        for col in &mut columns {
            match col {
                Column::Int { vals, valid, stats } => {
                    if valid.as_ref().is_some_and(|v| v.iter().all(|b| *b)) {
                        *valid = None;
                    }
                    *stats = int_stats(vals, valid.as_deref());
                }
                Column::Float { vals, valid, stats } => {
                    if valid.as_ref().is_some_and(|v| v.iter().all(|b| *b)) {
                        *valid = None;
                    }
                    *stats = float_stats(vals, valid.as_deref());
                }
                Column::Any(_) => {}
            }
        }

        Frame {
            len,
            names,
            columns,
        }
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The names of the attributes present in any row, sorted.
    pub fn column_names(&self) -> &[Name] {
        &self.names
    }

    /// The value of attribute `name` at `row` (NULL when absent).
    pub fn value(&self, row: usize, name: &str) -> Value {
        match self.column(name) {
            Some(c) if row < self.len => c.get(row),
            _ => Value::Null,
        }
    }

    pub(crate) fn column(&self, name: &str) -> Option<&Column> {
        self.names
            .binary_search_by(|n| (**n).cmp(name))
            .ok()
            .map(|i| &self.columns[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_typed_and_missing_is_null() {
        let rows: Vec<Attrs> = vec![
            [("a", Value::Int(1)), ("b", Value::Float(0.5))]
                .into_iter()
                .collect(),
            [("a", Value::Int(2)), ("c", Value::from("x"))]
                .into_iter()
                .collect(),
            [("b", Value::Int(3))].into_iter().collect(),
        ];
        let f = Frame::from_rows(&rows);
        assert_eq!(f.len(), 3);
        assert_eq!(f.column_names().len(), 3);
        assert!(matches!(f.column("a"), Some(Column::Int { .. })));
        assert!(matches!(f.column("b"), Some(Column::Float { .. })));
        assert!(matches!(f.column("c"), Some(Column::Any(_))));
        assert_eq!(f.value(2, "a"), Value::Null);
        assert_eq!(f.value(2, "b"), Value::Float(3.0));
        assert_eq!(f.value(1, "c"), Value::from("x"));
        assert_eq!(f.value(0, "zzz"), Value::Null);
    }

    #[test]
    fn dense_columns_drop_validity() {
        let rows: Vec<Attrs> = (0..4)
            .map(|i| [("a", Value::Int(i))].into_iter().collect())
            .collect();
        let f = Frame::from_rows(&rows);
        assert!(matches!(
            f.column("a"),
            Some(Column::Int { valid: None, .. })
        ));
    }
}
