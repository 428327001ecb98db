//! Aggregate functions over the selected child rows: typed tight loops when
//! the argument is a bare numeric column, a generic accumulator otherwise.

use super::MAX_FIRST_N;
use super::expr::{Env, Fault, Node, compare, for_each_item};
use crate::frame::{Column, Stats};
use crate::value::{Name, Value};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Ordering;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum AggKind {
    Min,
    Max,
    Sum,
    Count,
    CountStar,
    Avg,
    WeightedAvg,
    Or,
    And,
    First(usize),
    Random(usize),
}

impl AggKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            AggKind::Min => "MIN",
            AggKind::Max => "MAX",
            AggKind::Sum => "SUM",
            AggKind::Count | AggKind::CountStar => "COUNT",
            AggKind::Avg | AggKind::WeightedAvg => "AVG",
            AggKind::Or => "OR",
            AggKind::And => "AND",
            AggKind::First(_) => "FIRST",
            AggKind::Random(_) => "RANDOM",
        }
    }

    /// True for aggregates whose result depends on the order of the rows.
    pub(crate) fn order_sensitive(self) -> bool {
        matches!(self, AggKind::First(_) | AggKind::Random(_))
    }
}

/// One aggregate of a program.
#[derive(Clone, Debug)]
pub(crate) struct AggSpec {
    pub kind: AggKind,
    /// The aggregated expression (`None` for COUNT(*)).
    pub arg: Option<Node>,
    /// The weight of a weighted AVG.
    pub weight: Option<Node>,
    /// The output the aggregate belongs to, for error messages.
    pub output: Name,
    /// The aggregated attribute (or expression text), for error messages.
    pub label: String,
}

/// Why an aggregate failed.
#[derive(Debug)]
pub(crate) enum AggFault {
    Scalar(Fault),
    WrongType(&'static str),
    Overflow,
}

impl From<Fault> for AggFault {
    fn from(f: Fault) -> Self {
        AggFault::Scalar(f)
    }
}

/// The rows an aggregate runs over, in order.
#[derive(Clone, Copy)]
pub(crate) enum Sel<'a> {
    All(usize),
    Idx(&'a [u32]),
}

impl Sel<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Sel::All(n) => *n,
            Sel::Idx(ix) => ix.len(),
        }
    }

    #[inline]
    pub(crate) fn get(&self, k: usize) -> usize {
        match self {
            Sel::All(_) => k,
            Sel::Idx(ix) => ix[k] as usize,
        }
    }
}

/// Column lookups for one child row.
pub(crate) struct RowEnv<'a> {
    pub cols: &'a [Option<&'a Column>],
    pub row: usize,
}

impl Env for RowEnv<'_> {
    #[inline]
    fn col(&self, i: usize) -> Value {
        match self.cols.get(i) {
            Some(Some(c)) => c.get(self.row),
            _ => Value::Null,
        }
    }
    fn agg(&self, _: usize) -> Value {
        Value::Null
    }
}

