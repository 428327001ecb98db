//! Errors of AFC compilation (with the position in the text) and evaluation.

use crate::value::Name;
use std::fmt;

/// A 1-based position in the AFC text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Why an AFC text was rejected. Every error about a specific part of the
/// text carries its position.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AfcError {
    #[error("AFC text is {len} bytes, more than the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("syntax error: {message} at {pos}")]
    Syntax { message: String, pos: Pos },
    #[error("syntax error: {message}")]
    SyntaxNoPos { message: String },
    #[error("expressions nested deeper than {max} levels at {pos}")]
    TooDeep { max: usize, pos: Pos },
    #[error("expressions nested deeper than {max} levels")]
    TooDeepNoPos { max: usize },
    #[error("more than {max} expression nodes")]
    TooManyNodes { max: usize },
    #[error("{count} output columns, more than the limit of {max}")]
    TooManyOutputs { count: usize, max: usize },
    #[error("an AFC is exactly one SELECT statement, found {found}")]
    NotOneSelect { found: String },
    #[error("{what} is not supported in an AFC at {pos}")]
    Unsupported { what: String, pos: Pos },
    #[error("unknown function {name} at {pos}")]
    UnknownFunction { name: String, pos: Pos },
    #[error("{name} takes {expected} argument(s), found {found} at {pos}")]
    WrongArity {
        name: String,
        expected: &'static str,
        found: usize,
        pos: Pos,
    },
    #[error("aggregate misuse: column {column} is used outside an aggregate at {pos}")]
    BareColumn { column: String, pos: Pos },
    #[error("aggregate misuse: aggregate {name} inside another aggregate at {pos}")]
    NestedAggregate { name: String, pos: Pos },
    #[error("aggregate misuse: aggregate {name} in {clause} at {pos}")]
    AggregateMisuse {
        name: String,
        clause: &'static str,
        pos: Pos,
    },
    #[error("aggregate misuse: output {output} does not aggregate the child rows at {pos}")]
    NotAggregate { output: String, pos: Pos },
    #[error(
        "unbounded output: {name} concatenates across rows at {pos}; use FIRST(n, a) or RANDOM(n, a)"
    )]
    UnboundedOutput { name: String, pos: Pos },
    #[error("duplicate output name {name} at {pos}")]
    DuplicateOutput { name: String, pos: Pos },
    #[error("output needs a name (AS alias) at {pos}")]
    MissingAlias { pos: Pos },
    #[error("invalid argument: {message} at {pos}")]
    InvalidArgument { message: String, pos: Pos },
    #[error("unknown table {table} at {pos}: an AFC reads only the child table")]
    UnknownTable { table: String, pos: Pos },
}

impl AfcError {
    /// The position in the text the error is about, when it has one.
    pub fn pos(&self) -> Option<Pos> {
        use AfcError::*;
        match self {
            Syntax { pos, .. }
            | TooDeep { pos, .. }
            | Unsupported { pos, .. }
            | UnknownFunction { pos, .. }
            | WrongArity { pos, .. }
            | BareColumn { pos, .. }
            | NestedAggregate { pos, .. }
            | AggregateMisuse { pos, .. }
            | NotAggregate { pos, .. }
            | UnboundedOutput { pos, .. }
            | DuplicateOutput { pos, .. }
            | MissingAlias { pos }
            | InvalidArgument { pos, .. }
            | UnknownTable { pos, .. } => Some(*pos),
            TooLong { .. }
            | SyntaxNoPos { .. }
            | TooDeepNoPos { .. }
            | TooManyNodes { .. }
            | TooManyOutputs { .. }
            | NotOneSelect { .. } => None,
        }
    }
}

/// Why evaluating a compiled AFC over a table failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("{output}: {func} cannot aggregate a {found} value of {attr}")]
    AggregateType {
        output: Name,
        func: &'static str,
        attr: String,
        found: &'static str,
    },
    #[error("{output}: {message}")]
    Type { output: Name, message: String },
    #[error("{output}: integer overflow in {what}")]
    Overflow { output: Name, what: &'static str },
    #[error("output row is {len} bytes, more than the limit of {max}")]
    OutputTooLarge { len: usize, max: usize },
    #[error("evaluation needs about {needed} steps, more than the budget of {budget}")]
    BudgetExceeded { needed: u64, budget: u64 },
}
