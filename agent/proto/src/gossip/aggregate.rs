//! Aggregation: the leaf row's attributes, each zone's row evaluated from
//! its child table by the system AFC and the installed AFCs, and the AFCs
//! rows carry.

use super::*;

impl Agent {
    /// The attributes of this agent's leaf row with `local` as the
    /// application attributes: sensors, `local`, the standard attributes.
    pub(super) fn leaf_attrs(&self, local: &Attrs) -> Attrs {
        let mut attrs = self.sensors.clone();
        for (n, v) in local.iter() {
            attrs.set(n.clone(), v.clone());
        }
        for (r, _) in limits::RESERVED {
            attrs.remove(r);
        }
        attrs.set("nmembers", 1i64);
        attrs.set("depth", self.cfg.leaf.depth() as i64);
        attrs.set("contacts", Value::list([self.cfg.addr.clone()]));
        if let Some(api) = &self.cfg.api_addr {
            attrs.set("servers", Value::list([api.clone()]));
        }
        attrs
    }

    /// What this agent's own leaf row says, and the AFCs it carries.
    pub(super) fn leaf_content(&self, now: Micros) -> (Attrs, Vec<Arc<AfcCert>>) {
        (
            self.leaf_attrs(&self.local),
            self.carried_afcs(now, self.levels.len() - 1),
        )
    }

    /// Evaluates zone `i`'s row from its table, unless nothing it depends on moved.
    pub(super) fn evaluate(&mut self, now: Micros, i: usize) {
        let half_fail = self.fail_timeout(i) / 2;
        let since = (now + 1).saturating_sub(half_fail);
        let nreporting = self.levels[i].table.fresh_count(since) as i64;
        let level = &self.levels[i];
        let key = (
            level.table.content_version(),
            self.afcs.version(),
            nreporting,
        );
        if level.evaluated_key == Some(key) {
            return;
        }
        self.stats.evaluations += 1;
        let zone = self.zones[i].clone();
        let nchildren = level.table.len() as i64;
        let frame = self.levels[i].table.frame();
        let seed = stable_hash(zone.as_str());
        let mut faults: Vec<AfcFault> = Vec::new();
        let mut out = match self.system.eval(&frame, seed) {
            Ok(a) => a,
            Err(e) => {
                // Never every member a representative: fall back to the
                // first children's contacts, as the system AFC would pick.
                faults.push(AfcFault {
                    zone: zone.clone(),
                    scope: ZonePath::root(),
                    name: "system".into(),
                    reason: e.to_string(),
                });
                fallback_system(self.levels[i].table.rows(), self.cfg.reps)
            }
        };
        out.set("depth", i as i64);
        out.set("nchildren", nchildren);
        out.set("nreporting", nreporting);
        let mut budget = MAX_ATTRS_BYTES - limits::SYSTEM_ATTRS_BYTES;
        for (prefix, program) in &self.service_programs {
            if let Err(reason) = merge_output(program, &frame, seed, &mut out, &mut budget) {
                faults.push(AfcFault {
                    zone: zone.clone(),
                    scope: ZonePath::root(),
                    name: format!("{prefix} (built-in)").into(),
                    reason,
                });
            }
        }
        for afc in self.afcs.applicable(&zone) {
            let Some(program) = &afc.program else {
                continue;
            };
            if let Err(reason) = merge_output(program, &frame, seed, &mut out, &mut budget) {
                faults.push(AfcFault {
                    zone: zone.clone(),
                    scope: afc.cert.scope.clone(),
                    name: afc.cert.name.clone(),
                    reason,
                });
            }
        }
        if !faults.is_empty() {
            self.stats.afc_faults += 1;
            let errors: Vec<String> = faults
                .iter()
                .take(4)
                .map(|f| truncate(format!("{}: {}", f.name, f.reason), 160))
                .collect();
            out.set("afc_errors", Value::list(errors));
        }
        let hash = crate::row::content_hash(&out, &[]);
        let (is_rep, is_primary) = match out.get("contacts") {
            Some(Value::List(l)) => (
                l.contains(&self.cfg.addr),
                l.first().is_some_and(|a| *a == self.cfg.addr),
            ),
            _ => (false, false),
        };
        let members = match out.get("nmembers") {
            Some(Value::Int(n)) => (*n).max(1) as u64,
            _ => nchildren.max(1) as u64,
        };
        let level = &mut self.levels[i];
        level.fail_timeout = self.cfg.fail_timeout(members);
        level.evaluated_key = Some(key);
        level.is_rep = is_rep;
        level.is_primary = is_primary;
        level.faults = faults;
        let changed = hash != level.computed_hash;
        level.computed_hash = hash;
        if changed && self.cfg.events {
            self.events.push_back(Event::ZoneChanged {
                zone,
                attrs: out.clone(),
            });
        }
        level.computed = out;
    }

