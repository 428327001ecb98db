//! Parses and validates AFC text, and compiles it into expression trees
//! with columns numbered and aggregates pulled out.

use super::agg::{AggKind, AggSpec};
use super::error::{AfcError, Pos};
use super::expr::{self, Arith, CastTo, Cmp, Func, Node};
use super::{MAX_AFC_TEXT, MAX_DEPTH, MAX_FIRST_N, MAX_NODES, MAX_OUTPUTS};
use crate::value::{Name, Value};
use sqlparser::ast::{
    self, BinaryOperator, CastKind, DataType, DuplicateTreatment, Expr, FunctionArg,
    FunctionArgExpr, FunctionArguments, GroupByExpr, ObjectNamePart, OrderByKind, SelectItem,
    SetExpr, Spanned, Statement, TableFactor, UnaryOperator,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Span;

/// The parser's own recursion limit: a little above the expression depth
/// limit, to leave room for the statement and query levels.
const PARSER_RECURSION_LIMIT: usize = MAX_DEPTH * 2 + 16;

/// A sort key of the query-level ORDER BY.
#[derive(Clone, Debug)]
pub(crate) struct SortKey {
    pub expr: Node,
    pub desc: bool,
    pub nulls_first: bool,
}

/// The result of compilation, before it is wrapped into a `Program`.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub outputs: Vec<Name>,
    pub inputs: Vec<Name>,
    pub exprs: Vec<Node>,
    pub aggs: Vec<AggSpec>,
    pub filter: Option<Node>,
    pub order: Vec<SortKey>,
}

/// Where an expression sits, which decides what it may contain.
#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    /// A SELECT item outside any aggregate: no bare columns.
    Output,
    /// An aggregate's argument: columns, no aggregates.
    InAgg,
    /// WHERE or ORDER BY: columns, no aggregates.
    Clause(&'static str),
}

fn pos_of(span: Span) -> Option<Pos> {
    (span.start.line > 0).then_some(Pos {
        line: span.start.line,
        column: span.start.column,
    })
}

/// The position of the leftmost token of `e`, found without recursion so it
/// is safe on arbitrarily deep trees.
fn head_pos(mut e: &Expr, fallback: Pos) -> Pos {
    loop {
        let found = match e {
            Expr::Identifier(i) => pos_of(i.span),
            Expr::CompoundIdentifier(parts) => parts.first().and_then(|i| pos_of(i.span)),
            Expr::Value(v) => pos_of(v.span),
            Expr::Function(f) => f.name.0.first().and_then(|p| match p {
                ObjectNamePart::Identifier(i) => pos_of(i.span),
                ObjectNamePart::Function(f) => pos_of(f.name.span),
            }),
            Expr::Case { case_token, .. } => pos_of(case_token.0.span),
            Expr::BinaryOp { left: inner, .. }
            | Expr::UnaryOp { expr: inner, .. }
            | Expr::Nested(inner)
            | Expr::IsNull(inner)
            | Expr::IsNotNull(inner)
            | Expr::IsTrue(inner)
            | Expr::IsFalse(inner)
            | Expr::IsNotTrue(inner)
            | Expr::IsNotFalse(inner)
            | Expr::IsUnknown(inner)
            | Expr::IsNotUnknown(inner)
            | Expr::Cast { expr: inner, .. }
            | Expr::InList { expr: inner, .. }
            | Expr::Between { expr: inner, .. }
            | Expr::Like { expr: inner, .. }
            | Expr::ILike { expr: inner, .. }
            | Expr::Collate { expr: inner, .. }
            | Expr::IsDistinctFrom(inner, _)
            | Expr::IsNotDistinctFrom(inner, _)
            | Expr::InSubquery { expr: inner, .. }
            | Expr::CompoundFieldAccess { root: inner, .. }
            | Expr::AtTimeZone {
                timestamp: inner, ..
            } => {
                e = inner;
                continue;
            }
            _ => None,
        };
        return found.unwrap_or(fallback);
    }
}