/// Evaluates aggregate number `index` (mixed into the RANDOM seed).
pub(crate) fn eval_agg(
    spec: &AggSpec,
    index: usize,
    cols: &[Option<&Column>],
    sel: Sel<'_>,
    seed: u64,
) -> Result<Value, AggFault> {
    if spec.kind == AggKind::CountStar {
        return Ok(Value::Int(sel.len() as i64));
    }
    if let Some(Node::Col(c)) = &spec.arg
        && spec.weight.is_none()
    {
        match cols.get(*c).copied().flatten() {
            None => return Ok(empty_result(spec.kind)),
            Some(Column::Int { vals, valid, stats }) => {
                if let Sel::All(_) = sel
                    && let Some(v) = int_from_stats(spec.kind, stats)?
                {
                    return Ok(v);
                }
                if let Some(v) = int_fast(spec.kind, vals, valid.as_deref(), sel)? {
                    return Ok(v);
                }
            }
            Some(Column::Float { vals, valid, stats }) => {
                if let Sel::All(_) = sel
                    && let Some(v) = float_from_stats(spec.kind, stats)
                {
                    return Ok(v);
                }
                if let Some(v) = float_fast(spec.kind, vals, valid.as_deref(), sel) {
                    return Ok(v);
                }
            }
            Some(Column::Any(_)) => {}
        }
    }
    if spec.kind == AggKind::WeightedAvg {
        return weighted_avg(spec, cols, sel);
    }
    let mut acc = Acc::new(spec.kind, seed, index);
    let arg = match &spec.arg {
        Some(a) => a,
        None => return acc.finish(),
    };
    // A bare boxed column: feed the stored values without copying them.
    if let Node::Col(c) = arg
        && let Some(Some(Column::Any(vals))) = cols.get(*c)
    {
        for k in 0..sel.len() {
            match vals.get(sel.get(k)) {
                Some(v) if !v.is_null() && !acc.push(v)? => break,
                _ => {}
            }
        }
        return acc.finish();
    }
    for k in 0..sel.len() {
        let env = RowEnv {
            cols,
            row: sel.get(k),
        };
        let v = arg.eval(&env)?;
        if !v.is_null() && !acc.push(&v)? {
            break;
        }
    }
    acc.finish()
}

/// The result of an aggregate over no non-null values.
fn empty_result(kind: AggKind) -> Value {
    match kind {
        AggKind::Count | AggKind::CountStar => Value::Int(0),
        AggKind::First(_) | AggKind::Random(_) => Value::List(Arc::from(Vec::new())),
        _ => Value::Null,
    }
}

/// An aggregate over a whole int column, from the frame's precomputed stats.
fn int_from_stats(kind: AggKind, st: &Stats<i64, i128>) -> Result<Option<Value>, AggFault> {
    Ok(Some(match kind {
        AggKind::Count => Value::Int(st.count as i64),
        AggKind::Sum | AggKind::Min | AggKind::Max | AggKind::Avg if st.count == 0 => Value::Null,
        AggKind::Sum => Value::Int(i64::try_from(st.sum).map_err(|_| AggFault::Overflow)?),
        AggKind::Min => Value::Int(st.min),
        AggKind::Max => Value::Int(st.max),
        AggKind::Avg => Value::Float(st.sum as f64 / st.count as f64),
        _ => return Ok(None),
    }))
}

/// An aggregate over a whole float column, from the frame's precomputed stats.
fn float_from_stats(kind: AggKind, st: &Stats<f64, f64>) -> Option<Value> {
    Some(match kind {
        AggKind::Count => Value::Int(st.count as i64),
        AggKind::Sum | AggKind::Min | AggKind::Max | AggKind::Avg if st.count == 0 => Value::Null,
        AggKind::Sum => Value::Float(st.sum),
        AggKind::Min => Value::Float(st.min),
        AggKind::Max => Value::Float(st.max),
        AggKind::Avg => Value::Float(st.sum / st.count as f64),
        _ => return None,
    })
}

/// Folds `f` over the valid values of a numeric column in the selection.
#[inline(always)]
fn fold_num<T: Copy, A>(
    vals: &[T],
    valid: Option<&[bool]>,
    sel: Sel<'_>,
    init: A,
    mut f: impl FnMut(A, T) -> A,
) -> A {
    match (sel, valid) {
        (Sel::All(_), None) => vals.iter().fold(init, |a, &x| f(a, x)),
        (Sel::All(_), Some(ok)) => vals
            .iter()
            .zip(ok)
            .fold(init, |a, (&x, &ok)| if ok { f(a, x) } else { a }),
        (Sel::Idx(ix), None) => ix.iter().fold(init, |a, &i| match vals.get(i as usize) {
            Some(&x) => f(a, x),
            None => a,
        }),
        (Sel::Idx(ix), Some(ok)) => ix.iter().fold(init, |a, &i| {
            let i = i as usize;
            match (vals.get(i), ok.get(i)) {
                (Some(&x), Some(true)) => f(a, x),
                _ => a,
            }
        }),
    }
}

