//! Ad-hoc queries over zone tables through DataFusion.

use serde_json::json;
use zone_sql::adhoc::{AdhocError, NamedTable, run_query};
use zone_sql::{Attrs, Value};

fn row(name: &str, attrs: &[(&str, Value)]) -> (String, Attrs) {
    (name.to_string(), attrs.iter().cloned().collect())
}

fn tables() -> Vec<NamedTable> {
    vec![
        NamedTable {
            columns: Vec::new(),
            name: "/eu/paris".into(),
            rows: vec![
                row(
                    "n1",
                    &[
                        ("load", Value::Float(0.5)),
                        ("nmembers", Value::Int(3)),
                        ("up", Value::Bool(true)),
                        ("contacts", Value::list(["10.0.0.1"])),
                        ("seen", Value::Time(0)),
                        ("uptime", Value::Duration(90_000_000)),
                    ],
                ),
                row(
                    "n2",
                    &[
                        ("load", Value::Int(2)),
                        ("nmembers", Value::Int(5)),
                        ("odd", Value::Int(1)),
                    ],
                ),
                row(
                    "n3",
                    &[("load", Value::Float(1.5)), ("odd", Value::from("x"))],
                ),
            ],
        },
        NamedTable {
            columns: Vec::new(),
            name: "/eu/berlin".into(),
            rows: vec![row("n1", &[("load", Value::Float(9.0))]), row("n9", &[])],
        },
    ]
}

#[tokio::test]
async fn select_where_order() {
    let out = run_query(
        tables(),
        r#"SELECT name, load FROM "/eu/paris" WHERE load > 1 ORDER BY load DESC"#,
    )
    .await
    .expect("query runs");
    assert_eq!(out.len(), 2);
    assert_eq!(out[0]["name"], json!("n2"));
    assert_eq!(out[0]["load"], json!(2.0));
    assert_eq!(out[1]["name"], json!("n3"));
}

#[tokio::test]
async fn types_map_to_json() {
    let out = run_query(
        tables(),
        r#"SELECT name, nmembers, up, contacts, seen, uptime, odd FROM "/eu/paris" ORDER BY name"#,
    )
    .await
    .expect("query runs");
    assert_eq!(out[0]["nmembers"], json!(3));
    assert_eq!(out[0]["up"], json!(true));
    assert_eq!(out[0]["contacts"], json!(["10.0.0.1"]));
    assert_eq!(out[0]["seen"], json!("1970-01-01T00:00:00.000000Z"));
    assert_eq!(out[0]["uptime"], json!("1m 30s"));
    assert_eq!(out[1]["up"], json!(null));
    // A column with conflicting types is text.
    assert_eq!(out[1]["odd"], json!("1"));
    assert_eq!(out[2]["odd"], json!("x"));
}

#[tokio::test]
async fn join_two_zone_tables() {
    let out = run_query(
        tables(),
        r#"SELECT p.name, p.load AS paris_load, b.load AS berlin_load
           FROM "/eu/paris" p JOIN "/eu/berlin" b ON p.name = b.name"#,
    )
    .await
    .expect("query runs");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["name"], json!("n1"));
    assert_eq!(out[0]["paris_load"], json!(0.5));
    assert_eq!(out[0]["berlin_load"], json!(9.0));

    // Same-named columns are told apart by their table.
    let out = run_query(
        tables(),
        r#"SELECT p.name, b.name FROM "/eu/paris" p JOIN "/eu/berlin" b ON p.name = b.name"#,
    )
    .await
    .expect("query runs");
    assert_eq!(out[0].len(), 2, "{:?}", out[0]);
}

#[tokio::test]
async fn aggregates_and_with() {
    let out = run_query(
        tables(),
        r#"WITH t AS (SELECT * FROM "/eu/paris") SELECT COUNT(*) AS n, SUM(nmembers) AS m, MAX(load) AS hi FROM t"#,
    )
    .await
    .expect("query runs");
    assert_eq!(
        out,
        vec![serde_json::from_value(json!({"n": 3, "m": 8, "hi": 2.0})).expect("object")]
    );
}

#[tokio::test]
async fn only_queries_are_allowed() {
    for sql in [
        "CREATE TABLE x (a INT)",
        r#"DROP TABLE "/eu/paris""#,
        r#"INSERT INTO "/eu/paris" VALUES ('x')"#,
        "COPY (SELECT 1) TO 'out.csv'",
        "SET datafusion.execution.batch_size = 1",
        "SELECT 1; SELECT 2",
    ] {
        let e = run_query(tables(), sql).await.expect_err(sql);
        assert!(
            matches!(e, AdhocError::NotAQuery(_) | AdhocError::Sql(_)),
            "{sql}: {e}"
        );
    }
}

#[tokio::test]
async fn sql_errors_carry_datafusion_message() {
    let e = run_query(tables(), r#"SELECT nope FROM "/eu/paris""#)
        .await
        .expect_err("bad column");
    assert!(e.to_string().contains("nope"), "{e}");
    let e = run_query(tables(), "SELECT * FROM nowhere")
        .await
        .expect_err("bad table");
    assert!(e.to_string().contains("nowhere"), "{e}");
}

#[tokio::test]
async fn results_are_bounded() {
    let e = run_query(vec![], "SELECT * FROM generate_series(1, 20000)").await;
    match e {
        Err(AdhocError::TooManyRows { .. }) => {}
        // Without the table function, the bound is checked on a cross join.
        Err(AdhocError::Sql(_)) => {
            let rows: Vec<(String, Attrs)> = (0..200).map(|i| row(&format!("n{i}"), &[])).collect();
            let t = vec![NamedTable {
                columns: Vec::new(),
                name: "t".into(),
                rows,
            }];
            let e = run_query(t, "SELECT a.name FROM t a, t b").await;
            assert!(matches!(e, Err(AdhocError::TooManyRows { .. })), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
}
