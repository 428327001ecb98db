//! The compiled scalar expression tree and its evaluation, with SQL NULL
//! semantics (NULL propagates, three-valued logic).

use crate::value::Value;
use std::cmp::Ordering;
use std::fmt::Write as _;
use std::sync::Arc;

/// The longest string `||` may build.
pub(crate) const MAX_STRING: usize = 64 * 1024;
/// The most steps one LIKE match may take (a pathological pattern on a
/// long string would otherwise take quadratic time).
pub(crate) const LIKE_STEP_LIMIT: u32 = 100_000;

/// A problem found while evaluating; the caller adds which output it hit.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Fault {
    Type(String),
    Overflow(&'static str),
}

pub(crate) type R<T> = Result<T, Fault>;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl Arith {
    fn symbol(self) -> &'static str {
        match self {
            Arith::Add => "+",
            Arith::Sub => "-",
            Arith::Mul => "*",
            Arith::Div => "/",
            Arith::Rem => "%",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Cmp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Func {
    Coalesce,
    NullIf,
    Abs,
    Round,
    Least,
    Greatest,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum CastTo {
    Int,
    Float,
    Text,
    Bool,
    Time,
    Duration,
}

impl CastTo {
    fn name(self) -> &'static str {
        match self {
            CastTo::Int => "INT",
            CastTo::Float => "FLOAT",
            CastTo::Text => "TEXT",
            CastTo::Bool => "BOOLEAN",
            CastTo::Time => "TIMESTAMP",
            CastTo::Duration => "INTERVAL",
        }
    }
}

/// One element of a LIKE pattern.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum LikeTok {
    Char(char),
    One,
    Many,
}

/// A compiled expression. `Col` reads an input column of the current child
/// row; `Agg` reads the result of an aggregate (only in output expressions).
#[derive(Clone, Debug)]
pub(crate) enum Node {
    Lit(Value),
    Col(usize),
    Agg(usize),
    Neg(Box<Node>),
    Not(Box<Node>),
    Arith(Arith, Box<Node>, Box<Node>),
    Cmp(Cmp, Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Concat(Box<Node>, Box<Node>),
    IsNull(Box<Node>, bool),
    /// `e IS [NOT] TRUE|FALSE`: (expr, value, negated).
    IsBool(Box<Node>, bool, bool),
    Between {
        expr: Box<Node>,
        low: Box<Node>,
        high: Box<Node>,
        negated: bool,
    },
    InList {
        expr: Box<Node>,
        list: Vec<Node>,
        negated: bool,
    },
    Case {
        operand: Option<Box<Node>>,
        whens: Vec<(Node, Node)>,
        otherwise: Option<Box<Node>>,
    },
    Call(Func, Vec<Node>),
    Cast(Box<Node>, CastTo),
    Like {
        expr: Box<Node>,
        pattern: Box<Node>,
        /// The pattern, precompiled when it is a literal.
        compiled: Option<Vec<LikeTok>>,
        negated: bool,
        case_insensitive: bool,
        escape: Option<char>,
    },
}

/// Where column and aggregate references get their values.
pub(crate) trait Env {
    fn col(&self, i: usize) -> Value;
    fn agg(&self, i: usize) -> Value;
}

impl Node {
    /// The number of nodes in the tree, the unit of the evaluation budget.
    pub(crate) fn size(&self) -> u64 {
        1 + match self {
            Node::Lit(_) | Node::Col(_) | Node::Agg(_) => 0,
            Node::Neg(e) | Node::Not(e) | Node::IsNull(e, _) | Node::IsBool(e, _, _) => e.size(),
            Node::Cast(e, _) => e.size(),
            Node::Arith(_, a, b)
            | Node::Cmp(_, a, b)
            | Node::And(a, b)
            | Node::Or(a, b)
            | Node::Concat(a, b) => a.size() + b.size(),
            Node::Between {
                expr, low, high, ..
            } => expr.size() + low.size() + high.size(),
            Node::InList { expr, list, .. } => {
                expr.size() + list.iter().map(Node::size).sum::<u64>()
            }
            Node::Case {
                operand,
                whens,
                otherwise,
            } => {
                operand.as_ref().map_or(0, |e| e.size())
                    + whens.iter().map(|(a, b)| a.size() + b.size()).sum::<u64>()
                    + otherwise.as_ref().map_or(0, |e| e.size())
            }
            Node::Call(_, args) => args.iter().map(Node::size).sum(),
            Node::Like { expr, pattern, .. } => expr.size() + pattern.size(),
        }
    }

    pub(crate) fn eval<E: Env>(&self, env: &E) -> R<Value> {
        match self {
            Node::Lit(v) => Ok(v.clone()),
            Node::Col(i) => Ok(env.col(*i)),
            Node::Agg(i) => Ok(env.agg(*i)),
            Node::Neg(e) => neg(e.eval(env)?),
            Node::Not(e) => match e.eval(env)? {
                Value::Null => Ok(Value::Null),
                Value::Bool(b) => Ok(Value::Bool(!b)),
                v => Err(type_fault("NOT", &v)),
            },
            Node::Arith(op, a, b) => arith(*op, a.eval(env)?, b.eval(env)?),
            Node::Cmp(op, a, b) => {
                let (a, b) = (a.eval(env)?, b.eval(env)?);
                Ok(match compare(&a, &b)? {
                    None => Value::Null,
                    Some(o) => Value::Bool(match op {
                        Cmp::Eq => o == Ordering::Equal,
                        Cmp::NotEq => o != Ordering::Equal,
                        Cmp::Lt => o == Ordering::Less,
                        Cmp::LtEq => o != Ordering::Greater,
                        Cmp::Gt => o == Ordering::Greater,
                        Cmp::GtEq => o != Ordering::Less,
                    }),
                })
            }
            Node::And(a, b) => {
                let l = truth("AND", a.eval(env)?)?;
                if l == Some(false) {
                    return Ok(Value::Bool(false));
                }
                let r = truth("AND", b.eval(env)?)?;
                Ok(match (l, r) {
                    (_, Some(false)) => Value::Bool(false),
                    (Some(true), Some(true)) => Value::Bool(true),
                    _ => Value::Null,
                })
            }
            Node::Or(a, b) => {
                let l = truth("OR", a.eval(env)?)?;
                if l == Some(true) {
                    return Ok(Value::Bool(true));
                }
                let r = truth("OR", b.eval(env)?)?;
                Ok(match (l, r) {
                    (_, Some(true)) => Value::Bool(true),
                    (Some(false), Some(false)) => Value::Bool(false),
                    _ => Value::Null,
                })
            }
            Node::Concat(a, b) => {
                let (a, b) = (a.eval(env)?, b.eval(env)?);
                if a.is_null() || b.is_null() {
                    return Ok(Value::Null);
                }
                let mut s = String::new();
                push_display(&mut s, &a);
                push_display(&mut s, &b);
                if s.len() > MAX_STRING {
                    return Err(Fault::Type(format!(
                        "|| result longer than {MAX_STRING} bytes"
                    )));
                }
                Ok(Value::Str(s.into()))
            }
            Node::IsNull(e, negated) => Ok(Value::Bool(e.eval(env)?.is_null() != *negated)),
            Node::IsBool(e, want, negated) => {
                let t = truth("IS", e.eval(env)?)?;
                Ok(Value::Bool((t == Some(*want)) != *negated))
            }
            Node::Between {
                expr,
                low,
                high,
                negated,
            } => {
                let v = expr.eval(env)?;
                let lo = compare(&v, &low.eval(env)?)?.map(|o| o != Ordering::Less);
                let hi = compare(&v, &high.eval(env)?)?.map(|o| o != Ordering::Greater);
                let r = match (lo, hi) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                };
                Ok(bool_or_null(r.map(|b| b != *negated)))
            }
            Node::InList {
                expr,
                list,
                negated,
            } => {
                let v = expr.eval(env)?;
                if v.is_null() {
                    return Ok(Value::Null);
                }
                let mut saw_null = false;
                for item in list {
                    match compare(&v, &item.eval(env)?)? {
                        Some(Ordering::Equal) => return Ok(Value::Bool(!negated)),
                        None => saw_null = true,
                        Some(_) => {}
                    }
                }
                Ok(if saw_null {
                    Value::Null
                } else {
                    Value::Bool(*negated)
                })
            }
            Node::Case {
                operand,
                whens,
                otherwise,
            } => {
                let subject = match operand {
                    Some(o) => Some(o.eval(env)?),
                    None => None,
                };
                for (cond, result) in whens {
                    let c = cond.eval(env)?;
                    let hit = match &subject {
                        Some(s) => compare(s, &c)? == Some(Ordering::Equal),
                        None => truth("CASE WHEN", c)? == Some(true),
                    };
                    if hit {
                        return result.eval(env);
                    }
                }
                match otherwise {
                    Some(e) => e.eval(env),
                    None => Ok(Value::Null),
                }
            }
            Node::Call(f, args) => call(*f, args, env),
            Node::Cast(e, to) => cast(e.eval(env)?, *to),
            Node::Like {
                expr,
                pattern,
                compiled,
                negated,
                case_insensitive,
                escape,
            } => {
                let s = match expr.eval(env)? {
                    Value::Null => return Ok(Value::Null),
                    Value::Str(s) => s,
                    v => return Err(type_fault("LIKE", &v)),
                };
                let hit = match compiled {
                    Some(toks) => like_match(toks, &s, *case_insensitive),
                    None => match pattern.eval(env)? {
                        Value::Null => return Ok(Value::Null),
                        Value::Str(p) => {
                            like_match(&compile_like(&p, *escape), &s, *case_insensitive)
                        }
                        v => return Err(type_fault("LIKE", &v)),
                    },
                };
                match hit {
                    Some(hit) => Ok(Value::Bool(hit != *negated)),
                    None => Err(Fault::Type(format!(
                        "LIKE needs more than {LIKE_STEP_LIMIT} steps on one value"
                    ))),
                }
            }
        }
    }
}

fn bool_or_null(b: Option<bool>) -> Value {
    b.map_or(Value::Null, Value::Bool)
}

fn type_fault(op: &str, v: &Value) -> Fault {
    Fault::Type(format!("{op} cannot take a {} value", v.type_name()))
}

/// The truth value of a boolean operand (`None` for NULL).
fn truth(op: &str, v: Value) -> R<Option<bool>> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(b)),
        v => Err(type_fault(op, &v)),
    }
}

