//! A linearizability checker (Wing and Gong's search, with Lowe's cache
//! of visited states) for histories of a replicated service.
//!
//! A history is a set of calls, each with the time it was invoked, the
//! time its reply came (None when the client never got one: it may have
//! taken effect at any time after its invocation, or never) and what it
//! returned. The history is linearizable when some total order of the
//! calls, consistent with real time (a call that returned before another
//! was invoked comes first), replays on the sequential model with the
//! same returns. Key-value histories split per key first (each key is an
//! independent object, and linearizability is compositional), which keeps
//! the search small.

use super::kv::{KvOp, KvReply, KvStore, KvValue};
use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;

/// A sequential specification.
pub trait Model: Clone + Eq + Hash {
    type Op;
    type Ret: PartialEq;
    fn step(&self, op: &Self::Op) -> (Self, Self::Ret);
}

/// One call of a history.
#[derive(Debug, Clone)]
pub struct Call<O, R> {
    pub invoke: u64,
    /// When the reply came; None when it never did.
    pub complete: Option<u64>,
    pub op: O,
    /// What it returned; None when it never returned.
    pub ret: Option<R>,
}

/// The search gave up: the history is too large to decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinearError {
    #[error(
        "not linearizable: no order of the {calls} calls replays them (first stuck at call {stuck})"
    )]
    NotLinearizable { calls: usize, stuck: usize },
    #[error("undecided after {0} steps of the search")]
    TooLarge(u64),
}

/// Steps of the search before it gives up.
const MAX_STEPS: u64 = 50_000_000;

#[derive(Clone, Copy)]
struct Entry {
    call: usize,
    /// A return entry (else an invocation).
    ret: bool,
    prev: usize,
    next: usize,
}

/// Checks that `calls` are linearizable from `init`.
pub fn check<M: Model>(init: &M, calls: &[Call<M::Op, M::Ret>]) -> Result<(), LinearError> {
    let n = calls.len();
    if n == 0 {
        return Ok(());
    }
    // Entries in time order; a return before an invocation at one instant
    // (the calls did not overlap); calls never answered return last.
    let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, c) in calls.iter().enumerate() {
        order.push((c.invoke, 1, i));
        order.push((c.complete.unwrap_or(u64::MAX), 0, i));
    }
    order.sort();
    // A doubly linked list over the entries, with a head sentinel at 0.
    let mut list: Vec<Entry> = Vec::with_capacity(2 * n + 1);
    list.push(Entry {
        call: usize::MAX,
        ret: false,
        prev: 0,
        next: 1,
    });
    let mut call_at = vec![0usize; n];
    let mut ret_at = vec![0usize; n];
    for (k, &(_, kind, i)) in order.iter().enumerate() {
        let at = k + 1;
        list.push(Entry {
            call: i,
            ret: kind == 0,
            prev: k,
            next: if k + 1 == order.len() {
                usize::MAX
            } else {
                at + 1
            },
        });
        if kind == 0 {
            ret_at[i] = at;
        } else {
            call_at[i] = at;
        }
    }
    let unlink = |list: &mut Vec<Entry>, at: usize| {
        let Entry { prev, next, .. } = list[at];
        list[prev].next = next;
        if next != usize::MAX {
            list[next].prev = prev;
        }
    };
    let relink = |list: &mut Vec<Entry>, at: usize| {
        let Entry { prev, next, .. } = list[at];
        list[prev].next = at;
        if next != usize::MAX {
            list[next].prev = at;
        }
    };
    let words = n.div_ceil(64);
    let mut done = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, M)> = HashSet::new();
    let mut stack: Vec<(usize, M)> = Vec::new();
    let mut state = init.clone();
    let mut at = list[0].next;
    let mut steps = 0u64;
    let mut deepest = 0usize;
    while list[0].next != usize::MAX {
        steps += 1;
        if steps > MAX_STEPS {
            return Err(LinearError::TooLarge(steps));
        }
        let e = list[at];
        if !e.ret {
            let c = &calls[e.call];
            let (next, ret) = state.step(&c.op);
            let fits = c.ret.as_ref().is_none_or(|r| *r == ret);
            let mut fresh = false;
            if fits {
                done[e.call / 64] |= 1 << (e.call % 64);
                fresh = seen.insert((done.clone(), next.clone()));
                if !fresh {
                    done[e.call / 64] &= !(1 << (e.call % 64));
                }
            }
            if fresh {
                stack.push((e.call, std::mem::replace(&mut state, next)));
                deepest = deepest.max(stack.len());
                unlink(&mut list, call_at[e.call]);
                unlink(&mut list, ret_at[e.call]);
                at = list[0].next;
            } else {
                at = e.next;
            }
        } else {
            // A return whose call is not placed yet: undo the last choice.
            let Some((call, prev)) = stack.pop() else {
                return Err(LinearError::NotLinearizable {
                    calls: n,
                    stuck: deepest,
                });
            };
            state = prev;
            done[call / 64] &= !(1 << (call % 64));
            relink(&mut list, ret_at[call]);
            relink(&mut list, call_at[call]);
            at = list[call_at[call]].next;
        }
    }
    Ok(())
}