fn int_fast(
    kind: AggKind,
    vals: &[i64],
    valid: Option<&[bool]>,
    sel: Sel<'_>,
) -> Result<Option<Value>, AggFault> {
    Ok(Some(match kind {
        AggKind::Count => Value::Int(fold_num(vals, valid, sel, 0i64, |n, _| n + 1)),
        AggKind::Sum => {
            let (n, s) = fold_num(vals, valid, sel, (0u64, 0i128), |(n, s), x| {
                (n + 1, s + x as i128)
            });
            if n == 0 {
                Value::Null
            } else {
                Value::Int(i64::try_from(s).map_err(|_| AggFault::Overflow)?)
            }
        }
        AggKind::Min | AggKind::Max => {
            let max = kind == AggKind::Max;
            let init = if max { i64::MIN } else { i64::MAX };
            let (n, m) = fold_num(vals, valid, sel, (0u64, init), |(n, m), x| {
                (n + 1, if max { m.max(x) } else { m.min(x) })
            });
            if n == 0 { Value::Null } else { Value::Int(m) }
        }
        AggKind::Avg => {
            let (n, s) = fold_num(vals, valid, sel, (0u64, 0i128), |(n, s), x| {
                (n + 1, s + x as i128)
            });
            if n == 0 {
                Value::Null
            } else {
                Value::Float(s as f64 / n as f64)
            }
        }
        _ => return Ok(None),
    }))
}

fn float_fast(kind: AggKind, vals: &[f64], valid: Option<&[bool]>, sel: Sel<'_>) -> Option<Value> {
    Some(match kind {
        AggKind::Count => Value::Int(fold_num(vals, valid, sel, 0i64, |n, _| n + 1)),
        AggKind::Sum | AggKind::Avg => {
            let (n, s) = fold_num(vals, valid, sel, (0u64, 0.0f64), |(n, s), x| (n + 1, s + x));
            match (n, kind) {
                (0, _) => Value::Null,
                (_, AggKind::Sum) => Value::Float(s),
                _ => Value::Float(s / n as f64),
            }
        }
        AggKind::Min => {
            let (n, m) = fold_num(vals, valid, sel, (0u64, f64::INFINITY), |(n, m), x| {
                (n + 1, if x < m { x } else { m })
            });
            if n == 0 { Value::Null } else { Value::Float(m) }
        }
        AggKind::Max => {
            let (n, m) = fold_num(vals, valid, sel, (0u64, f64::NEG_INFINITY), |(n, m), x| {
                (n + 1, if x > m { x } else { m })
            });
            if n == 0 { Value::Null } else { Value::Float(m) }
        }
        _ => return None,
    })
}

fn number(v: &Value) -> Result<Option<f64>, AggFault> {
    match v {
        Value::Null => Ok(None),
        Value::Int(i) => Ok(Some(*i as f64)),
        Value::Float(x) => Ok(Some(*x)),
        v => Err(AggFault::WrongType(v.type_name())),
    }
}

/// AVG(x, w) = SUM(x*w) / SUM(w) over the rows where both are non-null.
fn weighted_avg(spec: &AggSpec, cols: &[Option<&Column>], sel: Sel<'_>) -> Result<Value, AggFault> {
    let (Some(x), Some(w)) = (&spec.arg, &spec.weight) else {
        return Ok(Value::Null);
    };
    let (mut num, mut den, mut n) = (0.0f64, 0.0f64, 0u64);
    for k in 0..sel.len() {
        let env = RowEnv {
            cols,
            row: sel.get(k),
        };
        let (xv, wv) = (x.eval(&env)?, w.eval(&env)?);
        if let (Some(xv), Some(wv)) = (number(&xv)?, number(&wv)?) {
            num += xv * wv;
            den += wv;
            n += 1;
        }
    }
    Ok(if n == 0 || den == 0.0 {
        Value::Null
    } else {
        Value::Float(num / den)
    })
}