/// Appends the text form of a scalar, as used by `||` and FIRST.
pub(crate) fn push_display(s: &mut String, v: &Value) {
    match v {
        Value::Str(x) => s.push_str(x),
        v => {
            let _ = write!(s, "{v}");
        }
    }
}

fn neg(v: Value) -> R<Value> {
    match v {
        Value::Null => Ok(Value::Null),
        Value::Int(i) => i.checked_neg().map(Value::Int).ok_or(Fault::Overflow("-")),
        Value::Float(f) => Ok(Value::Float(-f)),
        Value::Duration(d) => d
            .checked_neg()
            .map(Value::Duration)
            .ok_or(Fault::Overflow("-")),
        v => Err(type_fault("-", &v)),
    }
}

/// Binary arithmetic: int op int stays int (checked), any float makes it
/// float, division or remainder by zero is NULL; times and durations
/// combine as expected.
pub(crate) fn arith(op: Arith, a: Value, b: Value) -> R<Value> {
    use Value::*;
    let ovf = Fault::Overflow(op.symbol());
    match (a, b) {
        (Null, _) | (_, Null) => Ok(Null),
        (Int(x), Int(y)) => match op {
            Arith::Add => x.checked_add(y).map(Int).ok_or(ovf),
            Arith::Sub => x.checked_sub(y).map(Int).ok_or(ovf),
            Arith::Mul => x.checked_mul(y).map(Int).ok_or(ovf),
            Arith::Div if y == 0 => Ok(Null),
            Arith::Div => x.checked_div(y).map(Int).ok_or(ovf),
            Arith::Rem if y == 0 => Ok(Null),
            Arith::Rem => Ok(Int(x.checked_rem(y).unwrap_or(0))),
        },
        (Int(x), Float(y)) => Ok(float_arith(op, x as f64, y)),
        (Float(x), Int(y)) => Ok(float_arith(op, x, y as f64)),
        (Float(x), Float(y)) => Ok(float_arith(op, x, y)),
        (Time(t), Time(u)) if op == Arith::Sub => t.checked_sub(u).map(Duration).ok_or(ovf),
        (Time(t), Duration(d)) if op == Arith::Add => t.checked_add(d).map(Time).ok_or(ovf),
        (Duration(d), Time(t)) if op == Arith::Add => t.checked_add(d).map(Time).ok_or(ovf),
        (Time(t), Duration(d)) if op == Arith::Sub => t.checked_sub(d).map(Time).ok_or(ovf),
        (Duration(x), Duration(y)) => match op {
            Arith::Add => x.checked_add(y).map(Duration).ok_or(ovf),
            Arith::Sub => x.checked_sub(y).map(Duration).ok_or(ovf),
            Arith::Div if y == 0 => Ok(Null),
            Arith::Div => Ok(Float(x as f64 / y as f64)),
            _ => Err(arith_fault(op, "duration", "duration")),
        },
        (Duration(d), Int(k)) | (Int(k), Duration(d)) if op == Arith::Mul => {
            d.checked_mul(k).map(Duration).ok_or(ovf)
        }
        (Duration(d), Int(k)) if op == Arith::Div => {
            if k == 0 {
                Ok(Null)
            } else {
                d.checked_div(k).map(Duration).ok_or(ovf)
            }
        }
        (a, b) => Err(arith_fault(op, a.type_name(), b.type_name())),
    }
}

