//! What the agent's owner feeds the core besides messages: sensor
//! readings, application attributes, keys, AFCs from clients, and the
//! durable state restored after a restart.

use super::*;

impl Agent {
    /// Sets the built-in sensor readings that go into the leaf row.
    /// Readings that would not travel (a reserved or malformed name, a value
    /// out of bounds) are left out and counted.
    pub fn set_sensors(&mut self, mut sensors: Attrs) {
        let bad: Vec<_> = sensors
            .iter()
            .filter(|(n, v)| {
                limits::check_name(n).is_err()
                    || limits::is_reserved(n)
                    || limits::check_value(n, v).is_err()
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in bad {
            sensors.remove(&n);
            self.reject(Refusal::InvalidSensor);
        }
        if sensors != self.sensors {
            self.sensors = sensors;
            self.mark_leaf_dirty();
        }
    }

    /// Sets an application attribute on the leaf row, unless the row would
    /// then break a limit its receivers apply ([`limits::check_attrs`]).
    pub fn set_attr(&mut self, now: Micros, name: &str, value: Value) -> Result<(), LimitError> {
        limits::check_name(name)?;
        if limits::is_reserved(name) {
            return Err(LimitError::Reserved(name.to_string()));
        }
        limits::check_value(name, &value)?;
        let mut local = self.local.clone();
        local.set(name, value);
        limits::check_attrs(&self.leaf_attrs(&local))?;
        self.local = local;
        self.mark_leaf_dirty();
        self.schedule_flush(now);
        Ok(())
    }

    /// Removes an application attribute; returns whether it was set.
    pub fn unset_attr(&mut self, now: Micros, name: &str) -> bool {
        let had = self.local.remove(name).is_some();
        if had {
            self.mark_leaf_dirty();
            self.schedule_flush(now);
        }
        had
    }

    /// Turns security on (rows this agent issues are signed; rows and AFCs
    /// it receives must verify) or off (the default: the simulator and
    /// `--insecure`). Rows already issued are re-issued, signed or not, at
    /// the next flush. The identity should be an agent certificate for this
    /// agent's leaf zone ([`Security::for_agent`] checks this).
    pub fn set_security(&mut self, security: Option<Arc<Security>>) {
        self.security = security;
        self.mark_leaf_dirty();
    }

    /// Installs (or replaces) an AFC whose scope contains this agent. With
    /// security on, it must be signed by an authority over its scope or a
    /// client allowed it, with a certificate valid now.
    pub fn install_afc(&mut self, now: Micros, cert: AfcCert) -> Result<(), InstallError> {
        if !cert.scope.contains(&self.cfg.leaf) {
            return Err(InstallError::OutOfScope(cert.scope));
        }
        validate_afc(&cert)?;
        if let Some(sec) = &self.security {
            sec.verify_new_afc(&cert, now)?;
        }
        let (state, _) = crate::afc::compile(&cert);
        if let AfcState::Rejected(why) = state {
            return Err(InstallError::BadAfc(why));
        }
        self.afcs.room_for(&cert, now)?;
        self.afcs.offer(Arc::new(cert), now);
        self.afcs_changed(now);
        Ok(())
    }

    /// Removes an AFC by installing its tombstone. With security on, the
    /// tombstone must be signed: give it to [`Agent::install_afc`] instead.
    pub fn remove_afc(
        &mut self,
        now: Micros,
        scope: &ZonePath,
        name: &str,
    ) -> Result<(), InstallError> {
        if self.security.is_some() {
            return Err(InstallError::Refused(Reject::Unsigned(
                "with security on, a removal is a tombstone signed by a client or authority; install the signed tombstone",
            )));
        }
        let held = self
            .afcs
            .get(scope, name)
            .filter(|e| e.state != AfcState::Removed)
            .ok_or_else(|| InstallError::NotFound {
                scope: scope.clone(),
                name: name.to_string(),
            })?;
        let issued = now.max(held.cert.issued + 1);
        self.afcs.offer(
            Arc::new(AfcCert::tombstone(scope.clone(), name, issued)),
            now,
        );
        self.afcs_changed(now);
        Ok(())
    }

    /// Offers a signed AFC (or tombstone) as a client sent it.
    pub fn offer_afc(&mut self, now: Micros, cert: Arc<AfcCert>) -> bool {
        if let Some(sec) = &self.security
            && let Err(r) = sec.verify_new_afc(&cert, now)
        {
            self.reject(r.refusal());
            return false;
        }
        let changed = self.afcs.offer(cert, now);
        if changed {
            self.afcs_changed(now);
        }
        changed
    }

    /// Restores durable state after a restart: AFCs and application
    /// attributes. Turn security on first: AFCs that
    /// do not verify (as at their issue time) are dropped and counted, and
    /// so are attributes that no longer pass the row limits.
    pub fn restore(&mut self, afcs: impl IntoIterator<Item = Arc<AfcCert>>, local: Attrs) {
        for a in afcs {
            if validate_afc(&a).is_err() {
                self.reject(Refusal::InvalidSavedAfc);
                continue;
            }
            if let Some(sec) = &self.security
                && let Err(r) = sec.verify_afc(&a, a.issued)
            {
                self.reject(r.refusal());
                continue;
            }
            self.afcs.offer(a, 0);
        }
        let mut kept = Attrs::new();
        for (n, v) in local.iter() {
            let mut next = kept.clone();
            next.set(n.clone(), v.clone());
            let ok = limits::check_name(n).is_ok()
                && !limits::is_reserved(n)
                && limits::check_attrs(&self.leaf_attrs(&next)).is_ok();
            if ok {
                kept = next;
            } else {
                self.reject(Refusal::InvalidSavedAttr);
            }
        }
        self.local = kept;
        self.mark_leaf_dirty();
    }

    pub(super) fn mark_leaf_dirty(&mut self) {
        self.leaf_dirty = true;
    }

    pub(super) fn schedule_flush(&mut self, now: Micros) {
        if self.flush_at.is_none() {
            self.flush_at = Some(now + self.cfg.coalesce);
        }
    }

    pub(super) fn afcs_changed(&mut self, now: Micros) {
        self.events.push_back(Event::AfcsChanged);
        self.mark_leaf_dirty();
        self.schedule_flush(now);
    }
}