    /// Zone `i`'s row as issued: the evaluation, and the issue time of its
    /// oldest input (how fresh it is).
    pub(super) fn with_input_times(&self, i: usize) -> Attrs {
        let mut attrs = self.levels[i].computed.clone();
        if let Some(oldest) = self.levels[i].table.oldest_issued() {
            attrs.set("oldest_input", Value::Time(oldest as i64));
        }
        attrs
    }

    /// AFCs that rows of table `t` carry: those installed at that zone, and
    /// those installed above it that its own table does not show yet (the
    /// nearest scopes first), within the row's AFC budget.
    pub(super) fn carried_afcs(&self, now: Micros, t: usize) -> Vec<Arc<AfcCert>> {
        let zone = &self.zones[t];
        let mut own: Vec<Arc<AfcCert>> = Vec::new();
        let mut upward: Vec<Arc<AfcCert>> = Vec::new();
        for e in self.afcs.iter().filter(|e| self.afcs.carried(e, now)) {
            let scope = &e.cert.scope;
            if scope == zone {
                own.push(e.cert.clone());
                continue;
            }
            let d = scope.depth();
            if d < t && self.zones[d] == *scope && !self.visible_in(d, &e.cert) {
                upward.push(e.cert.clone());
            }
        }
        upward.sort_by_key(|a| std::cmp::Reverse(a.scope.depth()));
        let mut room = MAX_ROW_AFC_BYTES;
        let mut out = Vec::with_capacity(own.len() + upward.len());
        for a in own.into_iter().chain(upward) {
            let len = a.encoded_len();
            if len > room || out.len() == MAX_AFCS_PER_ROW {
                continue;
            }
            room -= len;
            out.push(a);
        }
        out
    }

    /// AFCs that could not contribute to zone rows at the last evaluation.
    pub fn afc_faults(&self) -> impl Iterator<Item = &AfcFault> {
        self.levels.iter().flat_map(|l| l.faults.iter())
    }

    pub(super) fn visible_in(&self, level: usize, cert: &AfcCert) -> bool {
        self.levels[level].table.rows().iter().any(|r| {
            r.afcs
                .iter()
                .any(|a| a.name == cert.name && a.scope == cert.scope && a.issued >= cert.issued)
        })
    }
}

/// Why a service's built-in aggregation cannot run in every zone.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceAggregationError {
    #[error("the built-in aggregation of service {service} does not compile: {error}")]
    Invalid {
        service: &'static str,
        error: zone_sql::AfcError,
    },
    #[error(
        "the built-in aggregation of service {service} outputs {output}, which is not under its prefix {service}_"
    )]
    ForeignOutput {
        service: &'static str,
        output: String,
    },
}