fn arith_fault(op: Arith, a: &str, b: &str) -> Fault {
    Fault::Type(format!("cannot apply {} to {a} and {b}", op.symbol()))
}

fn float_arith(op: Arith, x: f64, y: f64) -> Value {
    match op {
        Arith::Add => Value::Float(x + y),
        Arith::Sub => Value::Float(x - y),
        Arith::Mul => Value::Float(x * y),
        Arith::Div | Arith::Rem if y == 0.0 => Value::Null,
        Arith::Div => Value::Float(x / y),
        Arith::Rem => Value::Float(x % y),
    }
}

/// SQL comparison: `None` when either side is NULL (or a NaN is involved);
/// a type fault when the two values cannot be compared.
pub(crate) fn compare(a: &Value, b: &Value) -> R<Option<Ordering>> {
    use Value::*;
    Ok(match (a, b) {
        (Null, _) | (_, Null) => None,
        (Int(x), Int(y)) => Some(x.cmp(y)),
        (Int(x), Float(y)) => (*x as f64).partial_cmp(y),
        (Float(x), Int(y)) => x.partial_cmp(&(*y as f64)),
        (Float(x), Float(y)) => x.partial_cmp(y),
        (Str(x), Str(y)) => Some(x.cmp(y)),
        (Bool(x), Bool(y)) => Some(x.cmp(y)),
        (Time(x), Time(y)) | (Duration(x), Duration(y)) => Some(x.cmp(y)),
        (List(x), List(y)) => Some(x.cmp(y)),
        (a, b) => {
            return Err(Fault::Type(format!(
                "cannot compare {} with {}",
                a.type_name(),
                b.type_name()
            )));
        }
    })
}