/// Turns a sqlparser error into an `AfcError`, recovering the position the
/// parser appends to its message.
fn parser_error(e: ParserError) -> AfcError {
    let msg = match e {
        ParserError::RecursionLimitExceeded => {
            return AfcError::TooDeepNoPos { max: MAX_DEPTH };
        }
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
    };
    if let Some(at) = msg.rfind(" at Line: ") {
        let tail = &msg[at + " at Line: ".len()..];
        if let Some((l, c)) = tail.split_once(", Column: ")
            && let (Ok(line), Ok(column)) = (l.trim().parse(), c.trim().parse())
        {
            return AfcError::Syntax {
                message: msg[..at].to_string(),
                pos: Pos { line, column },
            };
        }
    }
    AfcError::SyntaxNoPos { message: msg }
}

/// The position just past the end of the text.
fn end_pos(sql: &str) -> Pos {
    let line = sql.split('\n').count().max(1) as u64;
    let last = sql.rsplit('\n').next().unwrap_or("");
    Pos {
        line,
        column: last.chars().count() as u64 + 1,
    }
}

/// Parses, validates and compiles one AFC.
pub(crate) fn compile(sql: &str) -> Result<Compiled, AfcError> {
    if sql.len() > MAX_AFC_TEXT {
        return Err(AfcError::TooLong {
            len: sql.len(),
            max: MAX_AFC_TEXT,
        });
    }
    let dialect = GenericDialect {};
    let mut stmts = Parser::new(&dialect)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| match parser_error(e) {
            AfcError::SyntaxNoPos { message } if message.contains("EOF") => AfcError::Syntax {
                message,
                pos: end_pos(sql),
            },
            e => e,
        })?;
    if stmts.len() != 1 {
        return Err(AfcError::NotOneSelect {
            found: format!("{} statements", stmts.len()),
        });
    }
    let query = match stmts.pop() {
        Some(Statement::Query(q)) => q,
        _ => {
            return Err(AfcError::NotOneSelect {
                found: "a statement that is not a query".into(),
            });
        }
    };
    let mut c = Compiler::default();
    c.query(&query)?;
    Ok(Compiled {
        outputs: c.outputs,
        inputs: c.inputs,
        exprs: c.exprs,
        aggs: c.aggs,
        filter: c.filter,
        order: c.order,
    })
}

#[derive(Default)]
struct Compiler {
    outputs: Vec<Name>,
    inputs: Vec<Name>,
    exprs: Vec<Node>,
    aggs: Vec<AggSpec>,
    filter: Option<Node>,
    order: Vec<SortKey>,
    /// Names the child table may be referred to by in `t.col`.
    table_names: Vec<String>,
    nodes: usize,
}

fn unsupported(what: impl Into<String>, pos: Pos) -> AfcError {
    AfcError::Unsupported {
        what: what.into(),
        pos,
    }
}

