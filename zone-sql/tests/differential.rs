//! Differential test: random tables and random AFCs from the subset both
//! engines support, evaluated by `Program` and by DataFusion; the results
//! must agree (floats to a relative 1e-9, NULL = NULL).
//!
//! Expressions are generated with static types so that both engines
//! compute the same thing: integer division only between expressions that
//! are integers in both, float values on a 1/4 grid so sums are exact, and
//! no comparison or denominator at the output level built from inexact
//! (divided) values.

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::prelude::SessionContext;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use zone_sql::{Attrs, Frame, Program, Value};

type Row = (
    Option<i64>,
    Option<i64>,
    Option<f64>,
    Option<f64>,
    Option<bool>,
);

const INT_COLS: [&str; 2] = ["i1", "i2"];
const FLOAT_COLS: [&str; 2] = ["f1", "f2"];

fn row_strategy() -> impl Strategy<Value = Row> {
    let int = || prop::option::weighted(0.8, -50i64..=50);
    let float = || prop::option::weighted(0.8, (-400i64..=400).prop_map(|k| k as f64 / 4.0));
    (
        int(),
        int(),
        float(),
        float(),
        prop::option::weighted(0.8, any::<bool>()),
    )
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Ty {
    Int,
    Float,
    /// Int in some rows and float in others for `Program`, float for DataFusion.
    Mixed,
}

fn unify(a: Ty, b: Ty) -> Ty {
    if a == b { a } else { Ty::Mixed }
}

fn arith_ty(a: Ty, b: Ty) -> Ty {
    match (a, b) {
        (Ty::Int, Ty::Int) => Ty::Int,
        (Ty::Float, _) | (_, Ty::Float) => Ty::Float,
        _ => Ty::Mixed,
    }
}

/// One generated expression in both dialects.
#[derive(Clone, Debug)]
struct Sql {
    ours: String,
    theirs: String,
    ty: Ty,
    /// No division involved: values are exact on the 1/4 grid.
    exact: bool,
}

impl Sql {
    fn same(text: String, ty: Ty, exact: bool) -> Sql {
        Sql {
            ours: text.clone(),
            theirs: text,
            ty,
            exact,
        }
    }
}

struct Gen {
    rng: SmallRng,
}

impl Gen {
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.rng.random_range(0..xs.len())]
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn int_lit(&mut self) -> String {
        let v = self.rng.random_range(-5i64..=5);
        if v < 0 {
            format!("({v})")
        } else {
            v.to_string()
        }
    }

    fn num_lit(&mut self) -> Sql {
        if self.chance(0.5) {
            Sql::same(self.int_lit(), Ty::Int, true)
        } else {
            let v = self.rng.random_range(-20i64..=20) as f64 / 4.0;
            let s = if v < 0.0 {
                format!("({v:?})")
            } else {
                format!("{v:?}")
            };
            Sql::same(s, Ty::Float, true)
        }
    }

    /// A numeric expression over the columns of one row.
    fn num_row(&mut self, depth: u32) -> Sql {
        if depth == 0 || self.chance(0.35) {
            if self.chance(0.15) {
                return self.num_lit();
            }
            return if self.chance(0.5) {
                Sql::same(self.pick(&INT_COLS).to_string(), Ty::Int, true)
            } else {
                Sql::same(self.pick(&FLOAT_COLS).to_string(), Ty::Float, true)
            };
        }
        let d = depth - 1;
        match self.rng.random_range(0..8) {
            0..=2 => {
                let (a, b) = (self.num_row(d), self.num_row(d));
                let op = self.pick(&["+", "-", "*"]);
                self.binary(&a, op, &b)
            }
            3 => {
                let (a, b) = (self.num_row(d), self.num_row(d));
                self.divide(&a, &b)
            }
            4 => {
                let c = self.bool_row(d);
                let (a, b) = (self.num_row(d), self.num_row(d));
                Sql {
                    ours: format!("CASE WHEN {} THEN {} ELSE {} END", c.ours, a.ours, b.ours),
                    theirs: format!(
                        "CASE WHEN {} THEN {} ELSE {} END",
                        c.theirs, a.theirs, b.theirs
                    ),
                    ty: unify(a.ty, b.ty),
                    exact: a.exact && b.exact,
                }
            }
            5 => {
                let (a, b) = (self.num_row(d), self.num_row(d));
                Sql {
                    ours: format!("COALESCE({}, {})", a.ours, b.ours),
                    theirs: format!("COALESCE({}, {})", a.theirs, b.theirs),
                    ty: unify(a.ty, b.ty),
                    exact: a.exact && b.exact,
                }
            }
            6 => {
                let a = self.num_row(d);
                Sql {
                    ours: format!("ABS({})", a.ours),
                    theirs: format!("ABS({})", a.theirs),
                    ..a
                }
            }
            _ => {
                let a = self.num_row(d);
                Sql {
                    ours: format!("(- {})", a.ours),
                    theirs: format!("(- {})", a.theirs),
                    ..a
                }
                .positive_zero()
            }
        }
    }

    fn binary(&mut self, a: &Sql, op: &str, b: &Sql) -> Sql {
        Sql {
            ours: format!("({} {op} {})", a.ours, b.ours),
            theirs: format!("({} {op} {})", a.theirs, b.theirs),
            ty: arith_ty(a.ty, b.ty),
            exact: a.exact && b.exact,
        }
        .positive_zero()
    }

    /// Division or remainder, by NULL instead of zero; integer only when
    /// both sides are integers in both engines.
    fn divide(&mut self, a: &Sql, b: &Sql) -> Sql {
        let op = self.pick(&["/", "%"]);
        let ty = arith_ty(a.ty, b.ty);
        let (x, y, ty) = if ty == Ty::Mixed {
            (self.cast_double(a), self.cast_double(b), Ty::Float)
        } else {
            (a.clone(), b.clone(), ty)
        };
        Sql {
            ours: format!("({} {op} NULLIF({}, 0))", x.ours, y.ours),
            theirs: format!("({} {op} NULLIF({}, 0))", x.theirs, y.theirs),
            ty,
            exact: false,
        }
        .positive_zero()
    }

    fn cast_double(&mut self, a: &Sql) -> Sql {
        Sql {
            ours: format!("CAST({} AS DOUBLE)", a.ours),
            theirs: format!("CAST({} AS DOUBLE)", a.theirs),
            ty: Ty::Float,
            exact: a.exact,
        }
    }

    /// A boolean expression over the columns of one row.
    fn bool_row(&mut self, depth: u32) -> Sql {
        if depth == 0 || self.chance(0.3) {
            return Sql::same("b".into(), Ty::Int, true);
        }
        let d = depth - 1;
        match self.rng.random_range(0..7) {
            0 | 1 => {
                let (a, b) = (self.num_row(d), self.num_row(d));
                let op = self.pick(&["<", "<=", "=", "<>", ">", ">="]);
                Sql::same(String::new(), Ty::Int, true).with(
                    format!("({} {op} {})", a.ours, b.ours),
                    format!("({} {op} {})", a.theirs, b.theirs),
                )
            }
            2 => {
                let (a, b) = (self.bool_row(d), self.bool_row(d));
                let op = self.pick(&["AND", "OR"]);
                a.clone().with(
                    format!("({} {op} {})", a.ours, b.ours),
                    format!("({} {op} {})", a.theirs, b.theirs),
                )
            }
            3 => {
                let a = self.bool_row(d);
                a.clone()
                    .with(format!("(NOT {})", a.ours), format!("(NOT {})", a.theirs))
            }
            4 => {
                let a = self.num_row(d);
                let not = if self.chance(0.5) { " NOT" } else { "" };
                a.clone().with(
                    format!("({} IS{not} NULL)", a.ours),
                    format!("({} IS{not} NULL)", a.theirs),
                )
            }
            5 => {
                let a = self.num_row(d);
                let (lo, hi) = (self.num_lit(), self.num_lit());
                a.clone().with(
                    format!("({} BETWEEN {} AND {})", a.ours, lo.ours, hi.ours),
                    format!("({} BETWEEN {} AND {})", a.theirs, lo.theirs, hi.theirs),
                )
            }
            _ => {
                let a = self.num_row(d);
                let items: Vec<String> = (0..3).map(|_| self.num_lit().ours).collect();
                let not = if self.chance(0.3) { " NOT" } else { "" };
                a.clone().with(
                    format!("({}{not} IN ({}))", a.ours, items.join(", ")),
                    format!("({}{not} IN ({}))", a.theirs, items.join(", ")),
                )
            }
        }
    }

    /// An aggregate over row expressions; its type at the output level.
    fn aggregate(&mut self) -> Sql {
        match self.rng.random_range(0..9) {
            0 => Sql::same("COUNT(*)".into(), Ty::Int, true),
            1 => {
                let a = self.num_row(2);
                a.clone()
                    .with(format!("COUNT({})", a.ours), format!("COUNT({})", a.theirs))
                    .typed(Ty::Int, true)
            }
            2 | 3 => {
                let a = self.num_row(2);
                let f = self.pick(&["MIN", "MAX", "SUM"]);
                let exact = a.exact;
                let ty = a.ty;
                a.clone()
                    .with(format!("{f}({})", a.ours), format!("{f}({})", a.theirs))
                    .typed(ty, exact)
            }
            4 => {
                let a = self.num_row(2);
                a.clone()
                    .with(format!("AVG({})", a.ours), format!("AVG({})", a.theirs))
                    .typed(Ty::Float, false)
            }
            5 => {
                let x = self.num_row(1);
                let w = self.exact_num_row(1);
                let both = format!("({}) IS NOT NULL AND ({}) IS NOT NULL", x.theirs, w.theirs);
                Sql {
                    ours: format!("AVG({}, {})", x.ours, w.ours),
                    theirs: format!(
                        "(CAST(SUM(CASE WHEN {both} THEN ({}) * ({}) END) AS DOUBLE) / \
                         NULLIF(CAST(SUM(CASE WHEN {both} THEN ({}) END) AS DOUBLE), 0))",
                        x.theirs, w.theirs, w.theirs
                    ),
                    ty: Ty::Float,
                    exact: false,
                }
            }
            6 | 7 => {
                let c = self.bool_row(2);
                let (ours, theirs) = if self.chance(0.5) {
                    ("OR", "bool_or")
                } else {
                    ("AND", "bool_and")
                };
                c.clone()
                    .with(
                        format!("{ours}({})", c.ours),
                        format!("{theirs}({})", c.theirs),
                    )
                    .typed(Ty::Int, true)
            }
            _ => {
                let a = self.num_row(1);
                let f = self.pick(&["MIN", "MAX"]);
                let ty = a.ty;
                let exact = a.exact;
                a.clone()
                    .with(format!("{f}({})", a.ours), format!("{f}({})", a.theirs))
                    .typed(ty, exact)
            }
        }
    }

    fn exact_num_row(&mut self, depth: u32) -> Sql {
        for _ in 0..8 {
            let s = self.num_row(depth);
            if s.exact {
                return s;
            }
        }
        Sql::same("i1".into(), Ty::Int, true)
    }

    /// A numeric aggregate (not a boolean one).
    fn num_aggregate(&mut self) -> Sql {
        loop {
            let a = self.aggregate();
            if !a.ours.starts_with("OR(") && !a.ours.starts_with("AND(") {
                return a;
            }
        }
    }

    fn exact_aggregate(&mut self) -> Sql {
        for _ in 0..16 {
            let a = self.num_aggregate();
            if a.exact {
                return a;
            }
        }
        Sql::same("COUNT(*)".into(), Ty::Int, true)
    }

    /// An output item: an aggregate, or a scalar expression over aggregates.
    fn output(&mut self) -> Sql {
        match self.rng.random_range(0..8) {
            0..=3 => self.aggregate(),
            4 => {
                let (a, b) = (self.num_aggregate(), self.num_aggregate());
                let op = self.pick(&["+", "-"]);
                self.binary(&a, op, &b)
            }
            5 => {
                let (a, b) = (self.num_aggregate(), self.exact_aggregate());
                let b = if b.ty == Ty::Int && a.ty == Ty::Int {
                    b
                } else {
                    self.cast_double(&b)
                };
                let a = if a.ty == Ty::Mixed {
                    self.cast_double(&a)
                } else {
                    a
                };
                let ty = arith_ty(a.ty, b.ty);
                Sql {
                    ours: format!("({} / NULLIF({}, 0))", a.ours, b.ours),
                    theirs: format!("({} / NULLIF({}, 0))", a.theirs, b.theirs),
                    ty,
                    exact: false,
                }
            }
            6 => {
                let c = self.exact_aggregate();
                let lit = self.num_lit();
                let (a, b) = (self.num_aggregate(), self.num_aggregate());
                let op = self.pick(&["<", ">", "=", ">="]);
                Sql {
                    ours: format!(
                        "CASE WHEN {} {op} {} THEN {} ELSE {} END",
                        c.ours, lit.ours, a.ours, b.ours
                    ),
                    theirs: format!(
                        "CASE WHEN {} {op} {} THEN {} ELSE {} END",
                        c.theirs, lit.theirs, a.theirs, b.theirs
                    ),
                    ty: unify(a.ty, b.ty),
                    exact: false,
                }
            }
            _ => {
                let a = self.num_aggregate();
                let lit = self.num_lit();
                let k = self.int_lit();
                Sql {
                    ours: format!("COALESCE({}, {}) * {k}", a.ours, lit.ours),
                    theirs: format!("COALESCE({}, {}) * {k}", a.theirs, lit.theirs),
                    ty: unify(a.ty, lit.ty),
                    exact: false,
                }
            }
        }
    }
}

