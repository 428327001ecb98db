//! CHM's runtime half: it runs the checks the core asks for, hands lookup
//! results to the API callers waiting for them, fans status changes out to
//! watchers, and serves CHM's requests from the API and DNS. The protocol
//! itself is `armillary_proto::chm`.

pub mod checks;
pub mod consensus;
pub mod dns;
pub mod views;

pub use armillary_proto::chm as proto;

use crate::clock::now_micros;
use crate::host::{Host, ServiceId, Services};
use crate::node::{Glue, Jobs, NodeCore, NodeError, NodeHandle};
use crate::path::ZonePath;
use crate::row::Micros;
use proto::{
    Chm, ChmError, ChmEvent, ComponentId, QosView, Record, Registration, Sample, Status,
    StatusChange,
};
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};

/// Status changes kept for the history and the dashboard.
pub const HISTORY: usize = 512;
/// Status changes a slow watcher may fall behind before it loses the oldest.
const WATCH_BUFFER: usize = 1024;
/// How long an API caller waits for a lookup or a search.
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a CHM request failed.
#[derive(Debug, thiserror::Error)]
pub enum ChmCallError {
    #[error(transparent)]
    Chm(#[from] ChmError),
    #[error(
        "command checks are off on this agent: start it with --enable-cmd-checks, or give an HTTP, TCP or TTL check"
    )]
    CmdChecksOff,
    #[error("{0}")]
    NotFound(String),
    #[error("this agent does not run CHM")]
    NotRunning,
    /// The consensus level could not be reached (its group's refusal).
    #[error("consensus level: {0}")]
    Consensus(String),
    #[error(
        "the search did not end within {}",
        humantime::format_duration(SEARCH_TIMEOUT)
    )]
    Timeout,
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// Counters of the runtime half.
#[derive(Debug, Default)]
struct Counters {
    /// Checks run, by kind.
    run: BTreeMap<&'static str, u64>,
    /// Outcomes by status.
    outcomes: [u64; 3],
    timeouts: u64,
    /// Due checks dropped because the previous run had not ended.
    overlapping: u64,
}

/// CHM's runtime half.
pub struct ChmGlue {
    runner: checks::Runner,
    cmd_checks: bool,
    running: BTreeSet<ComponentId>,
    waiters: BTreeMap<u64, oneshot::Sender<ChmEvent>>,
    changes: broadcast::Sender<StatusChange>,
    history: VecDeque<StatusChange>,
    counters: Counters,
}

