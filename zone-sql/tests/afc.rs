//! AFC behaviour: every aggregate, NULL handling, ordering, randomness,
//! every class of compile error with its position, and the limits.

use zone_sql::afc::Pos;
use zone_sql::json::table_from_json;
use zone_sql::{AfcError, Attrs, EvalError, Frame, MAX_AFC_TEXT, MAX_FIRST_N, Program, Value};

fn table(json: &str) -> Frame {
    let rows = table_from_json(json).expect("test table is valid JSON");
    Frame::from_rows(&rows)
}

fn run(sql: &str, json: &str) -> Attrs {
    let p = Program::compile(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    p.eval(&table(json), 7)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn one(sql: &str, json: &str) -> Value {
    let out = run(sql, json);
    assert_eq!(out.len(), 1, "{out:?}");
    out.iter()
        .next()
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn compile_err(sql: &str) -> AfcError {
    match Program::compile(sql) {
        Ok(_) => panic!("{sql} compiled"),
        Err(e) => e,
    }
}

fn at(line: u64, column: u64) -> Option<Pos> {
    Some(Pos { line, column })
}

const LOADS: &str = r#"[
  {"name":"a","load":1.5,"n":2,"up":true,"bits":1,"contacts":["a1","a2"]},
  {"name":"b","load":0.5,"n":3,"up":false,"bits":4,"contacts":["b1"]},
  {"name":"c","load":null,"n":null,"up":null,"bits":null},
  {"name":"d","load":4.0,"n":5,"up":true,"bits":2,"contacts":["d1","d2","d3"]}
]"#;

#[test]
fn min_max_sum_count_avg() {
    let out = run(
        "SELECT MIN(load) AS lo, MAX(load) AS hi, SUM(n) AS n, COUNT(*) AS rows, \
         COUNT(load) AS loads, AVG(load) AS avg, AVG(n) AS avg_n",
        LOADS,
    );
    assert_eq!(out.get("lo"), Some(&Value::Float(0.5)));
    assert_eq!(out.get("hi"), Some(&Value::Float(4.0)));
    assert_eq!(out.get("n"), Some(&Value::Int(10)));
    assert_eq!(out.get("rows"), Some(&Value::Int(4)));
    assert_eq!(out.get("loads"), Some(&Value::Int(3)));
    assert_eq!(out.get("avg"), Some(&Value::Float(2.0)));
    assert_eq!(out.get("avg_n"), Some(&Value::Float(10.0 / 3.0)));
}

#[test]
fn bare_aggregate_takes_the_column_name() {
    let p =
        Program::compile("SELECT MAX(load), SUM(n), FIRST(2, contacts) FROM zone").expect("valid");
    assert_eq!(
        p.outputs()
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        ["load", "n", "contacts"]
    );
    assert_eq!(p.inputs().len(), 3);
    assert_eq!(
        p.sql(),
        "SELECT MAX(load), SUM(n), FIRST(2, contacts) FROM zone"
    );
}

#[test]
fn empty_table_and_all_null() {
    let sql = "SELECT MIN(load) AS lo, SUM(n) AS s, AVG(load) AS a, COUNT(*) AS c, COUNT(load) AS cl, \
               OR(up) AS o, FIRST(2, contacts) AS f";
    for json in ["[]", r#"[{"load":null},{"x":1}]"#] {
        let out = run(sql, json);
        assert_eq!(out.get("lo"), Some(&Value::Null));
        assert_eq!(out.get("s"), Some(&Value::Null));
        assert_eq!(out.get("a"), Some(&Value::Null));
        assert_eq!(out.get("cl"), Some(&Value::Int(0)));
        assert_eq!(out.get("o"), Some(&Value::Null));
        assert_eq!(out.get("f"), Some(&Value::list(Vec::<&str>::new())));
    }
    assert_eq!(one("SELECT COUNT(*) AS c", "[]"), Value::Int(0));
}

#[test]
fn generic_path_matches_fast_path() {
    // The same aggregates over expressions (generic accumulators) and over
    // bare columns (typed loops).
    let out = run(
        "SELECT MIN(load + 0) AS lo, MAX(load * 1) AS hi, SUM(n + 0) AS s, AVG(load + 0) AS a, COUNT(n + 0) AS c",
        LOADS,
    );
    assert_eq!(out.get("lo"), Some(&Value::Float(0.5)));
    assert_eq!(out.get("hi"), Some(&Value::Float(4.0)));
    assert_eq!(out.get("s"), Some(&Value::Int(10)));
    assert_eq!(out.get("a"), Some(&Value::Float(2.0)));
    assert_eq!(out.get("c"), Some(&Value::Int(3)));
}

#[test]
fn int_sum_checks_only_the_result() {
    let t = format!(r#"[{{"n":{}}},{{"n":1}},{{"n":-1}}]"#, i64::MAX);
    assert_eq!(one("SELECT SUM(n)", &t), Value::Int(i64::MAX));
    assert_eq!(one("SELECT SUM(n * 1) AS s", &t), Value::Int(i64::MAX));
}

#[test]
fn mixed_int_float_column_is_float() {
    let t = r#"[{"x":1},{"x":2.5},{"x":null}]"#;
    assert_eq!(one("SELECT SUM(x)", t), Value::Float(3.5));
    assert_eq!(one("SELECT MIN(x)", t), Value::Float(1.0));
    assert_eq!(one("SELECT MIN(x + 0) AS m", t), Value::Float(1.0));
}

#[test]
fn min_max_over_strings_bools_times_durations() {
    let t = r#"[{"s":"pear","b":true},{"s":"apple","b":false}]"#;
    assert_eq!(one("SELECT MIN(s)", t), Value::from("apple"));
    assert_eq!(one("SELECT MAX(b)", t), Value::Bool(true));
    let rows: Vec<Attrs> = vec![
        [("t", Value::Time(5)), ("d", Value::Duration(30))]
            .into_iter()
            .collect(),
        [("t", Value::Time(9)), ("d", Value::Duration(10))]
            .into_iter()
            .collect(),
    ];
    let f = Frame::from_rows(&rows);
    let p =
        Program::compile("SELECT MAX(t), MIN(d), SUM(d) AS total, AVG(d) AS mean").expect("valid");
    let out = p.eval(&f, 0).expect("evaluates");
    assert_eq!(out.get("t"), Some(&Value::Time(9)));
    assert_eq!(out.get("d"), Some(&Value::Duration(10)));
    assert_eq!(out.get("total"), Some(&Value::Duration(40)));
    assert_eq!(out.get("mean"), Some(&Value::Duration(20)));
}

#[test]
fn weighted_avg_skips_rows_with_a_null() {
    let t = r#"[{"x":1.0,"w":1},{"x":3.0,"w":3},{"x":100.0,"w":null},{"x":null,"w":50}]"#;
    assert_eq!(one("SELECT AVG(x, w) AS wavg", t), Value::Float(10.0 / 4.0));
    assert_eq!(
        one("SELECT AVG(x, w) AS wavg", r#"[{"x":1.0,"w":0}]"#),
        Value::Null
    );
    assert_eq!(one("SELECT AVG(x, w) AS wavg", "[]"), Value::Null);
}

#[test]
fn or_and_over_bools_and_bitmaps() {
    let out = run(
        "SELECT OR(up) AS any_up, AND(up) AS all_up, BOOL_OR(up) AS b_or, BOOL_AND(up) AS b_and, \
         OR(bits) AS bits_or, AND(bits) AS bits_and",
        LOADS,
    );
    assert_eq!(out.get("any_up"), Some(&Value::Bool(true)));
    assert_eq!(out.get("all_up"), Some(&Value::Bool(false)));
    assert_eq!(out.get("b_or"), Some(&Value::Bool(true)));
    assert_eq!(out.get("b_and"), Some(&Value::Bool(false)));
    assert_eq!(out.get("bits_or"), Some(&Value::Int(7)));
    assert_eq!(out.get("bits_and"), Some(&Value::Int(0)));
    assert_eq!(
        one("SELECT AND(b) AS x", r#"[{"b":6},{"b":3}]"#),
        Value::Int(2)
    );
}

#[test]
fn or_and_over_hex_bitmaps() {
    let t = r#"[{"bf":"0f01"},{"bf":"A010"},{"bf":null},{"bf":"0300"}]"#;
    assert_eq!(one("SELECT OR(bf) AS bf", t), Value::Str("af11".into()));
    assert_eq!(one("SELECT AND(bf) AS bf", t), Value::Str("0000".into()));
    assert_eq!(
        one("SELECT OR(bf) AS bf", r#"[{"bf":"Ab"}]"#),
        Value::Str("ab".into())
    );
    assert_eq!(one("SELECT OR(bf) AS bf", "[]"), Value::Null);
    // Lengths must agree, and only hex digits make a bitmap.
    for bad in [
        r#"[{"bf":"0f01"},{"bf":"0f"}]"#,
        r#"[{"bf":"0f01"},{"bf":"0g01"}]"#,
        r#"[{"bf":"0f01"},{"bf":1}]"#,
        r#"[{"bf":"abc"}]"#,
    ] {
        let e = Program::compile("SELECT OR(bf) AS bf")
            .expect("valid")
            .eval(&table(bad), 0)
            .unwrap_err();
        assert!(matches!(e, EvalError::AggregateType { .. }), "{bad}: {e}");
    }
}

#[test]
fn first_flattens_lists_and_follows_order_by() {
    assert_eq!(
        one("SELECT FIRST(3, contacts)", LOADS),
        Value::list(["a1", "a2", "b1"])
    );
    assert_eq!(
        one("SELECT FIRST(3, contacts) ORDER BY load DESC", LOADS),
        Value::list(["d1", "d2", "d3"])
    );
    assert_eq!(
        one("SELECT FIRST(2, name) ORDER BY load ASC NULLS FIRST", LOADS),
        Value::list(["c", "b"])
    );
    assert_eq!(
        one("SELECT FIRST(2, name) ORDER BY load DESC NULLS LAST", LOADS),
        Value::list(["d", "a"])
    );
    // Non-string scalars are rendered as strings.
    assert_eq!(
        one("SELECT FIRST(16, n)", LOADS),
        Value::list(["2", "3", "5"])
    );
    assert_eq!(
        one(
            "SELECT FIRST(2, name) AS names WHERE up ORDER BY n DESC",
            LOADS
        ),
        Value::list(["d", "a"])
    );
}

#[test]
fn random_is_deterministic_per_seed() {
    let rows: Vec<Attrs> = (0..50)
        .map(|i| {
            [("c", Value::from(format!("c{i}").as_str()))]
                .into_iter()
                .collect()
        })
        .collect();
    let f = Frame::from_rows(&rows);
    let p = Program::compile("SELECT RANDOM(3, c)").expect("valid");
    let a = p.eval(&f, 1).expect("evaluates");
    assert_eq!(a, p.eval(&f, 1).expect("evaluates"));
    let picks: std::collections::HashSet<String> = (0..20u64)
        .map(|s| format!("{:?}", p.eval(&f, s).expect("evaluates").get("c")))
        .collect();
    assert!(picks.len() > 10, "seeds give different samples: {picks:?}");
    match a.get("c") {
        Some(Value::List(items)) => {
            assert_eq!(items.len(), 3);
            let distinct: std::collections::HashSet<_> = items.iter().collect();
            assert_eq!(distinct.len(), 3, "without replacement");
        }
        other => panic!("{other:?}"),
    }
    // Fewer values than n: all of them.
    assert_eq!(
        one("SELECT RANDOM(5, contacts)", r#"[{"contacts":["x"]}]"#),
        Value::list(["x"])
    );
}

#[test]
fn where_filters_rows() {
    let out = run(
        "SELECT COUNT(*) AS c, SUM(n) AS s WHERE load > 1 AND up",
        LOADS,
    );
    assert_eq!(out.get("c"), Some(&Value::Int(2)));
    assert_eq!(out.get("s"), Some(&Value::Int(7)));
    assert_eq!(
        one("SELECT COUNT(*) AS c WHERE name IN ('a', 'b')", LOADS),
        Value::Int(2)
    );
    assert_eq!(
        one("SELECT COUNT(*) AS c WHERE name LIKE '_'", LOADS),
        Value::Int(4)
    );
    assert_eq!(
        one("SELECT COUNT(*) AS c WHERE load BETWEEN 1 AND 4", LOADS),
        Value::Int(2)
    );
    assert_eq!(
        one("SELECT COUNT(*) AS c WHERE load IS NULL", LOADS),
        Value::Int(1)
    );
    assert_eq!(
        one("SELECT COUNT(*) AS c WHERE NOT up", LOADS),
        Value::Int(1)
    );
    assert_eq!(
        one("SELECT COUNT(*) AS c FROM zone z WHERE z.n > 2", LOADS),
        Value::Int(2)
    );
}

#[test]
fn scalar_expressions_around_aggregates() {
    let out = run(
        "SELECT SUM(n) / COUNT(*) AS int_div, SUM(load) / COUNT(load) AS mean, \
         CASE WHEN MAX(load) > 2 THEN 'hot' ELSE 'ok' END AS state, \
         CASE MIN(n) WHEN 2 THEN 'two' ELSE 'other' END AS simple, \
         COALESCE(MIN(missing), -1) AS dflt, ABS(MIN(n) - 10) AS dist, ROUND(AVG(load), 1) AS r, \
         LEAST(MIN(n), 1) AS l, GREATEST(MAX(n), 2.5) AS g, CAST(SUM(n) AS TEXT) || ' nodes' AS label, \
         CAST(MAX(load) AS INT) AS hi_int, SUM(n) % 3 AS m, MAX(n) / 0 AS z, NULLIF(MIN(n), 2) AS ni",
        LOADS,
    );
    assert_eq!(out.get("int_div"), Some(&Value::Int(2)));
    assert_eq!(out.get("mean"), Some(&Value::Float(2.0)));
    assert_eq!(out.get("state"), Some(&Value::from("hot")));
    assert_eq!(out.get("simple"), Some(&Value::from("two")));
    assert_eq!(out.get("dflt"), Some(&Value::Int(-1)));
    assert_eq!(out.get("dist"), Some(&Value::Int(8)));
    assert_eq!(out.get("r"), Some(&Value::Float(2.0)));
    assert_eq!(out.get("l"), Some(&Value::Int(1)));
    assert_eq!(out.get("g"), Some(&Value::Float(5.0)));
    assert_eq!(out.get("label"), Some(&Value::from("10 nodes")));
    assert_eq!(out.get("hi_int"), Some(&Value::Int(4)));
    assert_eq!(out.get("m"), Some(&Value::Int(1)));
    assert_eq!(out.get("z"), Some(&Value::Null));
    assert_eq!(out.get("ni"), Some(&Value::Null));
}

#[test]
fn three_valued_logic() {
    let t = r#"[{"a":true}]"#;
    assert_eq!(one("SELECT MIN(a AND NULL) AS x", t), Value::Null);
    assert_eq!(one("SELECT MIN(a OR NULL) AS x", t), Value::Bool(true));
    assert_eq!(
        one("SELECT MIN(NOT a AND NULL) AS x", t),
        Value::Bool(false)
    );
    assert_eq!(one("SELECT MIN(NULL = NULL) AS x", t), Value::Null);
    assert_eq!(one("SELECT MIN(1 IN (2, NULL)) AS x", t), Value::Null);
    assert_eq!(
        one("SELECT MIN(1 NOT IN (2, 3)) AS x", t),
        Value::Bool(true)
    );
}

#[test]
fn times_and_intervals() {
    let rows: Vec<Attrs> = vec![[("seen", Value::Time(1_000_000_000))].into_iter().collect()];
    let f = Frame::from_rows(&rows);
    let p = Program::compile(
        "SELECT MAX(seen) - TIMESTAMP '1970-01-01T00:00:00Z' AS age, \
         COUNT(*) AS fresh WHERE seen > TIMESTAMP '1970-01-01T00:00:00Z' + INTERVAL '10m'",
    )
    .expect("valid");
    let out = p.eval(&f, 0).expect("evaluates");
    assert_eq!(out.get("age"), Some(&Value::Duration(1_000_000_000)));
    assert_eq!(out.get("fresh"), Some(&Value::Int(1)));
}

#[test]
fn eval_errors_name_the_attribute() {
    let t = r#"[{"s":"x","n":1}]"#;
    let p = Program::compile("SELECT SUM(s) AS total").expect("valid");
    match p.eval(&table(t), 0) {
        Err(EvalError::AggregateType {
            output,
            func,
            attr,
            found,
        }) => {
            assert_eq!(
                (&*output, func, attr.as_str(), found),
                ("total", "SUM", "s", "string")
            );
        }
        other => panic!("{other:?}"),
    }
    let e = Program::compile("SELECT OR(n + 0) AS o, AND(s) AS a")
        .expect("valid")
        .eval(&table(t), 0)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("AND cannot aggregate a string value of s"),
        "{e}"
    );
    let overflow = format!(r#"[{{"n":{}}},{{"n":1}}]"#, i64::MAX);
    let e = Program::compile("SELECT SUM(n)")
        .expect("valid")
        .eval(&table(&overflow), 0);
    assert!(matches!(e, Err(EvalError::Overflow { .. })), "{e:?}");
    let e = Program::compile("SELECT SUM(n + 1) AS s")
        .expect("valid")
        .eval(&table(&overflow), 0);
    assert!(matches!(e, Err(EvalError::Overflow { .. })), "{e:?}");
    let e = Program::compile("SELECT MAX(s + 1) AS m")
        .expect("valid")
        .eval(&table(t), 0);
    assert!(matches!(e, Err(EvalError::Type { .. })), "{e:?}");
}

#[test]
fn error_unknown_function() {
    let e = compile_err("SELECT FOO(x) AS y");
    assert_eq!(e.to_string(), "unknown function FOO at line 1, column 8");
    assert_eq!(e.pos(), at(1, 8));
}

#[test]
fn error_positions_span_lines() {
    let e = compile_err("SELECT MAX(load) AS m,\n       bar(x) AS y");
    assert!(matches!(e, AfcError::UnknownFunction { .. }));
    assert_eq!(e.pos(), at(2, 8));
}

#[test]
fn error_wrong_arity() {
    let e = compile_err("SELECT MAX(a, b) AS m");
    assert!(matches!(e, AfcError::WrongArity { found: 2, .. }), "{e}");
    assert_eq!(e.pos(), at(1, 8));
    let e = compile_err("SELECT COUNT(*) AS c, FIRST(3) AS f");
    assert!(matches!(e, AfcError::WrongArity { found: 1, .. }), "{e}");
    assert_eq!(e.pos(), at(1, 23));
    assert!(matches!(
        compile_err("SELECT MIN(COALESCE()) AS m"),
        AfcError::WrongArity { .. }
    ));
}

#[test]
fn error_bare_column() {
    let e = compile_err("SELECT MAX(a) + b AS m");
    assert!(
        matches!(&e, AfcError::BareColumn { column, .. } if column == "b"),
        "{e}"
    );
    assert_eq!(e.pos(), at(1, 17));
    assert!(e.to_string().starts_with("aggregate misuse"));
}

#[test]
fn error_nested_aggregate() {
    let e = compile_err("SELECT MAX(MIN(a)) AS m");
    assert!(matches!(e, AfcError::NestedAggregate { .. }), "{e}");
    assert_eq!(e.pos(), at(1, 12));
}

#[test]
fn error_aggregate_in_where_or_order_by() {
    let e = compile_err("SELECT COUNT(*) AS c\nWHERE SUM(a) > 1");
    assert!(
        matches!(
            e,
            AfcError::AggregateMisuse {
                clause: "WHERE",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.pos(), at(2, 7));
    let e = compile_err("SELECT FIRST(1, a) AS f ORDER BY MAX(b)");
    assert!(
        matches!(
            e,
            AfcError::AggregateMisuse {
                clause: "ORDER BY",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn error_output_without_aggregate() {
    let e = compile_err("SELECT 1 AS one");
    assert!(matches!(e, AfcError::NotAggregate { .. }), "{e}");
}

#[test]
fn error_unbounded_output() {
    for f in [
        "STRING_AGG(name, ',')",
        "ARRAY_AGG(name)",
        "array_agg(name)",
    ] {
        let e = compile_err(&format!("SELECT {f} AS names"));
        assert!(matches!(e, AfcError::UnboundedOutput { .. }), "{e}");
        assert_eq!(e.pos(), at(1, 8));
    }
}

#[test]
fn error_missing_alias_and_duplicate_output() {
    let e = compile_err("SELECT COUNT(*)");
    assert!(matches!(e, AfcError::MissingAlias { .. }), "{e}");
    assert_eq!(e.pos(), at(1, 8));
    let e = compile_err("SELECT SUM(a) / COUNT(*)");
    assert!(matches!(e, AfcError::MissingAlias { .. }), "{e}");
    let e = compile_err("SELECT AVG(x, w)");
    assert!(matches!(e, AfcError::MissingAlias { .. }), "{e}");
    let e = compile_err("SELECT MAX(load), MIN(x) AS load");
    assert!(
        matches!(&e, AfcError::DuplicateOutput { name, .. } if name == "load"),
        "{e}"
    );
    assert_eq!(e.pos(), at(1, 29));
}

#[test]
fn error_too_long_and_too_deep() {
    let long = format!("SELECT MAX(a) AS m WHERE a > {}", "1".repeat(MAX_AFC_TEXT));
    assert!(matches!(compile_err(&long), AfcError::TooLong { .. }));

    let deep = format!("SELECT MAX({}a{}) AS m", "(".repeat(40), ")".repeat(40));
    let e = compile_err(&deep);
    assert!(
        matches!(e, AfcError::TooDeep { .. } | AfcError::TooDeepNoPos { .. }),
        "{e}"
    );

    let very_deep = format!("SELECT MAX({}a{}) AS m", "(".repeat(2000), ")".repeat(2000));
    let e = compile_err(&very_deep);
    assert!(
        matches!(e, AfcError::TooDeep { .. } | AfcError::TooDeepNoPos { .. }),
        "{e}"
    );

    // A long left-deep chain parses without recursion; the depth check
    // catches it.
    let chain = format!("SELECT MAX(a{}) AS m", "+1".repeat(1500));
    let e = compile_err(&chain);
    assert!(
        matches!(e, AfcError::TooDeep { .. } | AfcError::TooManyNodes { .. }),
        "{e}"
    );

    // The parser reports runaway prefix operators as a syntax error.
    let unary = format!("SELECT MAX({}a) AS m", "NOT ".repeat(1000));
    let e = compile_err(&unary);
    assert!(
        matches!(
            e,
            AfcError::TooDeep { .. } | AfcError::TooDeepNoPos { .. } | AfcError::Syntax { .. }
        ),
        "{e}"
    );
    let unary = format!("SELECT MAX({}a) AS m", "- ".repeat(40));
    let e = compile_err(&unary);
    assert!(
        matches!(e, AfcError::TooDeep { .. } | AfcError::TooDeepNoPos { .. }),
        "{e}"
    );

    let wide = format!(
        "SELECT COUNT(*) AS c WHERE a IN ({})",
        vec!["1"; 300].join(",")
    );
    assert!(matches!(compile_err(&wide), AfcError::TooManyNodes { .. }));
}

#[test]
fn error_too_many_outputs() {
    let items: Vec<String> = (0..65).map(|i| format!("COUNT(*) AS c{i}")).collect();
    let e = compile_err(&format!("SELECT {}", items.join(", ")));
    assert!(
        matches!(e, AfcError::TooManyOutputs { count: 65, .. }),
        "{e}"
    );
}

#[test]
fn error_first_n() {
    for sql in [
        "SELECT FIRST(0, a)",
        "SELECT FIRST(17, a)",
        "SELECT RANDOM(n, a)",
        "SELECT FIRST(1.5, a)",
    ] {
        let e = compile_err(sql);
        assert!(matches!(e, AfcError::InvalidArgument { .. }), "{sql}: {e}");
    }
    assert!(Program::compile(&format!("SELECT FIRST({MAX_FIRST_N}, a)")).is_ok());
}

#[test]
fn error_syntax_has_position() {
    let e = compile_err("SELECT MAX(a) AS m FROM");
    assert!(matches!(e, AfcError::Syntax { .. }), "{e}");
    let e = compile_err("SELECT MAX(a AS m");
    assert!(matches!(e, AfcError::Syntax { .. }), "{e}");
    assert!(e.pos().is_some());
}

#[test]
fn error_unsupported_query_shapes() {
    for sql in [
        "SELECT MAX(a) AS m FROM t JOIN u ON t.x = u.x",
        "SELECT MAX(a) AS m FROM t, u",
        "SELECT MAX(a) AS m FROM (SELECT 1) s",
        "SELECT MAX(a) AS m GROUP BY b",
        "SELECT MAX(a) AS m HAVING MAX(a) > 1",
        "SELECT MAX(a) AS m LIMIT 1",
        "SELECT DISTINCT MAX(a) AS m",
        "SELECT MAX(a) OVER () AS m",
        "SELECT MAX(a) AS m WHERE a IN (SELECT 1)",
        "SELECT COUNT(DISTINCT a) AS m",
        "SELECT *",
        "SELECT MAX(u.a) AS m FROM t",
    ] {
        let e = compile_err(sql);
        assert!(
            matches!(
                e,
                AfcError::Unsupported { .. } | AfcError::UnknownTable { .. }
            ),
            "{sql}: {e}"
        );
    }
    for sql in [
        "SELECT MAX(a) AS m; SELECT MIN(a) AS n",
        "DELETE FROM t",
        "SELECT MAX(a) AS m UNION SELECT MIN(a) AS m",
        "",
    ] {
        assert!(
            matches!(compile_err(sql), AfcError::NotOneSelect { .. }),
            "{sql}"
        );
    }
}

#[test]
fn output_too_large() {
    let big = "x".repeat(1500);
    let t = format!(r#"[{{"a":"{big}"}},{{"b":"{big}"}}]"#);
    let p = Program::compile("SELECT MAX(a), MAX(b)").expect("valid");
    assert!(matches!(
        p.eval(&table(&t), 0),
        Err(EvalError::OutputTooLarge { .. })
    ));
}

#[test]
fn budget_exceeded() {
    let rows: Vec<Attrs> = (0..20_000)
        .map(|i| [("a", Value::Int(i))].into_iter().collect())
        .collect();
    let f = Frame::from_rows(&rows);
    let whens: Vec<String> = (0..60).map(|i| format!("WHEN a = {i} THEN {i}")).collect();
    let heavy =
        Program::compile(&format!("SELECT SUM(CASE {} END) AS s", whens.join(" "))).expect("valid");
    assert!(matches!(
        heavy.eval(&f, 0),
        Err(EvalError::BudgetExceeded { .. })
    ));
    let light = Program::compile("SELECT SUM(a)").expect("valid");
    assert_eq!(
        light.eval(&f, 0).expect("in budget").get("a"),
        Some(&Value::Int(199_990_000))
    );
}

#[test]
fn never_panics_on_odd_input() {
    for sql in [
        "SELECT MAX(a) AS m WHERE a LIKE b",
        "SELECT MIN(CAST(s AS INT)) AS m",
        "SELECT MIN(-9223372036854775808) AS m",
        "SELECT MIN(99999999999999999999999) AS m",
        "SELECT MAX(a) AS \"weird name\"",
        "SELECT SUM(1) AS s WHERE 1",
        "SELECT FIRST(2, a) ORDER BY 1",
        "\u{0}",
        "SELECT MAX(a) AS m WHERE a = 'unterminated",
    ] {
        if let Ok(p) = Program::compile(sql) {
            let _ = p.eval(&table(r#"[{"a":1,"b":"%","s":"x"},{"a":"q"}]"#), 0);
        }
    }
}

#[test]
fn program_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Program>();
    assert_send_sync::<Frame>();
}
