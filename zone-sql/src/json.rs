//! JSON encoding of values, rows and tables, for files and the CLI.
//!
//! Output maps times to RFC 3339 strings and durations to human strings;
//! input is plain JSON only (strings stay strings).

use crate::value::{Attrs, Value};
use serde_json::{Map, Number, Value as Json};

/// Why a JSON text could not be read as a table or value.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum JsonError {
    #[error("invalid JSON: {0}")]
    Syntax(String),
    #[error("expected a JSON array of row objects, found {found}")]
    NotAnArray { found: &'static str },
    #[error("row {row}: expected an object, found {found}")]
    NotAnObject { row: usize, found: &'static str },
    #[error("row {row}, attribute {attr}: {message}")]
    BadAttribute {
        row: usize,
        attr: String,
        message: String,
    },
    #[error("{message}")]
    BadValue { message: String },
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a bool",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Reads a table: a JSON array of row objects.
pub fn table_from_json(text: &str) -> Result<Vec<Attrs>, JsonError> {
    let doc: Json = serde_json::from_str(text).map_err(|e| JsonError::Syntax(e.to_string()))?;
    let rows = match doc {
        Json::Array(rows) => rows,
        other => {
            return Err(JsonError::NotAnArray {
                found: kind(&other),
            });
        }
    };
    rows.iter()
        .enumerate()
        .map(|(row, r)| {
            let obj = r.as_object().ok_or(JsonError::NotAnObject {
                row,
                found: kind(r),
            })?;
            let mut attrs = Attrs::new();
            for (k, v) in obj {
                let value = value_from_json(v).map_err(|e| JsonError::BadAttribute {
                    row,
                    attr: k.clone(),
                    message: match e {
                        JsonError::BadValue { message } => message,
                        other => other.to_string(),
                    },
                })?;
                attrs.set(k.as_str(), value);
            }
            Ok(attrs)
        })
        .collect()
}

/// Encodes a row as a JSON object.
pub fn attrs_to_json(a: &Attrs) -> Map<String, Json> {
    a.iter()
        .map(|(n, v)| (n.to_string(), value_to_json(v)))
        .collect()
}

/// Encodes one value; non-finite floats become null.
pub fn value_to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::Number((*i).into()),
        Value::Float(x) => Number::from_f64(*x).map_or(Json::Null, Json::Number),
        Value::Str(s) => Json::String(s.to_string()),
        Value::Time(_) | Value::Duration(_) => Json::String(v.to_string()),
        Value::List(items) => {
            Json::Array(items.iter().map(|s| Json::String(s.to_string())).collect())
        }
    }
}

/// Decodes one plain JSON value: integers to Int, other numbers to Float,
/// arrays of strings to List. Nested objects and other arrays are errors.
pub fn value_from_json(v: &Json) -> Result<Value, JsonError> {
    Ok(match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().ok_or_else(|| JsonError::BadValue {
                message: format!("number {n} is out of range"),
            })?),
        },
        Json::String(s) => Value::Str(s.as_str().into()),
        Json::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Json::String(s) => out.push(s.as_str().into()),
                    other => {
                        return Err(JsonError::BadValue {
                            message: format!(
                                "arrays may hold only strings, element {i} is {}",
                                kind(other)
                            ),
                        });
                    }
                }
            }
            Value::List(out.into())
        }
        Json::Object(_) => {
            return Err(JsonError::BadValue {
                message: "nested objects are not supported".into(),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trip() {
        let text =
            r#"[{"name":"a","load":1.5,"n":3,"up":true,"c":["x","y"],"z":null},{"name":"b"}]"#;
        let rows = table_from_json(text).expect("valid table");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].get("load"), Some(&Value::Float(1.5)));
        assert_eq!(rows[0].get("n"), Some(&Value::Int(3)));
        assert_eq!(rows[0].get("c"), Some(&Value::list(["x", "y"])));
        let back: Vec<Json> = rows
            .iter()
            .map(|r| Json::Object(attrs_to_json(r)))
            .collect();
        let again = table_from_json(&Json::Array(back).to_string()).expect("round trip");
        assert_eq!(rows, again);
    }

    #[test]
    fn errors_name_row_and_attribute() {
        let e = table_from_json(r#"[{"a":1},{"b":{"c":1}}]"#).unwrap_err();
        assert!(
            matches!(&e, JsonError::BadAttribute { row: 1, attr, .. } if attr == "b"),
            "{e}"
        );
        let e = table_from_json(r#"[{"a":[1,2]}]"#).unwrap_err();
        assert!(e.to_string().contains("row 0, attribute a"), "{e}");
        assert!(matches!(
            table_from_json("{}"),
            Err(JsonError::NotAnArray { .. })
        ));
        assert!(matches!(
            table_from_json("[1]"),
            Err(JsonError::NotAnObject { row: 0, .. })
        ));
        assert!(matches!(table_from_json("[{"), Err(JsonError::Syntax(_))));
    }

    #[test]
    fn times_and_durations_render_for_humans() {
        assert_eq!(
            value_to_json(&Value::Time(0)),
            Json::String("1970-01-01T00:00:00.000000Z".into())
        );
        assert_eq!(
            value_to_json(&Value::Duration(90_000_000)),
            Json::String("1m 30s".into())
        );
        assert_eq!(value_to_json(&Value::Float(f64::NAN)), Json::Null);
    }
}