impl ChmGlue {
    pub fn new(cmd_checks: bool) -> ChmGlue {
        ChmGlue {
            runner: checks::Runner::new(),
            cmd_checks,
            running: BTreeSet::new(),
            waiters: BTreeMap::new(),
            changes: broadcast::channel(WATCH_BUFFER).0,
            history: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    fn checked(&mut self, id: &ComponentId, kind: &'static str, outcome: &checks::Outcome) {
        self.running.remove(id);
        *self.counters.run.entry(kind).or_default() += 1;
        self.counters.outcomes[outcome.status as usize] += 1;
        if outcome.output.contains("timed out after") {
            self.counters.timeouts += 1;
        }
    }
}

impl Glue for ChmGlue {
    fn service(&self) -> ServiceId {
        proto::ID
    }

    /// Consensus registrations rejoin their groups (CRM keeps no disk),
    /// at every agent, with or without an API.
    fn start(&mut self, handle: &NodeHandle) {
        tokio::spawn(consensus::supervise(handle.clone()));
    }

    fn on_event(&mut self, event: Box<dyn Any + Send>, _now: Micros) {
        let Ok(e) = event.downcast::<ChmEvent>() else {
            return;
        };
        match *e {
            ChmEvent::StatusChanged(c) => {
                tracing::info!(id = %c.id, zone = %c.zone, status = %c.status, previous = %c.previous, reason = %c.reason, "component status changed");
                if self.history.len() == HISTORY {
                    self.history.pop_front();
                }
                self.history.push_back(c.clone());
                let _ = self.changes.send(c);
            }
            ChmEvent::Deregistered { id, .. } => {
                tracing::info!(%id, "component deregistered after its critical period");
            }
            e @ (ChmEvent::Lookup { ticket, .. }
            | ChmEvent::Providers { ticket, .. }
            | ChmEvent::Listed { ticket, .. }) => {
                if let Some(w) = self.waiters.remove(&ticket) {
                    let _ = w.send(e);
                }
            }
        }
    }

    fn after_input(&mut self, host: &mut Host<Box<dyn Services>>, jobs: &Jobs, now: Micros) {
        self.waiters.retain(|_, w| !w.is_closed());
        let due: Vec<_> = host
            .with_service::<Chm, _>(now, |c, _| std::iter::from_fn(|| c.poll_check()).collect())
            .unwrap_or_default();
        for d in due {
            if !self.running.insert(d.id.clone()) {
                self.counters.overlapping += 1;
                continue;
            }
            let runner = self.runner.clone();
            let jobs = jobs.clone();
            let refused = matches!(d.check, proto::Check::Cmd { .. }) && !self.cmd_checks;
            tokio::spawn(async move {
                let outcome = if refused {
                    checks::Outcome {
                        status: Status::Critical,
                        output: ChmCallError::CmdChecksOff.to_string(),
                    }
                } else {
                    runner.run(&d.check, d.timeout).await
                };
                let kind = d.check.kind();
                jobs.run(move |core: &mut NodeCore| {
                    let now = now_micros();
                    let Some((host, glue)) = core.glue::<ChmGlue>() else {
                        return;
                    };
                    glue.checked(&d.id, kind, &outcome);
                    // The component may have been deregistered meanwhile.
                    let _ = host.with_service::<Chm, _>(now, |c, z| {
                        c.record_check(now, z, &d.id, outcome.status, &outcome.output)
                    });
                })
                .await;
            });
        }
    }

    fn counters(&self, host: &Host<Box<dyn Services>>, out: &mut BTreeMap<String, u64>) {
        for (kind, n) in &self.counters.run {
            out.insert(format!("chm_checks_run{{kind=\"{kind}\"}}"), *n);
        }
        for (s, n) in [Status::Passing, Status::Warning, Status::Critical]
            .iter()
            .zip(self.counters.outcomes)
        {
            out.insert(format!("chm_check_outcomes{{status=\"{s}\"}}"), n);
        }
        out.insert("chm_check_timeouts".into(), self.counters.timeouts);
        out.insert("chm_checks_overlapping".into(), self.counters.overlapping);
        let Some(c) = host.service::<Chm>() else {
            return;
        };
        let s = &c.stats;
        for (k, v) in [
            ("chm_status_changes", s.status_changes),
            ("chm_lookups", s.lookups),
            ("chm_queries_sent", s.queries_sent),
            ("chm_queries_answered", s.queries_answered),
            ("chm_query_timeouts", s.query_timeouts),
            ("chm_qos_samples", s.qos_samples),
            ("chm_qos_refused", s.qos_refused),
            ("chm_publish_failures", s.publish_failures),
        ] {
            out.insert(k.into(), v);
        }
        let d = c.detector().map(|d| d.stats.clone()).unwrap_or_default();
        for (k, v) in [
            ("chm_detector_probes{kind=\"direct\"}", d.probes),
            ("chm_detector_probes{kind=\"indirect\"}", d.indirect_probes),
            ("chm_detector_failed_probes", d.failed_probes),
            ("chm_detector_suspicions", d.suspicions),
            ("chm_detector_refutations", d.refutations),
            ("chm_detector_deaths", d.deaths),
            ("chm_detector_revivals", d.revivals),
            ("chm_detector_pauses", d.pauses),
        ] {
            out.insert(k.into(), v);
        }
    }

    fn gauges(&self, host: &Host<Box<dyn Services>>, out: &mut BTreeMap<String, i64>) {
        let Some(c) = host.service::<Chm>() else {
            return;
        };
        let mut n = [0i64; 3];
        for comp in c.components() {
            n[comp.health.status as usize] += 1;
        }
        for (s, v) in [Status::Passing, Status::Warning, Status::Critical]
            .iter()
            .zip(n)
        {
            out.insert(format!("chm_components{{status=\"{s}\"}}"), v);
        }
        let dead = c.detector().map_or(0, |d| d.dead().count()) as i64;
        out.insert("chm_detector_dead_members".into(), dead);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Runs `f` with CHM's core and its runtime half on the node's task.
async fn with_chm<T: Send + 'static>(
    h: &NodeHandle,
    f: impl FnOnce(&mut Chm, crate::host::Zones<'_>, &mut ChmGlue, Micros) -> Result<T, ChmCallError>
    + Send
    + 'static,
) -> Result<T, ChmCallError> {
    h.with_glue(f).await?.ok_or(ChmCallError::NotRunning)?
}

/// Registers (or replaces) a component of this agent.
pub async fn register(h: &NodeHandle, reg: Registration) -> Result<(), ChmCallError> {
    with_chm(h, move |c, z, g, now| {
        if matches!(reg.check.check, proto::Check::Cmd { .. }) && !g.cmd_checks {
            return Err(ChmCallError::CmdChecksOff);
        }
        Ok(c.register(now, z, reg)?)
    })
    .await
}

pub async fn deregister(h: &NodeHandle, id: ComponentId) -> Result<(), ChmCallError> {
    with_chm(h, move |c, z, _, now| Ok(c.deregister(now, z, &id)?)).await
}

pub async fn heartbeat(
    h: &NodeHandle,
    id: ComponentId,
    status: Status,
    output: String,
) -> Result<(), ChmCallError> {
    with_chm(h, move |c, z, _, now| {
        Ok(c.heartbeat(now, z, &id, status, &output)?)
    })
    .await
}

/// Puts a component in maintenance (`Some(reason)`) or takes it out.
pub async fn maint(
    h: &NodeHandle,
    id: ComponentId,
    reason: Option<String>,
) -> Result<(), ChmCallError> {
    with_chm(h, move |c, z, _, now| Ok(c.maint(now, z, &id, reason)?)).await
}

/// A consumer's samples of calls to `id`; returns this agent's view.
pub async fn qos(
    h: &NodeHandle,
    id: ComponentId,
    samples: Vec<Sample>,
) -> Result<QosView, ChmCallError> {
    with_chm(h, move |c, _, _, _| {
        let mut view = QosView::UNKNOWN;
        for s in samples {
            view = c.report_qos(&id, s)?;
        }
        Ok(view)
    })
    .await
}

/// This agent's own components, with their last check's output.
pub async fn own(h: &NodeHandle) -> Result<Vec<views::Own>, ChmCallError> {
    with_chm(h, |c, _, _, _| {
        Ok(c.components()
            .map(|comp| views::Own {
                registration: comp.registration.clone(),
                health: comp.health.clone(),
                output: comp.output.clone(),
                qos: c.qos_of(&comp.registration.id),
            })
            .collect())
    })
    .await
}

/// Starts a search with `start` and waits for its result.
async fn search(
    h: &NodeHandle,
    start: impl FnOnce(&mut Chm, crate::host::Zones<'_>, Micros) -> Result<u64, ChmError>
    + Send
    + 'static,
) -> Result<ChmEvent, ChmCallError> {
    let rx = with_chm(h, move |c, z, g, now| {
        let ticket = start(c, z, now)?;
        let (tx, rx) = oneshot::channel();
        match c.result(ticket) {
            // Answered at once, from what this agent holds.
            Some(e) => {
                let _ = tx.send(e.clone());
            }
            None => {
                g.waiters.insert(ticket, tx);
            }
        }
        Ok(rx)
    })
    .await?;
    match tokio::time::timeout(SEARCH_TIMEOUT, rx).await {
        Ok(Ok(e)) => Ok(e),
        Ok(Err(_)) => Err(NodeError::Stopped.into()),
        Err(_) => Err(ChmCallError::Timeout),
    }
}

/// Looks a component up anywhere in the tree.
pub async fn lookup(h: &NodeHandle, id: String) -> Result<Record, ChmCallError> {
    match search(h, move |c, z, now| c.lookup(now, z, &id)).await? {
        ChmEvent::Lookup { result, .. } => {
            result.map_err(|e| ChmCallError::NotFound(e.to_string()))
        }
        _ => Err(ChmCallError::NotRunning),
    }
}

/// The passing providers of `keyword`, nearest first.
pub async fn providers(
    h: &NodeHandle,
    keyword: String,
    limit: usize,
) -> Result<Vec<Record>, ChmCallError> {
    match search(h, move |c, z, now| c.providers(now, z, &keyword, limit)).await? {
        ChmEvent::Providers { records, .. } => Ok(records),
        _ => Err(ChmCallError::NotRunning),
    }
}

/// Every component in `zone`, nearest first, and whether the listing is complete.
pub async fn list(h: &NodeHandle, zone: ZonePath) -> Result<(Vec<Record>, bool), ChmCallError> {
    match search(h, move |c, z, now| Ok(c.list(now, z, zone))).await? {
        ChmEvent::Listed {
            records, complete, ..
        } => Ok((records, complete)),
        _ => Err(ChmCallError::NotRunning),
    }
}

/// Status changes from now on, and those kept so far (oldest first).
pub async fn changes(
    h: &NodeHandle,
) -> Result<(broadcast::Receiver<StatusChange>, Vec<StatusChange>), ChmCallError> {
    with_chm(h, |_, _, g, _| {
        Ok((g.changes.subscribe(), g.history.iter().cloned().collect()))
    })
    .await
}
