//! A service's runtime half, beside its sans-IO core: what only a runtime
//! can do for it (run a health check, answer an API caller waiting for a
//! lookup, fan events out to subscribers). The node's task owns every glue
//! and calls it after each input; a glue sends work back to the task
//! through [`Jobs`], so nothing here needs a lock.

use super::core::NodeCore;
use super::handle::Job;
use crate::host::{Host, Service, ServiceId, Services, Zones};
use crate::row::Micros;
use std::any::Any;
use std::collections::BTreeMap;
use tokio::sync::mpsc;

/// The runtime half of one service.
pub trait Glue: Send + 'static {
    /// The envelope id of the service whose events it takes.
    fn service(&self) -> ServiceId;
    /// One event of its service (the core's event type, boxed).
    fn on_event(&mut self, event: Box<dyn Any + Send>, now: Micros);
    /// Called once when the node starts, before its first input: starts
    /// the service's own tasks, which end when the node stops.
    fn start(&mut self, handle: &super::NodeHandle) {
        let _ = handle;
    }
    /// Called after every input of the node: takes the work the core asks
    /// of the runtime.
    fn after_input(&mut self, host: &mut Host<Box<dyn Services>>, jobs: &Jobs, now: Micros);
    /// Counters for the status and `/metrics`, named `SERVICE_...`.
    fn counters(&self, host: &Host<Box<dyn Services>>, out: &mut BTreeMap<String, u64>);
    /// Gauges for the status and `/metrics`, named `SERVICE_...`, with
    /// their labels (`name{label="v"}` keys are kept as they are).
    fn gauges(&self, host: &Host<Box<dyn Services>>, out: &mut BTreeMap<String, i64>) {
        let _ = (host, out);
    }
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl super::NodeHandle {
    /// Runs `f` on the node's task with service `S`'s core, its view of the
    /// zone tree and its runtime half `G`: how a service's API calls reach
    /// it. None when the node runs no such service.
    pub async fn with_glue<S: Service, G: Glue, T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut S, Zones<'_>, &mut G, Micros) -> T + Send + 'static,
    ) -> Result<Option<T>, super::NodeError> {
        self.call(move |core| {
            let now = crate::clock::now_micros();
            let (host, glue) = core.glue::<G>()?;
            host.with_service::<S, _>(now, |s, z| f(s, z, glue, now))
        })
        .await
    }
}

/// Sends work back to the node's task (a check's outcome, say).
#[derive(Clone)]
pub struct Jobs(pub(super) mpsc::Sender<Job>);

impl Jobs {
    /// Runs `f` on the node's task; false when the node has stopped.
    pub async fn run(&self, f: impl FnOnce(&mut NodeCore) + Send + 'static) -> bool {
        self.0.send(Box::new(f)).await.is_ok()
    }
}

/// The services a node runs: their cores, and each one's runtime half.
pub struct ServiceSet {
    pub cores: Box<dyn Services>,
    pub glue: Vec<Box<dyn Glue>>,
}

impl ServiceSet {
    /// The services every agent hosts: CHM, DDS, CRM and EVN. With
    /// `security`, DDS (channels with `sign`) and EVN (events and
    /// conditions) sign with the agent's key and check origins'
    /// certificates against the trust anchors.
    pub fn standard(
        opts: &super::ServiceOptions,
        security: Option<&crate::security::Security>,
    ) -> ServiceSet {
        use crate::chm::{ChmGlue, proto::Chm};
        use crate::crm::{CrmGlue, proto::Crm, proto::CrmConfig};
        use crate::dds::{DdsGlue, proto::CertKeys, proto::Dds, proto::DdsConfig};
        use crate::evn::{EvnGlue, proto::Evn, proto::EvnConfig};
        use std::sync::Arc;
        let mut cfg = opts.chm.clone();
        if cfg.seed == 0 {
            cfg.seed = rand::random();
        }
        let mut dds = DdsConfig {
            rng_seed: rand::random(),
            ..DdsConfig::default()
        };
        let mut evn = EvnConfig {
            seed: rand::random(),
            ..EvnConfig::default()
        };
        if let Some(f) = opts.evn_fanout {
            evn.fanout = f;
        }
        if let Some(s) = security {
            let id = s.identity();
            evn.signer = Some((Arc::new(id.key.clone()), id.cert.clone()));
            evn.trust = Some(s.trust().clone());
            dds.signer = Some(Arc::new(id.key.clone()));
            dds.proof = CertKeys::proof_of(&id.cert).into();
            dds.keys = Some(Arc::new(CertKeys::new(s.trust().clone())));
        }
        ServiceSet {
            cores: Box::new((
                Chm::new(cfg),
                Dds::new(dds),
                Crm::new(CrmConfig::default()),
                Evn::new(evn),
            )),
            glue: vec![
                Box::new(ChmGlue::new(opts.cmd_checks)),
                Box::new(DdsGlue::new()),
                Box::new(CrmGlue::new()),
                Box::new(EvnGlue::new()),
            ],
        }
    }

    /// The gossip core alone.
    pub fn none() -> ServiceSet {
        ServiceSet {
            cores: Box::new(()),
            glue: Vec::new(),
        }
    }
}