/// A total order over values for sorting rows: numbers numerically, values
/// of different types by type.
pub(crate) fn sort_cmp(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) | Value::Float(_) => 2,
            Value::Str(_) => 3,
            Value::Time(_) => 4,
            Value::Duration(_) => 5,
            Value::List(_) => 6,
        }
    }
    use Value::*;
    match (a, b) {
        (Int(x), Int(y)) => x.cmp(y),
        (Int(x), Float(y)) => (*x as f64).total_cmp(y),
        (Float(x), Int(y)) => x.total_cmp(&(*y as f64)),
        (Float(x), Float(y)) => x.total_cmp(y),
        (Str(x), Str(y)) => x.cmp(y),
        (Bool(x), Bool(y)) => x.cmp(y),
        (Time(x), Time(y)) | (Duration(x), Duration(y)) => x.cmp(y),
        (List(x), List(y)) => x.cmp(y),
        (a, b) => rank(a).cmp(&rank(b)),
    }
}

fn call<E: Env>(f: Func, args: &[Node], env: &E) -> R<Value> {
    match f {
        Func::Coalesce => {
            for a in args {
                let v = a.eval(env)?;
                if !v.is_null() {
                    return Ok(v);
                }
            }
            Ok(Value::Null)
        }
        Func::NullIf => {
            let a = eval_arg(args, 0, env)?;
            let b = eval_arg(args, 1, env)?;
            Ok(if compare(&a, &b)? == Some(Ordering::Equal) {
                Value::Null
            } else {
                a
            })
        }
        Func::Abs => match eval_arg(args, 0, env)? {
            Value::Null => Ok(Value::Null),
            Value::Int(i) => i
                .checked_abs()
                .map(Value::Int)
                .ok_or(Fault::Overflow("ABS")),
            Value::Float(x) => Ok(Value::Float(x.abs())),
            Value::Duration(d) => d
                .checked_abs()
                .map(Value::Duration)
                .ok_or(Fault::Overflow("ABS")),
            v => Err(type_fault("ABS", &v)),
        },
        Func::Round => {
            let v = eval_arg(args, 0, env)?;
            let digits = match args.get(1) {
                None => 0,
                Some(d) => match d.eval(env)? {
                    Value::Null => return Ok(Value::Null),
                    Value::Int(d) => d.clamp(-30, 30) as i32,
                    v => return Err(type_fault("ROUND", &v)),
                },
            };
            match v {
                Value::Null => Ok(Value::Null),
                Value::Int(i) if digits >= 0 => Ok(Value::Int(i)),
                Value::Int(i) => {
                    let p = 10f64.powi(-digits);
                    let r = (i as f64 / p).round() * p;
                    if r.is_finite() && r.abs() < 9.2e18 {
                        Ok(Value::Int(r as i64))
                    } else {
                        Err(Fault::Overflow("ROUND"))
                    }
                }
                Value::Float(x) if digits == 0 => Ok(Value::Float(x.round())),
                Value::Float(x) => {
                    let p = 10f64.powi(digits);
                    Ok(Value::Float((x * p).round() / p))
                }
                v => Err(type_fault("ROUND", &v)),
            }
        }
        Func::Least | Func::Greatest => {
            let mut best: Option<Value> = None;
            let mut saw_float = false;
            for a in args {
                let v = a.eval(env)?;
                if v.is_null() {
                    continue;
                }
                saw_float |= matches!(v, Value::Float(_));
                best = Some(match best {
                    None => v,
                    Some(b) => {
                        let o = compare(&v, &b)?;
                        let better = match f {
                            Func::Least => o == Some(Ordering::Less),
                            _ => o == Some(Ordering::Greater),
                        };
                        if better { v } else { b }
                    }
                });
            }
            Ok(match best {
                Some(Value::Int(i)) if saw_float => Value::Float(i as f64),
                Some(v) => v,
                None => Value::Null,
            })
        }
    }
}

