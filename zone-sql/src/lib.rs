//! Armillary's data model and SQL: typed values, rows and zone tables; the
//! AFC dialect (parse, validate, compile, evaluate); DataFusion for ad-hoc
//! queries over zone tables (feature `adhoc`, on by default).

#[cfg(feature = "adhoc")]
pub mod adhoc;
pub mod afc;
pub mod frame;
pub mod intern;
pub mod json;
pub mod value;

pub use afc::{
    AfcError, EVAL_BUDGET, EvalError, MAX_AFC_TEXT, MAX_DEPTH, MAX_FIRST_N, MAX_NODES,
    MAX_OUTPUT_BYTES, MAX_OUTPUTS, Program,
};
pub use frame::Frame;
pub use value::{Attrs, Name, Value};