impl Compiler {
    fn query(&mut self, q: &ast::Query) -> Result<(), AfcError> {
        let select = match q.body.as_ref() {
            SetExpr::Select(s) => s,
            _ => {
                return Err(AfcError::NotOneSelect {
                    found: "a set operation, VALUES or nested query".into(),
                });
            }
        };
        let at = pos_of(select.select_token.0.span).unwrap_or(Pos { line: 1, column: 1 });
        if q.with.is_some() {
            return Err(unsupported("WITH", at));
        }
        if q.limit_clause.is_some() || q.fetch.is_some() {
            return Err(unsupported("LIMIT", at));
        }
        if !q.locks.is_empty()
            || q.for_clause.is_some()
            || q.settings.is_some()
            || q.format_clause.is_some()
            || !q.pipe_operators.is_empty()
        {
            return Err(unsupported("this query clause", at));
        }
        if select.distinct.is_some() {
            return Err(unsupported("DISTINCT", at));
        }
        if select.top.is_some() {
            return Err(unsupported("TOP", at));
        }
        if select.into.is_some() {
            return Err(unsupported("SELECT INTO", at));
        }
        if select.exclude.is_some()
            || select.select_modifiers.is_some()
            || !select.optimizer_hints.is_empty()
            || select.value_table_mode.is_some()
            || !select.lateral_views.is_empty()
            || select.prewhere.is_some()
            || !select.connect_by.is_empty()
            || !select.cluster_by.is_empty()
            || !select.distribute_by.is_empty()
            || !select.sort_by.is_empty()
            || !select.named_window.is_empty()
            || select.qualify.is_some()
        {
            return Err(unsupported("this SELECT clause", at));
        }
        match &select.group_by {
            GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty() => {}
            GroupByExpr::Expressions(e, _) => {
                let p = e.first().map_or(at, |e| head_pos(e, at));
                return Err(unsupported("GROUP BY", p));
            }
            GroupByExpr::All(_) => return Err(unsupported("GROUP BY", at)),
        }
        if let Some(h) = &select.having {
            return Err(unsupported("HAVING", head_pos(h, at)));
        }
        self.from(&select.from, at)?;

        if select.projection.len() > MAX_OUTPUTS {
            return Err(AfcError::TooManyOutputs {
                count: select.projection.len(),
                max: MAX_OUTPUTS,
            });
        }
        for item in &select.projection {
            self.select_item(item, at)?;
        }
        if let Some(w) = &select.selection {
            self.filter = Some(self.expr(w, Ctx::Clause("WHERE"), 1, at)?);
        }
        if let Some(ob) = &q.order_by {
            if ob.interpolate.is_some() {
                return Err(unsupported("INTERPOLATE", at));
            }
            match &ob.kind {
                OrderByKind::All(_) => return Err(unsupported("ORDER BY ALL", at)),
                OrderByKind::Expressions(keys) => {
                    for k in keys {
                        let p = head_pos(&k.expr, at);
                        if k.with_fill.is_some() {
                            return Err(unsupported("WITH FILL", p));
                        }
                        let expr = self.expr(&k.expr, Ctx::Clause("ORDER BY"), 1, p)?;
                        let desc = k.options.asc == Some(false);
                        self.order.push(SortKey {
                            expr,
                            desc,
                            nulls_first: k.options.nulls_first.unwrap_or(desc),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn from(&mut self, from: &[ast::TableWithJoins], at: Pos) -> Result<(), AfcError> {
        if from.len() > 1 {
            return Err(unsupported("more than one table", at));
        }
        let Some(t) = from.first() else {
            return Ok(());
        };
        let p = pos_of(t.relation.span()).unwrap_or(at);
        if let Some(j) = t.joins.first() {
            return Err(unsupported("JOIN", pos_of(j.span()).unwrap_or(p)));
        }
        match &t.relation {
            TableFactor::Table {
                name,
                alias,
                args: None,
                with_hints,
                version: None,
                with_ordinality: false,
                partitions,
                json_path: None,
                sample: None,
                index_hints,
            } if with_hints.is_empty() && partitions.is_empty() && index_hints.is_empty() => {
                if name.0.len() != 1 {
                    return Err(unsupported("a qualified table name", p));
                }
                if let Some(ObjectNamePart::Identifier(i)) = name.0.first() {
                    self.table_names.push(i.value.clone());
                }
                if let Some(a) = alias {
                    if !a.columns.is_empty() {
                        return Err(unsupported("column aliases on the table", p));
                    }
                    self.table_names.push(a.name.value.clone());
                }
                Ok(())
            }
            TableFactor::Derived { .. } => Err(unsupported("a subquery", p)),
            _ => Err(unsupported("this FROM item", p)),
        }
    }

    fn select_item(&mut self, item: &SelectItem, at: Pos) -> Result<(), AfcError> {
        let (e, alias) = match item {
            SelectItem::UnnamedExpr(e) => (e, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias)),
            SelectItem::ExprWithAliases { expr, .. } => {
                return Err(unsupported("several aliases", head_pos(expr, at)));
            }
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                return Err(unsupported("*", pos_of(item.span()).unwrap_or(at)));
            }
        };
        let p = head_pos(e, at);
        let first_agg = self.aggs.len();
        let node = self.expr(e, Ctx::Output, 1, p)?;
        let name: Name = match alias {
            Some(a) => crate::intern::intern(&a.value),
            None => match &node {
                Node::Agg(k) => match self.aggs.get(*k) {
                    Some(AggSpec {
                        arg: Some(Node::Col(c)),
                        weight: None,
                        ..
                    }) => self.inputs[*c].clone(),
                    _ => return Err(AfcError::MissingAlias { pos: p }),
                },
                _ => return Err(AfcError::MissingAlias { pos: p }),
            },
        };
        let name_pos = alias.and_then(|a| pos_of(a.span)).unwrap_or(p);
        if self.aggs.len() == first_agg {
            return Err(AfcError::NotAggregate {
                output: name.to_string(),
                pos: p,
            });
        }
        if self.outputs.contains(&name) {
            return Err(AfcError::DuplicateOutput {
                name: name.to_string(),
                pos: name_pos,
            });
        }
        for a in &mut self.aggs[first_agg..] {
            a.output = name.clone();
        }
        self.outputs.push(name);
        self.exprs.push(node);
        Ok(())
    }

    fn column(&mut self, name: &str) -> usize {
        match self.inputs.iter().position(|n| &**n == name) {
            Some(i) => i,
            None => {
                self.inputs.push(crate::intern::intern(name));
                self.inputs.len() - 1
            }
        }
    }

    fn column_ref(&mut self, name: &str, ctx: Ctx, p: Pos) -> Result<Node, AfcError> {
        if ctx == Ctx::Output {
            return Err(AfcError::BareColumn {
                column: name.to_string(),
                pos: p,
            });
        }
        Ok(Node::Col(self.column(name)))
    }

    fn boxed(&mut self, e: &Expr, ctx: Ctx, depth: usize, at: Pos) -> Result<Box<Node>, AfcError> {
        Ok(Box::new(self.expr(e, ctx, depth, at)?))
    }

    /// Compiles one expression at nesting `depth` (1 for a whole item).
    fn expr(&mut self, e: &Expr, ctx: Ctx, depth: usize, at: Pos) -> Result<Node, AfcError> {
        let p = head_pos(e, at);
        if depth > MAX_DEPTH {
            return Err(AfcError::TooDeep {
                max: MAX_DEPTH,
                pos: p,
            });
        }
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(AfcError::TooManyNodes { max: MAX_NODES });
        }
        let d = depth + 1;
        Ok(match e {
            Expr::Identifier(i) => self.column_ref(&i.value, ctx, p)?,
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [t, c] if self.table_names.contains(&t.value) => {
                    self.column_ref(&c.value, ctx, p)?
                }
                [t, _] => {
                    return Err(AfcError::UnknownTable {
                        table: t.value.clone(),
                        pos: p,
                    });
                }
                _ => return Err(unsupported("a qualified name", p)),
            },
            Expr::Value(v) => Node::Lit(literal(&v.value, p)?),
            Expr::Nested(inner) => self.expr(inner, ctx, d, p)?,
            Expr::UnaryOp { op, expr } => match op {
                UnaryOperator::Minus => match expr.as_ref() {
                    Expr::Value(v) if matches!(v.value, ast::Value::Number(..)) => {
                        self.nodes += 1;
                        match &v.value {
                            ast::Value::Number(s, _) => Node::Lit(number(&format!("-{s}"), p)?),
                            _ => Node::Lit(Value::Null),
                        }
                    }
                    _ => Node::Neg(self.boxed(expr, ctx, d, p)?),
                },
                UnaryOperator::Plus => self.expr(expr, ctx, d, p)?,
                UnaryOperator::Not => Node::Not(self.boxed(expr, ctx, d, p)?),
                op => return Err(unsupported(format!("operator {op}"), p)),
            },
            Expr::BinaryOp { left, op, right } => {
                let l = self.boxed(left, ctx, d, p)?;
                let r = self.boxed(right, ctx, d, p)?;
                match op {
                    BinaryOperator::Plus => Node::Arith(Arith::Add, l, r),
                    BinaryOperator::Minus => Node::Arith(Arith::Sub, l, r),
                    BinaryOperator::Multiply => Node::Arith(Arith::Mul, l, r),
                    BinaryOperator::Divide => Node::Arith(Arith::Div, l, r),
                    BinaryOperator::Modulo => Node::Arith(Arith::Rem, l, r),
                    BinaryOperator::StringConcat => Node::Concat(l, r),
                    BinaryOperator::Eq => Node::Cmp(Cmp::Eq, l, r),
                    BinaryOperator::NotEq => Node::Cmp(Cmp::NotEq, l, r),
                    BinaryOperator::Lt => Node::Cmp(Cmp::Lt, l, r),
                    BinaryOperator::LtEq => Node::Cmp(Cmp::LtEq, l, r),
                    BinaryOperator::Gt => Node::Cmp(Cmp::Gt, l, r),
                    BinaryOperator::GtEq => Node::Cmp(Cmp::GtEq, l, r),
                    BinaryOperator::And => Node::And(l, r),
                    BinaryOperator::Or => Node::Or(l, r),
                    op => return Err(unsupported(format!("operator {op}"), p)),
                }
            }
            Expr::IsNull(x) => Node::IsNull(self.boxed(x, ctx, d, p)?, false),
            Expr::IsNotNull(x) => Node::IsNull(self.boxed(x, ctx, d, p)?, true),
            Expr::IsTrue(x) => Node::IsBool(self.boxed(x, ctx, d, p)?, true, false),
            Expr::IsNotTrue(x) => Node::IsBool(self.boxed(x, ctx, d, p)?, true, true),
            Expr::IsFalse(x) => Node::IsBool(self.boxed(x, ctx, d, p)?, false, false),
            Expr::IsNotFalse(x) => Node::IsBool(self.boxed(x, ctx, d, p)?, false, true),
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let expr = self.boxed(expr, ctx, d, p)?;
                let list = list
                    .iter()
                    .map(|x| self.expr(x, ctx, d, p))
                    .collect::<Result<_, _>>()?;
                Node::InList {
                    expr,
                    list,
                    negated: *negated,
                }
            }
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => Node::Between {
                expr: self.boxed(expr, ctx, d, p)?,
                low: self.boxed(low, ctx, d, p)?,
                high: self.boxed(high, ctx, d, p)?,
                negated: *negated,
            },
            Expr::Like {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            }
            | Expr::ILike {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            } => {
                if *any {
                    return Err(unsupported("LIKE ANY", p));
                }
                let escape = match escape_char {
                    None => None,
                    Some(v) => match &v.value {
                        ast::Value::SingleQuotedString(s) if s.chars().count() == 1 => {
                            s.chars().next()
                        }
                        _ => {
                            return Err(AfcError::InvalidArgument {
                                message: "ESCAPE takes a single character".into(),
                                pos: pos_of(v.span).unwrap_or(p),
                            });
                        }
                    },
                };
                let expr = self.boxed(expr, ctx, d, p)?;
                let pattern = self.boxed(pattern, ctx, d, p)?;
                let compiled = match pattern.as_ref() {
                    Node::Lit(Value::Str(s)) => Some(expr::compile_like(s, escape)),
                    _ => None,
                };
                Node::Like {
                    expr,
                    pattern,
                    compiled,
                    negated: *negated,
                    case_insensitive: matches!(e, Expr::ILike { .. }),
                    escape,
                }
            }
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let operand = match operand {
                    Some(o) => Some(self.boxed(o, ctx, d, p)?),
                    None => None,
                };
                let mut whens = Vec::with_capacity(conditions.len());
                for w in conditions {
                    let c = self.expr(&w.condition, ctx, d, p)?;
                    let r = self.expr(&w.result, ctx, d, p)?;
                    whens.push((c, r));
                }
                let otherwise = match else_result {
                    Some(x) => Some(self.boxed(x, ctx, d, p)?),
                    None => None,
                };
                Node::Case {
                    operand,
                    whens,
                    otherwise,
                }
            }
            Expr::Cast {
                kind,
                expr,
                data_type,
                array,
                format,
            } => {
                if !matches!(kind, CastKind::Cast | CastKind::DoubleColon)
                    || *array
                    || format.is_some()
                {
                    return Err(unsupported("this form of CAST", p));
                }
                let to = cast_target(data_type)
                    .ok_or_else(|| unsupported(format!("CAST to {data_type}"), p))?;
                Node::Cast(self.boxed(expr, ctx, d, p)?, to)
            }
            Expr::TypedString(ts) => {
                let to = cast_target(&ts.data_type)
                    .filter(|t| matches!(t, CastTo::Time | CastTo::Duration))
                    .ok_or_else(|| unsupported(format!("{} literals", ts.data_type), p))?;
                let s = ts.value.value.clone().into_string().ok_or_else(|| {
                    AfcError::InvalidArgument {
                        message: "expected a string literal".into(),
                        pos: p,
                    }
                })?;
                Node::Lit(constant_cast(s, to, p)?)
            }
            Expr::Interval(iv) => {
                let s = match iv.value.as_ref() {
                    Expr::Value(v) => v.value.clone().into_string(),
                    _ => None,
                };
                match (s, &iv.leading_field, &iv.last_field) {
                    (Some(s), None, None) => Node::Lit(constant_cast(s, CastTo::Duration, p)?),
                    _ => {
                        return Err(unsupported(
                            "this INTERVAL form (write INTERVAL '1h 30m')",
                            p,
                        ));
                    }
                }
            }
            Expr::Function(f) => self.function(f, ctx, depth, p)?,
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                return Err(unsupported("a subquery", p));
            }
            _ => return Err(unsupported("this expression", p)),
        })
    }

