//! The AFC hot path against DataFusion, over a 64-row zone table:
//!
//! - `Program::eval` over a prepared `Frame` (what agents do every round),
//! - `Frame::from_rows` (done once per table change),
//! - DataFusion, full path: `ctx.sql(q)` then `collect()` per iteration,
//! - DataFusion, fastest path: a physical plan created once and re-executed.
//!
//! The DataFusion query is the closest equivalent of the AFC:
//! `FIRST(3, contacts)` becomes `array_slice(flatten(array_agg(contacts)), 1, 3)`.
//! After criterion, a summary of medians and ratios is printed.

use criterion::{Criterion, black_box};
use datafusion::catalog::MemTable;
use datafusion::physical_plan::collect;
use datafusion::prelude::{SessionConfig, SessionContext};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zone_sql::adhoc::{NamedTable, record_batch};
use zone_sql::{Attrs, Frame, Program, Value};

const ROWS: usize = 64;
const SAMPLES: usize = 50;

const AFC: &str = "SELECT MIN(load) AS min_load, MAX(load) AS max_load, AVG(load) AS avg_load, \
                   SUM(nmembers) AS nmembers, COUNT(*) AS n, FIRST(3, contacts) AS contacts";

const DF_SQL: &str = "SELECT MIN(load) AS min_load, MAX(load) AS max_load, AVG(load) AS avg_load, \
                      SUM(nmembers) AS nmembers, COUNT(*) AS n, \
                      array_slice(flatten(array_agg(contacts)), 1, 3) AS contacts FROM zone";

fn rows() -> Vec<(String, Attrs)> {
    (0..ROWS)
        .map(|i| {
            let attrs: Attrs = [
                ("load", Value::Float((i % 7) as f64 * 0.25 + 0.1)),
                ("nmembers", Value::Int((i % 5) as i64 + 1)),
                (
                    "contacts",
                    Value::list([format!("10.0.{i}.1"), format!("10.0.{i}.2")]),
                ),
                ("up", Value::Bool(i % 3 != 0)),
                ("version", Value::from("1.4.2")),
                ("seen", Value::Time(1_700_000_000_000_000 + i as i64)),
            ]
            .into_iter()
            .collect();
            (format!("node{i}"), attrs)
        })
        .collect()
}

/// Per-iteration times of each criterion sample, to report medians.
#[derive(Clone, Default)]
struct Recorder(Rc<RefCell<Vec<f64>>>);

impl Recorder {
    fn bench(&self, c: &mut Criterion, name: &str, mut f: impl FnMut()) {
        let rec = self.0.clone();
        c.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    f();
                }
                let elapsed = start.elapsed();
                rec.borrow_mut()
                    .push(elapsed.as_nanos() as f64 / iters.max(1) as f64);
                elapsed
            })
        });
    }

    /// The median of the last `SAMPLES` samples (the measured ones, after
    /// warm-up).
    fn median(&self) -> Option<f64> {
        let all = self.0.borrow();
        let mut last: Vec<f64> = all[all.len().saturating_sub(SAMPLES)..].to_vec();
        if last.is_empty() {
            return None;
        }
        last.sort_by(f64::total_cmp);
        Some(last[last.len() / 2])
    }
}

fn fmt_ns(ns: Option<f64>) -> String {
    match ns {
        None => "-".into(),
        Some(ns) if ns < 1_000.0 => format!("{ns:.0} ns"),
        Some(ns) if ns < 1_000_000.0 => format!("{:.2} µs", ns / 1_000.0),
        Some(ns) => format!("{:.2} ms", ns / 1_000_000.0),
    }
}

fn main() {
    let table = NamedTable {
        columns: Vec::new(),
        name: "zone".into(),
        rows: rows(),
    };
    let attrs: Vec<Attrs> = table.rows.iter().map(|(_, a)| a.clone()).collect();
    let frame = Frame::from_rows(&attrs);
    let program = Program::compile(AFC).expect("the benchmark AFC compiles");
    let ours = program
        .eval(&frame, 1)
        .expect("the benchmark AFC evaluates");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // One partition: the table is a single small batch, and this is the
    // cheapest configuration for DataFusion.
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let batch = record_batch(&table).expect("record batch");
    let mem = MemTable::try_new(batch.schema(), vec![vec![batch]]).expect("mem table");
    ctx.register_table("zone", Arc::new(mem)).expect("register");
    let plan = rt
        .block_on(async { ctx.sql(DF_SQL).await?.create_physical_plan().await })
        .expect("physical plan");
    let task_ctx = ctx.task_ctx();
    let theirs = rt
        .block_on(collect(plan.clone(), task_ctx.clone()))
        .expect("datafusion runs the query");
    println!("ours:       {ours:?}");
    println!(
        "datafusion: {}",
        datafusion::arrow::util::pretty::pretty_format_batches(&theirs)
            .map(|t| t.to_string())
            .unwrap_or_default()
    );

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(SAMPLES)
        .configure_from_args();

    let eval = Recorder::default();
    eval.bench(&mut c, "ours/Program::eval (64 rows)", || {
        black_box(program.eval(black_box(&frame), black_box(7)).ok());
    });
    let build = Recorder::default();
    build.bench(&mut c, "ours/Frame::from_rows (64 rows)", || {
        black_box(Frame::from_rows(black_box(&attrs)));
    });
    let full = Recorder::default();
    full.bench(
        &mut c,
        "datafusion/ctx.sql+collect (FIRST as array_slice(flatten(array_agg)))",
        || {
            let r = rt.block_on(async { ctx.sql(DF_SQL).await?.collect().await });
            black_box(r.ok());
        },
    );
    let reexec = Recorder::default();
    reexec.bench(
        &mut c,
        "datafusion/physical plan re-executed (same query)",
        || {
            let r = rt.block_on(collect(plan.clone(), task_ctx.clone()));
            black_box(r.ok());
        },
    );
    c.final_summary();

    let (e, b, f, r) = (
        eval.median(),
        build.median(),
        full.median(),
        reexec.median(),
    );
    let ratio = |x: Option<f64>| match (x, e) {
        (Some(x), Some(e)) if e > 0.0 => format!("{:.0}x", x / e),
        _ => "-".into(),
    };
    println!();
    println!("summary (medians over {SAMPLES} samples, 64-row table)");
    println!("  {:<52} {:>12} {:>14}", "path", "median", "vs Program");
    println!(
        "  {:<52} {:>12} {:>14}",
        "Program::eval (prepared Frame)",
        fmt_ns(e),
        "1x"
    );
    println!(
        "  {:<52} {:>12} {:>14}",
        "Frame::from_rows (once per table change)",
        fmt_ns(b),
        "-"
    );
    println!(
        "  {:<52} {:>12} {:>14}",
        "DataFusion physical plan re-executed",
        fmt_ns(r),
        ratio(r)
    );
    println!(
        "  {:<52} {:>12} {:>14}",
        "DataFusion ctx.sql + collect",
        fmt_ns(f),
        ratio(f)
    );
    println!(
        "  (DataFusion computes FIRST(3, contacts) as array_slice(flatten(array_agg(contacts)), 1, 3))"
    );
}