impl Sql {
    /// Arrow compares floats by IEEE totalOrder, where -0.0 <> 0.0, while
    /// `Program` follows IEEE equality (-0.0 = 0.0, as SQL users expect).
    /// Adding 0.0 turns -0.0 into 0.0 on DataFusion's side only.
    fn positive_zero(self) -> Sql {
        if self.ty == Ty::Int {
            return self;
        }
        Sql {
            theirs: format!("({} + 0.0)", self.theirs),
            ..self
        }
    }

    fn with(self, ours: String, theirs: String) -> Sql {
        Sql {
            ours,
            theirs,
            ..self
        }
    }
    fn typed(self, ty: Ty, exact: bool) -> Sql {
        Sql { ty, exact, ..self }
    }
}

fn frame_of(rows: &[Row]) -> Frame {
    let attrs: Vec<Attrs> = rows
        .iter()
        .map(|(i1, i2, f1, f2, b)| {
            let mut a = Attrs::new();
            if let Some(v) = i1 {
                a.set("i1", *v);
            }
            if let Some(v) = i2 {
                a.set("i2", *v);
            }
            if let Some(v) = f1 {
                a.set("f1", *v);
            }
            // Explicit NULLs read the same as missing attributes.
            a.set("f2", f2.map_or(Value::Null, Value::Float));
            if let Some(v) = b {
                a.set("b", *v);
            }
            a
        })
        .collect();
    Frame::from_rows(&attrs)
}