/// One key of the store, the model of key-value histories.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct KvKey(Option<KvValue>);

impl Model for KvKey {
    type Op = KvOp;
    type Ret = KvReply;

    fn step(&self, op: &KvOp) -> (KvKey, KvReply) {
        let mut s = KvStore::one(op.key(), self.0.clone());
        let ret = s.run(op).unwrap_or_else(|e| KvReply::Error {
            error: e.to_string(),
        });
        (KvKey(s.get(op.key()).cloned()), ret)
    }
}

/// Checks a key-value history, one key at a time.
pub fn check_kv(calls: &[Call<KvOp, KvReply>]) -> Result<(), (String, LinearError)> {
    let mut per_key: BTreeMap<&str, Vec<Call<KvOp, KvReply>>> = BTreeMap::new();
    for c in calls {
        per_key.entry(c.op.key()).or_default().push(c.clone());
    }
    for (key, calls) in per_key {
        check(&KvKey::default(), &calls).map_err(|e| (key.to_string(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(
        invoke: u64,
        complete: Option<u64>,
        op: KvOp,
        ret: Option<KvReply>,
    ) -> Call<KvOp, KvReply> {
        Call {
            invoke,
            complete,
            op,
            ret,
        }
    }

    fn put(v: &str) -> KvOp {
        KvOp::Put {
            key: "k".into(),
            value: v.into(),
        }
    }

    fn get() -> KvOp {
        KvOp::Get { key: "k".into() }
    }

    fn val(v: Option<&str>) -> Option<KvReply> {
        Some(KvReply::Value {
            value: v.map(|v| KvValue::Text(v.into())),
        })
    }

    #[test]
    fn overlapping_calls_may_take_effect_in_either_order() {
        // put a [0,10], put b [1,11], get -> a [12,13]: b then a.
        let h = vec![
            call(0, Some(10), put("a"), val(Some("a"))),
            call(1, Some(11), put("b"), val(Some("b"))),
            call(12, Some(13), get(), val(Some("a"))),
        ];
        assert!(check_kv(&h).is_ok());
    }

    #[test]
    fn a_stale_read_after_a_write_returned_is_caught() {
        let h = vec![
            call(0, Some(1), put("a"), val(Some("a"))),
            call(2, Some(3), put("b"), val(Some("b"))),
            call(4, Some(5), get(), val(Some("a"))),
        ];
        assert!(matches!(
            check_kv(&h),
            Err((_, LinearError::NotLinearizable { .. }))
        ));
    }

    #[test]
    fn a_call_never_answered_may_or_may_not_have_happened() {
        let h = vec![
            call(0, None, put("a"), None),
            call(2, Some(3), get(), val(Some("a"))),
            call(4, Some(5), get(), val(Some("a"))),
        ];
        assert!(check_kv(&h).is_ok());
        let h = vec![
            call(0, None, put("a"), None),
            call(2, Some(3), get(), val(None)),
        ];
        assert!(check_kv(&h).is_ok());
        // Once seen, it cannot be unseen.
        let h = vec![
            call(0, None, put("a"), None),
            call(2, Some(3), get(), val(Some("a"))),
            call(4, Some(5), get(), val(None)),
        ];
        assert!(check_kv(&h).is_err());
    }

    #[test]
    fn lost_and_doubled_increments_are_caught() {
        let incr = || KvOp::Incr {
            key: "n".into(),
            by: 1,
        };
        let got = |n: i64| {
            Some(KvReply::Value {
                value: Some(KvValue::Int(n)),
            })
        };
        // Four clients, 200 increments each, sequential per client and
        // overlapping across clients: linearizable.
        let mut h = Vec::new();
        let mut v = 0;
        for round in 0..200u64 {
            for c in 0..4u64 {
                v += 1;
                h.push(call(
                    round * 10 + c,
                    Some(round * 10 + 5 + c),
                    incr(),
                    got(v),
                ));
            }
        }
        assert!(check_kv(&h).is_ok());
        // One increment applied twice: a later one sees a value too high.
        let mut twice = h.clone();
        for c in twice.iter_mut().skip(400) {
            if let Some(KvReply::Value {
                value: Some(KvValue::Int(n)),
            }) = &mut c.ret
            {
                *n += 1;
            }
        }
        assert!(check_kv(&twice).is_err());
    }
}