/// Up to `MAX_FIRST_N` list items, kept inline so FIRST allocates only its
/// result.
#[derive(Default)]
struct Items {
    buf: [Option<Arc<str>>; MAX_FIRST_N],
    len: usize,
}

impl Items {
    fn push(&mut self, s: Arc<str>) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = Some(s);
            self.len += 1;
        }
    }

    fn take_all(&mut self) -> Arc<[Arc<str>]> {
        self.buf
            .iter_mut()
            .take(self.len)
            .map(|o| o.take().unwrap_or_else(|| Arc::from("")))
            .collect()
    }
}

/// The running state of a generic aggregate.
enum Acc {
    Count(i64),
    MinMax {
        best: Value,
        max: bool,
        saw_float: bool,
    },
    /// Summed wide so only the final result is range-checked, as in the
    /// typed loop.
    SumInt(Option<i128>),
    SumFloat(f64),
    SumDuration(i64),
    Avg {
        sum: f64,
        n: u64,
    },
    AvgDuration {
        sum: i128,
        n: i128,
    },
    Bits {
        and: bool,
        state: Value,
    },
    First {
        n: usize,
        items: Items,
    },
    Random {
        n: usize,
        seen: u64,
        items: Vec<Arc<str>>,
        rng: SmallRng,
    },
}

impl Acc {
    fn new(kind: AggKind, seed: u64, index: usize) -> Acc {
        match kind {
            AggKind::Count | AggKind::CountStar => Acc::Count(0),
            AggKind::Min | AggKind::Max => Acc::MinMax {
                best: Value::Null,
                max: kind == AggKind::Max,
                saw_float: false,
            },
            AggKind::Sum => Acc::SumInt(None),
            AggKind::Avg | AggKind::WeightedAvg => Acc::Avg { sum: 0.0, n: 0 },
            AggKind::Or | AggKind::And => Acc::Bits {
                and: kind == AggKind::And,
                state: Value::Null,
            },
            AggKind::First(n) => Acc::First {
                n: n.min(MAX_FIRST_N),
                items: Items::default(),
            },
            AggKind::Random(n) => Acc::Random {
                n,
                seen: 0,
                items: Vec::with_capacity(n),
                rng: SmallRng::seed_from_u64(
                    seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ),
            },
        }
    }