fn batch_of(rows: &[Row]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("i1", DataType::Int64, true),
        Field::new("i2", DataType::Int64, true),
        Field::new("f1", DataType::Float64, true),
        Field::new("f2", DataType::Float64, true),
        Field::new("b", DataType::Boolean, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            rows.iter().map(|r| r.3).collect::<Vec<_>>(),
        )),
        Arc::new(BooleanArray::from(
            rows.iter().map(|r| r.4).collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(schema, cols).expect("schema matches columns")
}

#[derive(Debug, PartialEq)]
enum Cell {
    Null,
    Num(f64),
    Bool(bool),
}

fn cell_of_value(v: &Value) -> Cell {
    match v {
        Value::Null => Cell::Null,
        Value::Int(i) => Cell::Num(*i as f64),
        Value::Float(x) => Cell::Num(*x),
        Value::Bool(b) => Cell::Bool(*b),
        other => panic!("unexpected value {other:?}"),
    }
}

fn cell_of_array(a: &dyn Array) -> Cell {
    if a.is_null(0) {
        return Cell::Null;
    }
    if let Some(b) = a.as_any().downcast_ref::<BooleanArray>() {
        return Cell::Bool(b.value(0));
    }
    let f = cast(a, &DataType::Float64).expect("numeric result");
    let f = f
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("float array");
    Cell::Num(f.value(0))
}

fn close(a: &Cell, b: &Cell) -> bool {
    match (a, b) {
        (Cell::Num(x), Cell::Num(y)) => {
            x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()) + 1e-9
        }
        (a, b) => a == b,
    }
}