    fn function(
        &mut self,
        f: &ast::Function,
        ctx: Ctx,
        depth: usize,
        p: Pos,
    ) -> Result<Node, AfcError> {
        let fname = match f.name.0.as_slice() {
            [ObjectNamePart::Identifier(i)] => i.value.to_ascii_lowercase(),
            _ => {
                return Err(AfcError::UnknownFunction {
                    name: f.name.to_string(),
                    pos: p,
                });
            }
        };
        let upper = fname.to_ascii_uppercase();
        if f.over.is_some() {
            return Err(unsupported("a window function", p));
        }
        if f.filter.is_some() {
            return Err(unsupported("FILTER", p));
        }
        if f.null_treatment.is_some() || !f.within_group.is_empty() || f.uses_odbc_syntax {
            return Err(unsupported(format!("this form of {upper}"), p));
        }
        if !matches!(f.parameters, FunctionArguments::None) {
            return Err(unsupported(format!("parameters of {upper}"), p));
        }

        let agg = match fname.as_str() {
            "min" => Some(AggKind::Min),
            "max" => Some(AggKind::Max),
            "sum" => Some(AggKind::Sum),
            "count" => Some(AggKind::Count),
            "avg" => Some(AggKind::Avg),
            "or" | "bool_or" => Some(AggKind::Or),
            "and" | "bool_and" => Some(AggKind::And),
            "first" => Some(AggKind::First(0)),
            "random" => Some(AggKind::Random(0)),
            "string_agg" | "array_agg" | "group_concat" | "listagg" | "json_agg" | "jsonb_agg"
            | "json_arrayagg" | "json_objectagg" | "json_object_agg" | "xmlagg"
            | "array_concat_agg" => {
                return Err(AfcError::UnboundedOutput {
                    name: upper,
                    pos: p,
                });
            }
            _ => None,
        };
        let scalar = match fname.as_str() {
            "coalesce" => Some(Func::Coalesce),
            "nullif" => Some(Func::NullIf),
            "abs" => Some(Func::Abs),
            "round" => Some(Func::Round),
            "least" => Some(Func::Least),
            "greatest" => Some(Func::Greatest),
            _ => None,
        };
        if agg.is_none() && scalar.is_none() {
            return Err(AfcError::UnknownFunction {
                name: upper,
                pos: p,
            });
        }

        // The arguments, `None` standing for `*`.
        let mut args: Vec<Option<&Expr>> = Vec::new();
        match &f.args {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(_) => return Err(unsupported("a subquery", p)),
            FunctionArguments::List(l) => {
                if l.duplicate_treatment == Some(DuplicateTreatment::Distinct) {
                    return Err(unsupported(format!("{upper}(DISTINCT ...)"), p));
                }
                if !l.clauses.is_empty() {
                    return Err(unsupported(format!("clauses inside {upper}(...)"), p));
                }
                for a in &l.args {
                    match a {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => args.push(Some(e)),
                        FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => args.push(None),
                        _ => return Err(unsupported(format!("this argument of {upper}"), p)),
                    }
                }
            }
        }
        let arity = |expected: &'static str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(AfcError::WrongArity {
                    name: upper.clone(),
                    expected,
                    found: args.len(),
                    pos: p,
                })
            }
        };
        let star_err = || AfcError::InvalidArgument {
            message: format!("{upper} does not take *"),
            pos: p,
        };

        if let Some(mut kind) = agg {
            match ctx {
                Ctx::Output => {}
                Ctx::InAgg => {
                    return Err(AfcError::NestedAggregate {
                        name: upper,
                        pos: p,
                    });
                }
                Ctx::Clause(clause) => {
                    return Err(AfcError::AggregateMisuse {
                        name: upper,
                        clause,
                        pos: p,
                    });
                }
            }
            let d = depth + 1;
            let (arg, weight, label) = match kind {
                AggKind::Count => {
                    arity("1", args.len() == 1)?;
                    match args[0] {
                        None => {
                            kind = AggKind::CountStar;
                            (None, None, "*".to_string())
                        }
                        Some(e) => (Some(self.expr(e, Ctx::InAgg, d, p)?), None, label(e)),
                    }
                }
                AggKind::Avg => {
                    arity("1 or 2", args.len() == 1 || args.len() == 2)?;
                    let x = args[0].ok_or_else(star_err)?;
                    let xn = self.expr(x, Ctx::InAgg, d, p)?;
                    match args.get(1) {
                        Some(w) => {
                            let w = w.ok_or_else(star_err)?;
                            kind = AggKind::WeightedAvg;
                            let wn = self.expr(w, Ctx::InAgg, d, p)?;
                            (Some(xn), Some(wn), format!("{}, {}", label(x), label(w)))
                        }
                        None => (Some(xn), None, label(x)),
                    }
                }
                AggKind::First(_) | AggKind::Random(_) => {
                    arity("2", args.len() == 2)?;
                    let n_expr = args[0].ok_or_else(star_err)?;
                    let n = first_n(n_expr).ok_or_else(|| AfcError::InvalidArgument {
                        message: format!(
                            "the first argument of {upper} must be an integer literal from 1 to {MAX_FIRST_N}"
                        ),
                        pos: head_pos(n_expr, p),
                    })?;
                    self.nodes += 1;
                    kind = if kind == AggKind::First(0) {
                        AggKind::First(n)
                    } else {
                        AggKind::Random(n)
                    };
                    let a = args[1].ok_or_else(star_err)?;
                    (Some(self.expr(a, Ctx::InAgg, d, p)?), None, label(a))
                }
                _ => {
                    arity("1", args.len() == 1)?;
                    let a = args[0].ok_or_else(star_err)?;
                    (Some(self.expr(a, Ctx::InAgg, d, p)?), None, label(a))
                }
            };
            self.aggs.push(AggSpec {
                kind,
                arg,
                weight,
                output: "".into(),
                label,
            });
            return Ok(Node::Agg(self.aggs.len() - 1));
        }

        let func = scalar.unwrap_or(Func::Coalesce);
        match func {
            Func::Coalesce | Func::Least | Func::Greatest => arity("at least 1", !args.is_empty())?,
            Func::NullIf => arity("2", args.len() == 2)?,
            Func::Abs => arity("1", args.len() == 1)?,
            Func::Round => arity("1 or 2", args.len() == 1 || args.len() == 2)?,
        }
        let mut nodes = Vec::with_capacity(args.len());
        for a in &args {
            let a = a.ok_or_else(star_err)?;
            nodes.push(self.expr(a, ctx, depth + 1, p)?);
        }
        Ok(Node::Call(func, nodes))
    }
}