fn eval_arg<E: Env>(args: &[Node], i: usize, env: &E) -> R<Value> {
    match args.get(i) {
        Some(a) => a.eval(env),
        None => Ok(Value::Null),
    }
}

/// CAST with the usual conversions; failures are faults, not NULLs.
pub(crate) fn cast(v: Value, to: CastTo) -> R<Value> {
    use Value::*;
    let fail = |v: &Value| {
        Fault::Type(format!(
            "cannot cast {} value {v} to {}",
            v.type_name(),
            to.name()
        ))
    };
    match (to, v) {
        (_, Null) => Ok(Null),
        (CastTo::Int, Int(i)) => Ok(Int(i)),
        (CastTo::Int, Float(x)) => {
            let t = x.trunc();
            if (-9.223_372_036_854_775e18..9.223_372_036_854_775e18).contains(&t) {
                Ok(Int(t as i64))
            } else {
                Err(Fault::Overflow("CAST"))
            }
        }
        (CastTo::Int, Bool(b)) => Ok(Int(b as i64)),
        (CastTo::Int, Str(s)) => s.trim().parse::<i64>().map(Int).map_err(|_| fail(&Str(s))),
        (CastTo::Float, Int(i)) => Ok(Float(i as f64)),
        (CastTo::Float, Float(x)) => Ok(Float(x)),
        (CastTo::Float, Bool(b)) => Ok(Float(if b { 1.0 } else { 0.0 })),
        (CastTo::Float, Str(s)) => s
            .trim()
            .parse::<f64>()
            .map(Float)
            .map_err(|_| fail(&Str(s))),
        (CastTo::Text, Str(s)) => Ok(Str(s)),
        (CastTo::Text, v) => Ok(Str(v.to_string().into())),
        (CastTo::Bool, Bool(b)) => Ok(Bool(b)),
        (CastTo::Bool, Int(i)) => Ok(Bool(i != 0)),
        (CastTo::Bool, Str(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "1" => Ok(Bool(true)),
            "false" | "f" | "no" | "0" => Ok(Bool(false)),
            _ => Err(fail(&Str(s))),
        },
        (CastTo::Time, Time(t)) => Ok(Time(t)),
        (CastTo::Time, Str(s)) => parse_time(&s).map(Time).ok_or_else(|| fail(&Str(s))),
        (CastTo::Duration, Duration(d)) => Ok(Duration(d)),
        (CastTo::Duration, Str(s)) => parse_duration(&s)
            .map(Duration)
            .ok_or_else(|| fail(&Str(s))),
        (_, v) => Err(fail(&v)),
    }
}

/// Parses an RFC 3339 timestamp into microseconds since the epoch.
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s.trim()).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_micros()).ok()
}