impl Agent {
    /// Replaces every aggregation of `service` with `programs` (SQL, each
    /// output named `NAME_...`), at run time: for a service whose
    /// aggregations follow its own state (EVN's conditions). The other
    /// services' aggregations stay; zones re-evaluate at their next turn.
    pub fn replace_service_aggregations(
        &mut self,
        service: &'static str,
        programs: Vec<String>,
    ) -> Result<(), ServiceAggregationError> {
        let mut all: Vec<(&'static str, String)> = self
            .service_programs
            .iter()
            .filter(|(s, _)| *s != service)
            .map(|(s, p)| (*s, p.sql().to_string()))
            .collect();
        all.extend(programs.into_iter().map(|sql| (service, sql)));
        self.set_service_aggregations(all)
    }

    /// Sets the built-in aggregations of the services beside this core:
    /// `(service name, SQL)`, each output named `NAME_...`. Every zone
    /// evaluates them after the system AFC, before the installed AFCs,
    /// whose outputs may not take their names.
    pub fn set_service_aggregations(
        &mut self,
        programs: Vec<(&'static str, String)>,
    ) -> Result<(), ServiceAggregationError> {
        let mut compiled = Vec::with_capacity(programs.len());
        for (service, sql) in programs {
            let program = Program::compile(&sql)
                .map_err(|error| ServiceAggregationError::Invalid { service, error })?;
            let foreign = program.outputs().iter().find(|o| {
                !o.strip_prefix(service)
                    .is_some_and(|rest| rest.len() > 1 && rest.starts_with('_'))
            });
            if let Some(o) = foreign {
                return Err(ServiceAggregationError::ForeignOutput {
                    service,
                    output: o.to_string(),
                });
            }
            compiled.push((service, program));
        }
        self.service_programs = compiled;
        for level in &mut self.levels {
            level.evaluated_key = None;
        }
        Ok(())
    }
}

/// Evaluates one program over a zone's table and adds its output to the
/// zone's row `out`, within the `budget` bytes left; the reason when the
/// output is left out (the program failed, a value breaks a row limit, a
/// name is already set, or it does not fit).
fn merge_output(
    program: &Program,
    frame: &zone_sql::Frame,
    seed: u64,
    out: &mut Attrs,
    budget: &mut usize,
) -> Result<(), String> {
    let a = program.eval(frame, seed).map_err(|e| e.to_string())?;
    limits::check_output(&a).map_err(|e| format!("output left out: {e}"))?;
    if let Some(n) = a.names().find(|n| out.get(n).is_some()) {
        return Err(format!("output {n} already set by another AFC"));
    }
    let len = a.encoded_len();
    if len > *budget {
        return Err(format!(
            "output left out: its {len} bytes do not fit the {budget} bytes left of the row's {MAX_ATTRS_BYTES}-byte attribute budget"
        ));
    }
    *budget -= len;
    for (n, v) in a.iter() {
        out.set(n.clone(), v.clone());
    }
    Ok(())
}

/// The system AFC: standard attributes every zone row has.
pub fn system_afc(reps: usize) -> String {
    format!(
        "SELECT SUM(nmembers) AS nmembers, FIRST({reps}, contacts) AS contacts, FIRST({reps}, servers) AS servers"
    )
}

/// The standard attributes from a table directly, for when the system AFC
/// fails: the members summed, the first children's contacts and servers.
pub(super) fn fallback_system(rows: &[Arc<Row>], reps: usize) -> Attrs {
    let mut out = Attrs::new();
    let members: i64 = rows
        .iter()
        .filter_map(|r| match r.get("nmembers") {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        })
        .fold(0i64, |a, b| a.saturating_add(b))
        .min(limits::MAX_NMEMBERS);
    out.set("nmembers", members);
    for attr in ["contacts", "servers"] {
        let first: Vec<Arc<str>> = rows
            .iter()
            .filter_map(|r| match r.get(attr) {
                Some(Value::List(l)) => Some(l.iter().cloned()),
                _ => None,
            })
            .flatten()
            .take(reps)
            .collect();
        out.set(attr, Value::List(first.into()));
    }
    out
}

/// Cuts a message to at most `max` bytes, on a character boundary.
pub(super) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
