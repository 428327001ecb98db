//! A subscription's filter: a SQL predicate over an event's fields,
//! compiled once by the AFC evaluator and run on each event.
//!
//! The fields are `topic`, `zone` (the scope it was published to),
//! `origin`, `seq`, `time`, and every top-level field of the event's JSON
//! payload by its name (numbers, strings and booleans as themselves, other
//! values as their JSON text). A reserved field name wins over a payload
//! field of the same name.

use super::event::Event;
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;
use zone_sql::{AfcError, Attrs, Frame, Program, Value};

/// The most bytes of a filter's text.
pub const MAX_FILTER: usize = 2048;
/// The most payload fields a filter sees.
const MAX_FIELDS: usize = 64;
const RESERVED: [&str; 5] = ["topic", "zone", "origin", "seq", "time"];

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The text is not a SQL expression.
    #[error("the filter is not a SQL predicate: {0}")]
    Syntax(String),
    /// A SQL expression, but of a kind no event can be checked against
    /// (an aggregate, a subquery, an unknown function).
    #[error("this filter cannot be applied to single events: {0}")]
    Unsupported(String),
    #[error("the filter is {0} bytes; at most {MAX_FILTER}")]
    TooLong(usize),
}

/// A compiled filter.
#[derive(Debug, Clone)]
pub struct Filter {
    text: String,
    program: Program,
}

impl Filter {
    /// Compiles `text`, a SQL boolean expression such as
    /// `topic LIKE 'dc/%' AND severity >= 3`.
    pub fn compile(text: &str) -> Result<Filter, FilterError> {
        if text.len() > MAX_FILTER {
            return Err(FilterError::TooLong(text.len()));
        }
        let mut parser = Parser::new(&GenericDialect {})
            .try_with_sql(text)
            .map_err(|e| FilterError::Syntax(e.to_string()))?;
        let expr = parser
            .parse_expr()
            .map_err(|e| FilterError::Syntax(e.to_string()))?;
        if parser.peek_token().token != Token::EOF {
            return Err(FilterError::Syntax(format!(
                "unexpected {} after the predicate",
                parser.peek_token().token
            )));
        }
        let program = Program::compile(&format!("SELECT COUNT(*) AS matched WHERE {expr}"))
            .map_err(|e| match e {
                AfcError::Syntax { .. } | AfcError::SyntaxNoPos { .. } => {
                    FilterError::Syntax(e.to_string())
                }
                other => FilterError::Unsupported(other.to_string()),
            })?;
        Ok(Filter {
            text: text.to_string(),
            program,
        })
    }

    /// The filter as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether `event` passes. An evaluation fault (a type mismatch on
    /// this event's payload) does not pass.
    pub fn matches(&self, event: &Event) -> bool {
        let attrs = fields(event);
        let frame = Frame::from_rows([&attrs]);
        match self.program.eval(&frame, 0) {
            Ok(out) => matches!(out.get("matched"), Some(Value::Int(1))),
            Err(_) => false,
        }
    }
}

/// An event's fields as one row.
fn fields(event: &Event) -> Attrs {
    let mut a = Attrs::new();
    a.set("topic", Value::Str(event.topic.clone()));
    a.set("zone", Value::Str(event.scope.as_arc().clone()));
    a.set("origin", Value::Str(event.origin.clone()));
    a.set("seq", Value::Int(event.seq as i64));
    a.set("time", Value::Time(event.time as i64));
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&event.data) {
        for (k, v) in map.into_iter().take(MAX_FIELDS) {
            if RESERVED.contains(&k.as_str()) || k.is_empty() || k.len() > 64 {
                continue;
            }
            let v = match v {
                serde_json::Value::Null => continue,
                serde_json::Value::Bool(b) => Value::Bool(b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => Value::Int(i),
                    None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
                },
                serde_json::Value::String(s) => Value::Str(s.into()),
                other => Value::Str(other.to_string().into()),
            };
            a.set(k, v);
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::ZonePath;

    fn event(topic: &str, data: &str) -> Event {
        Event {
            origin: "/eu/a".into(),
            seq: 1,
            scope: ZonePath::parse("/eu").unwrap(),
            topic: topic.into(),
            data: data.into(),
            time: 1,
            ttl: 1_000_000,
            proof: Vec::new(),
            sig: Vec::new(),
        }
    }

    #[test]
    fn predicates_over_fields_and_payload() {
        let f = Filter::compile("topic LIKE 'dc/%' AND severity >= 3").unwrap();
        assert!(f.matches(&event("dc/offline", r#"{"severity":4}"#)));
        assert!(!f.matches(&event("dc/offline", r#"{"severity":2}"#)));
        assert!(!f.matches(&event("cache/changed", r#"{"severity":5}"#)));
        // A missing field is NULL: no match, no fault.
        assert!(!f.matches(&event("dc/offline", "{}")));
        let z = Filter::compile("zone = '/eu' AND origin <> '/us/x'").unwrap();
        assert!(z.matches(&event("t", "null")));
    }

    #[test]
    fn bad_filters_are_told_apart() {
        assert!(matches!(
            Filter::compile("topic = "),
            Err(FilterError::Syntax(_))
        ));
        assert!(matches!(
            Filter::compile("topic = 'a') OR (1 = 1"),
            Err(FilterError::Syntax(_))
        ));
        assert!(matches!(
            Filter::compile("topic = 'a'; DROP TABLE x"),
            Err(FilterError::Syntax(_))
        ));
        assert!(matches!(
            Filter::compile("COUNT(*) > 1"),
            Err(FilterError::Unsupported(_))
        ));
        assert!(matches!(
            Filter::compile("topic IN (SELECT 1)"),
            Err(FilterError::Unsupported(_))
        ));
        assert!(matches!(
            Filter::compile(&"x".repeat(MAX_FILTER + 1)),
            Err(FilterError::TooLong(_))
        ));
    }
}
