//! Hostile AFC text and tables: compilation and evaluation must return
//! errors, never panic, overflow the stack or run away.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use zone_sql::{Attrs, Frame, Program, Value};

const TOKENS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "ORDER",
    "BY",
    "AS",
    "AND",
    "OR",
    "NOT",
    "NULL",
    "IS",
    "IN",
    "LIKE",
    "BETWEEN",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "CAST",
    "INT",
    "TEXT",
    "MIN",
    "MAX",
    "SUM",
    "COUNT",
    "AVG",
    "FIRST",
    "RANDOM",
    "COALESCE",
    "ROUND",
    "(",
    ")",
    "(",
    ")",
    ",",
    "*",
    "+",
    "-",
    "/",
    "%",
    "||",
    "=",
    "<",
    ">=",
    "<>",
    "a",
    "b",
    "s",
    "l",
    "1",
    "0",
    "2.5",
    "'x%'",
    "'%'",
    "TRUE",
    "DESC",
    "NULLS",
    "LAST",
    ";",
    "::",
    "zone",
    ".",
    "\"q\"",
    "16",
    "17",
    "-9223372036854775808",
];

fn frame() -> Frame {
    let rows: Vec<Attrs> = vec![
        [
            ("a", Value::Int(i64::MAX)),
            ("b", Value::Float(1.5)),
            ("s", Value::from("xy")),
        ]
        .into_iter()
        .collect(),
        [
            ("a", Value::Int(-1)),
            ("s", Value::Int(3)),
            ("l", Value::list(["p", "q"])),
        ]
        .into_iter()
        .collect(),
        [("a", Value::from("text")), ("b", Value::Bool(true))]
            .into_iter()
            .collect(),
        Attrs::new(),
    ];
    Frame::from_rows(&rows)
}

#[test]
fn token_soup_never_panics() {
    let f = frame();
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::with_cases(2000)
    });
    let soup = prop::collection::vec(prop::sample::select(TOKENS), 0..40);
    runner
        .run(&soup, |tokens| {
            let sql = format!("SELECT {}", tokens.join(" "));
            if let Ok(p) = Program::compile(&sql) {
                let _ = p.eval(&f, 1);
            }
            Ok(())
        })
        .expect("no panic");
}

#[test]
fn deep_and_long_inputs_fit_a_small_stack() {
    let inputs: Vec<String> = vec![
        format!("SELECT MAX(a{}) AS m", "+1".repeat(2040)),
        format!("SELECT MAX(a{}) AS m", "::int".repeat(800)),
        format!("SELECT MAX(a{}) AS m", " IS NULL".repeat(500)),
        format!("SELECT MAX({}a{}) AS m", "(".repeat(2000), ")".repeat(2000)),
        format!("SELECT MAX({}a) AS m", "-".repeat(4000)),
        format!("SELECT MAX({}a) AS m", "NOT ".repeat(1000)),
        format!(
            "SELECT MAX(a) AS m WHERE {}",
            "a = 1 OR ".repeat(400) + "TRUE"
        ),
        format!("SELECT {}1", "COALESCE(".repeat(400)),
        format!("SELECT MAX(a) AS m ORDER BY {}", "a, ".repeat(1000) + "a"),
    ];
    let handle = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            let f = frame();
            for sql in &inputs {
                if let Ok(p) = Program::compile(sql) {
                    let _ = p.eval(&f, 0);
                }
            }
        })
        .expect("thread starts");
    handle.join().expect("no stack overflow or panic");
}

#[test]
fn pathological_like_is_bounded() {
    let rows: Vec<Attrs> = (0..64)
        .map(|_| {
            [("s", Value::from("a".repeat(2000).as_str()))]
                .into_iter()
                .collect()
        })
        .collect();
    let f = Frame::from_rows(&rows);
    let sql = format!("SELECT COUNT(*) AS c WHERE s LIKE '%{}b'", "a".repeat(1000));
    let p = Program::compile(&sql).expect("valid");
    let start = std::time::Instant::now();
    assert!(p.eval(&f, 0).is_err());
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}