#[test]
fn program_agrees_with_datafusion() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ctx = SessionContext::new();
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::with_cases(1000)
    });
    let compared = AtomicUsize::new(0);
    let non_null = AtomicUsize::new(0);
    let strategy = (prop::collection::vec(row_strategy(), 0..40), any::<u64>());
    let result = runner.run(&strategy, |(rows, seed)| {
        let mut g = Gen {
            rng: SmallRng::seed_from_u64(seed),
        };
        let n = g.rng.random_range(1..=4);
        let items: Vec<Sql> = (0..n).map(|_| g.output()).collect();
        let filter = g.chance(0.5).then(|| g.bool_row(2));
        let ours_items: Vec<String> = items
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{} AS o{i}", s.ours))
            .collect();
        let theirs_items: Vec<String> = items
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{} AS o{i}", s.theirs))
            .collect();
        let mut ours_sql = format!("SELECT {}", ours_items.join(", "));
        let mut theirs_sql = format!("SELECT {} FROM t", theirs_items.join(", "));
        if let Some(f) = &filter {
            ours_sql.push_str(&format!(" WHERE {}", f.ours));
            theirs_sql.push_str(&format!(" WHERE {}", f.theirs));
        }

        let program = Program::compile(&ours_sql)
            .map_err(|e| TestCaseError::fail(format!("compile {ours_sql}: {e}")))?;
        let ours = program
            .eval(&frame_of(&rows), 0)
            .map_err(|e| TestCaseError::fail(format!("eval {ours_sql}: {e}")))?;

        let batch = batch_of(&rows);
        let theirs = rt
            .block_on(async {
                ctx.deregister_table("t")?;
                let mem = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
                ctx.register_table("t", Arc::new(mem))?;
                ctx.sql(&theirs_sql).await?.collect().await
            })
            .map_err(|e| TestCaseError::fail(format!("datafusion {theirs_sql}: {e}")))?;
        let batch = theirs
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| TestCaseError::fail("datafusion returned no row"))?;
        prop_assert_eq!(batch.num_rows(), 1);

        for i in 0..n {
            let name = format!("o{i}");
            let mine = cell_of_value(ours.get(&name).unwrap_or(&Value::Null));
            let col = batch
                .column_by_name(&name)
                .ok_or_else(|| TestCaseError::fail(format!("no column {name}")))?;
            let other = cell_of_array(col.as_ref());
            compared.fetch_add(1, Relaxed);
            if mine != Cell::Null {
                non_null.fetch_add(1, Relaxed);
            }
            prop_assert!(
                close(&mine, &other),
                "{}: ours {:?}, datafusion {:?}\n  ours: {}\n  datafusion: {}",
                name,
                mine,
                other,
                ours_sql,
                theirs_sql
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (compared, non_null) = (compared.into_inner(), non_null.into_inner());
    assert!(
        non_null * 2 > compared,
        "most compared results should be values, not NULL: {non_null} of {compared}"
    );
}