/// Parses a human duration ("1h 30m", "250ms", optionally negative) into
/// microseconds.
pub(crate) fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, s),
    };
    let d = humantime::parse_duration(body).ok()?;
    let us = i64::try_from(d.as_micros()).ok()?;
    Some(if neg { -us } else { us })
}

/// Compiles a LIKE pattern: `%` any run, `_` any one character, `escape`
/// (default backslash) makes the next character literal.
pub(crate) fn compile_like(p: &str, escape: Option<char>) -> Vec<LikeTok> {
    let esc = escape.unwrap_or('\\');
    let mut out = Vec::with_capacity(p.len());
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == esc {
            if let Some(n) = chars.next() {
                out.push(LikeTok::Char(n));
            } else {
                out.push(LikeTok::Char(c));
            }
        } else if c == '%' {
            if out.last() != Some(&LikeTok::Many) {
                out.push(LikeTok::Many);
            }
        } else if c == '_' {
            out.push(LikeTok::One);
        } else {
            out.push(LikeTok::Char(c));
        }
    }
    out
}

fn chars_eq(a: char, b: char, ci: bool) -> bool {
    a == b || (ci && a.to_lowercase().eq(b.to_lowercase()))
}

/// Matches `s` against a compiled LIKE pattern, backtracking only to the
/// last `%` (linear space, no recursion); `None` when the match would take
/// more than `LIKE_STEP_LIMIT` steps.
pub(crate) fn like_match(toks: &[LikeTok], s: &str, ci: bool) -> Option<bool> {
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    let mut steps = 0u32;
    loop {
        steps += 1;
        if steps > LIKE_STEP_LIMIT {
            return None;
        }
        if let Some(t) = toks.get(pi) {
            let next = s[si..].chars().next();
            match (t, next) {
                (LikeTok::Many, _) => {
                    pi += 1;
                    star = Some((pi, si));
                    continue;
                }
                (LikeTok::One, Some(c)) => {
                    pi += 1;
                    si += c.len_utf8();
                    continue;
                }
                (LikeTok::Char(p), Some(c)) if chars_eq(*p, c, ci) => {
                    pi += 1;
                    si += c.len_utf8();
                    continue;
                }
                _ => {}
            }
        } else if si == s.len() {
            return Some(true);
        }
        match star {
            Some((sp, ss)) => match s[ss..].chars().next() {
                Some(c) => {
                    let ns = ss + c.len_utf8();
                    star = Some((sp, ns));
                    pi = sp;
                    si = ns;
                }
                None => return Some(false),
            },
            None => return Some(false),
        }
    }
}

