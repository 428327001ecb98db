//! A small pool of worker threads that live as long as the simulated world,
//! so that each time window costs a wake-up, not a thread spawn (and each
//! worker keeps its allocator's thread cache).

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

type RunFn<T> = dyn Fn(&mut T) + Send + Sync;

struct State<T> {
    todo: VecDeque<(usize, T)>,
    done: Vec<(usize, T)>,
    /// Jobs handed out and not yet returned.
    pending: usize,
    panicked: bool,
    quit: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    work: Condvar,
    finished: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A worker that panicked never holds the lock (jobs run outside it).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs batches of independent jobs on `workers` threads plus the caller.
pub(crate) struct Pool<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    run: Arc<RunFn<T>>,
    workers: Vec<JoinHandle<()>>,
}

impl<T: Send + 'static> Pool<T> {
    /// A pool with `workers` extra threads (0: the caller runs every job).
    pub(crate) fn new(workers: usize, run: Arc<RunFn<T>>) -> Pool<T> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                todo: VecDeque::new(),
                done: Vec::new(),
                pending: 0,
                panicked: false,
                quit: false,
            }),
            work: Condvar::new(),
            finished: Condvar::new(),
        });
        let workers = (0..workers)
            .map(|k| {
                let shared = shared.clone();
                let run = run.clone();
                std::thread::Builder::new()
                    .name(format!("sim-worker-{k}"))
                    .spawn(move || worker(&shared, &*run))
                    .expect("spawn a simulator worker thread")
            })
            .collect();
        Pool {
            shared,
            run,
            workers,
        }
    }

    /// Runs every job, on the workers and on the calling thread, and returns
    /// them in the order given. Which thread runs which job is not fixed, so
    /// jobs must not depend on each other.
    pub(crate) fn run_all(&self, mut jobs: Vec<T>) -> Vec<T> {
        if self.workers.is_empty() || jobs.len() <= 1 {
            for j in jobs.iter_mut() {
                (self.run)(j);
            }
            return jobs;
        }
        let n = jobs.len();
        {
            let mut s = self.shared.lock();
            s.todo.extend(jobs.into_iter().enumerate());
            s.pending = n;
        }
        self.shared.work.notify_all();
        loop {
            let Some((i, mut job)) = self.shared.lock().todo.pop_front() else {
                break;
            };
            (self.run)(&mut job);
            let mut s = self.shared.lock();
            s.done.push((i, job));
            s.pending -= 1;
        }
        let mut s = self.shared.lock();
        while s.pending > 0 {
            s = self
                .shared
                .finished
                .wait(s)
                .unwrap_or_else(|e| e.into_inner());
        }
        if s.panicked {
            drop(s);
            panic!("a simulator worker thread panicked");
        }
        let mut done = std::mem::take(&mut s.done);
        drop(s);
        done.sort_unstable_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, j)| j).collect()
    }
}

fn worker<T>(shared: &Shared<T>, run: &RunFn<T>) {
    loop {
        let (i, mut job) = {
            let mut s = shared.lock();
            loop {
                if s.quit {
                    return;
                }
                if let Some(j) = s.todo.pop_front() {
                    break j;
                }
                s = shared.work.wait(s).unwrap_or_else(|e| e.into_inner());
            }
        };
        let ok = catch_unwind(AssertUnwindSafe(|| run(&mut job))).is_ok();
        let mut s = shared.lock();
        if ok {
            s.done.push((i, job));
        } else {
            s.panicked = true;
        }
        s.pending -= 1;
        if s.pending == 0 {
            shared.finished.notify_all();
        }
    }
}

impl<T: Send + 'static> Drop for Pool<T> {
    fn drop(&mut self) {
        self.shared.lock().quit = true;
        self.shared.work.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