/// The text of an (already validated, hence shallow) expression, for error
/// messages: the bare name for a column.
fn label(e: &Expr) -> String {
    match e {
        Expr::Identifier(i) => i.value.clone(),
        Expr::CompoundIdentifier(parts) => {
            parts.last().map(|i| i.value.clone()).unwrap_or_default()
        }
        e => e.to_string(),
    }
}

fn first_n(e: &Expr) -> Option<usize> {
    match e {
        Expr::Value(v) => match &v.value {
            ast::Value::Number(s, _) => s
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_FIRST_N).contains(n)),
            _ => None,
        },
        Expr::Nested(inner) => first_n(inner),
        _ => None,
    }
}

fn number(s: &str, p: Pos) -> Result<Value, AfcError> {
    if let Ok(i) = s.parse::<i64>() {
        return Ok(Value::Int(i));
    }
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(Value::Float(x)),
        _ => Err(AfcError::InvalidArgument {
            message: format!("bad number {s}"),
            pos: p,
        }),
    }
}

fn literal(v: &ast::Value, p: Pos) -> Result<Value, AfcError> {
    Ok(match v {
        ast::Value::Number(s, _) => number(s, p)?,
        ast::Value::Boolean(b) => Value::Bool(*b),
        ast::Value::Null => Value::Null,
        ast::Value::Placeholder(_) => return Err(unsupported("placeholders", p)),
        v => match v.clone().into_string() {
            Some(s) => Value::Str(s.into()),
            None => return Err(unsupported("this literal", p)),
        },
    })
}