/// Renders a value as list items for FIRST/RANDOM: list elements flattened,
/// strings as they are, other scalars as text, NULL as nothing.
pub(crate) fn for_each_item(v: &Value, mut f: impl FnMut(Arc<str>) -> bool) -> bool {
    match v {
        Value::Null => true,
        Value::Str(s) => f(s.clone()),
        Value::List(items) => {
            for s in items.iter() {
                if !f(s.clone()) {
                    return false;
                }
            }
            true
        }
        v => {
            let mut s = String::new();
            push_display(&mut s, v);
            f(s.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns() {
        let m = |p: &str, s: &str| like_match(&compile_like(p, None), s, false) == Some(true);
        assert!(m("a%", "abc"));
        assert!(m("%c", "abc"));
        assert!(m("a_c", "abc"));
        assert!(!m("a_c", "abbc"));
        assert!(m("%b%", "abc"));
        assert!(m("%", ""));
        assert!(!m("_", ""));
        assert!(m("a\\%", "a%"));
        assert!(!m("a\\%", "ab"));
        assert!(m("%a%a%a%", "xaxaxa"));
        assert!(m("é_", "éz"));
        assert_eq!(
            like_match(&compile_like("AB%", None), "abc", true),
            Some(true)
        );
        let hostile = format!("%{}b", "a".repeat(1000));
        assert_eq!(
            like_match(&compile_like(&hostile, None), &"a".repeat(2000), false),
            None
        );
    }

    #[test]
    fn arithmetic_rules() {
        assert_eq!(
            arith(Arith::Div, Value::Int(7), Value::Int(2)),
            Ok(Value::Int(3))
        );
        assert_eq!(
            arith(Arith::Div, Value::Int(7), Value::Int(0)),
            Ok(Value::Null)
        );
        assert_eq!(
            arith(Arith::Add, Value::Int(1), Value::Float(0.5)),
            Ok(Value::Float(1.5))
        );
        assert!(matches!(
            arith(Arith::Add, Value::Int(i64::MAX), Value::Int(1)),
            Err(Fault::Overflow(_))
        ));
        assert_eq!(
            arith(Arith::Sub, Value::Time(10), Value::Time(4)),
            Ok(Value::Duration(6))
        );
    }
}