    /// Adds one non-null value; returns false when no further value can
    /// change the result.
    fn push(&mut self, v: &Value) -> Result<bool, AggFault> {
        match self {
            Acc::Count(n) => *n += 1,
            Acc::MinMax {
                best,
                max,
                saw_float,
            } => {
                if matches!(v, Value::List(_)) {
                    return Err(AggFault::WrongType(v.type_name()));
                }
                *saw_float |= matches!(v, Value::Float(_));
                if best.is_null() {
                    *best = v.clone();
                } else {
                    let o = compare(v, best).map_err(|_| AggFault::WrongType(v.type_name()))?;
                    let better = match o {
                        Some(Ordering::Less) => !*max,
                        Some(Ordering::Greater) => *max,
                        _ => false,
                    };
                    if better {
                        *best = v.clone();
                    }
                }
            }
            Acc::SumInt(s) => match *v {
                Value::Int(x) => *s = Some(s.unwrap_or(0) + x as i128),
                Value::Float(x) => *self = Acc::SumFloat(s.unwrap_or(0) as f64 + x),
                Value::Duration(d) if s.is_none() => *self = Acc::SumDuration(d),
                _ => return Err(AggFault::WrongType(v.type_name())),
            },
            Acc::SumFloat(s) => match *v {
                Value::Int(x) => *s += x as f64,
                Value::Float(x) => *s += x,
                _ => return Err(AggFault::WrongType(v.type_name())),
            },
            Acc::SumDuration(s) => match *v {
                Value::Duration(d) => *s = s.checked_add(d).ok_or(AggFault::Overflow)?,
                _ => return Err(AggFault::WrongType(v.type_name())),
            },
            Acc::Avg { sum, n } => match *v {
                Value::Int(x) => {
                    *sum += x as f64;
                    *n += 1;
                }
                Value::Float(x) => {
                    *sum += x;
                    *n += 1;
                }
                Value::Duration(d) if *n == 0 => {
                    *self = Acc::AvgDuration {
                        sum: d as i128,
                        n: 1,
                    }
                }
                _ => return Err(AggFault::WrongType(v.type_name())),
            },
            Acc::AvgDuration { sum, n } => match *v {
                Value::Duration(d) => {
                    *sum += d as i128;
                    *n += 1;
                }
                _ => return Err(AggFault::WrongType(v.type_name())),
            },
            Acc::Bits { and, state } => {
                *state = match (&*state, v) {
                    (Value::Null, Value::Bool(b)) => Value::Bool(*b),
                    (Value::Null, Value::Int(b)) => Value::Int(*b),
                    (Value::Bool(a), Value::Bool(b)) => {
                        Value::Bool(if *and { *a && *b } else { *a || *b })
                    }
                    (Value::Int(a), Value::Int(b)) => Value::Int(if *and { a & b } else { a | b }),
                    (Value::Null, Value::Str(b)) if is_hex_bitmap(b) => {
                        Value::Str(b.to_ascii_lowercase().into())
                    }
                    (Value::Str(a), Value::Str(b)) => {
                        Value::Str(combine_bitmaps(a, b, *and).ok_or(AggFault::WrongType(
                            "string that is not a hex bitmap of the same length as the others",
                        ))?)
                    }
                    (_, v) => return Err(AggFault::WrongType(v.type_name())),
                };
            }
            Acc::First { n, items } => {
                let limit = *n;
                for_each_item(v, |s| {
                    items.push(s);
                    items.len < limit
                });
                return Ok(items.len < limit);
            }
            Acc::Random {
                n,
                seen,
                items,
                rng,
            } => {
                let limit = *n;
                for_each_item(v, |s| {
                    if items.len() < limit {
                        items.push(s);
                    } else {
                        let j = rng.random_range(0..=*seen);
                        if let Some(slot) = usize::try_from(j).ok().and_then(|j| items.get_mut(j)) {
                            *slot = s;
                        }
                    }
                    *seen += 1;
                    true
                });
            }
        }
        Ok(true)
    }

    fn finish(self) -> Result<Value, AggFault> {
        Ok(match self {
            Acc::Count(n) => Value::Int(n),
            Acc::MinMax {
                best, saw_float, ..
            } => match best {
                Value::Int(i) if saw_float => Value::Float(i as f64),
                v => v,
            },
            Acc::SumInt(None) => Value::Null,
            Acc::SumInt(Some(s)) => Value::Int(i64::try_from(s).map_err(|_| AggFault::Overflow)?),
            Acc::SumFloat(s) => Value::Float(s),
            Acc::SumDuration(s) => Value::Duration(s),
            Acc::Avg { sum, n } => {
                if n == 0 {
                    Value::Null
                } else {
                    Value::Float(sum / n as f64)
                }
            }
            Acc::AvgDuration { sum, n } => Value::Duration((sum / n.max(1)) as i64),
            Acc::Bits { state, .. } => state,
            Acc::First { mut items, .. } => Value::List(items.take_all()),
            Acc::Random { items, .. } => Value::List(items.into()),
        })
    }
}

/// True for a bitmap written as hex digits (any case), two per byte.
fn is_hex_bitmap(s: &str) -> bool {
    s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The bitwise OR (or AND) of two hex bitmaps of one length, in lower case;
/// None when either is not a hex bitmap or their lengths differ.
fn combine_bitmaps(a: &str, b: &str, and: bool) -> Option<Arc<str>> {
    if a.len() != b.len() || !is_hex_bitmap(a) || !is_hex_bitmap(b) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0);
    let out: String = a
        .bytes()
        .zip(b.bytes())
        .map(|(x, y)| {
            let (x, y) = (digit(x), digit(y));
            let v = if and { x & y } else { x | y };
            char::from_digit(v, 16).unwrap_or('0')
        })
        .collect();
    Some(out.into())
}