fn constant_cast(s: String, to: CastTo, p: Pos) -> Result<Value, AfcError> {
    expr::cast(Value::Str(s.into()), to).map_err(|f| AfcError::InvalidArgument {
        message: match f {
            expr::Fault::Type(m) => m,
            expr::Fault::Overflow(w) => format!("overflow in {w}"),
        },
        pos: p,
    })
}

fn cast_target(t: &DataType) -> Option<CastTo> {
    use DataType as D;
    Some(match t {
        D::Int(_)
        | D::Integer(_)
        | D::BigInt(_)
        | D::Int4(_)
        | D::Int8(_)
        | D::Int64
        | D::Int32
        | D::SmallInt(_)
        | D::Int2(_)
        | D::TinyInt(_) => CastTo::Int,
        D::Float(_)
        | D::Double(_)
        | D::DoublePrecision
        | D::Real
        | D::Float4
        | D::Float8
        | D::Float32
        | D::Float64 => CastTo::Float,
        D::Text | D::Varchar(_) | D::String(_) | D::CharacterVarying(_) | D::CharVarying(_) => {
            CastTo::Text
        }
        D::Bool | D::Boolean => CastTo::Bool,
        D::Timestamp(..) => CastTo::Time,
        D::Interval { .. } => CastTo::Duration,
        _ => return None,
    })
}
