//! Built-in sensors: the host readings every leaf row carries.
//!
//! Readings are rounded (load to 0.01, CPU to whole percent, memory to MiB,
//! uptime to minutes) so that a steady host does not re-issue its row at
//! every sample. One sampler serves every agent of a process.

use std::time::Duration;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
use tokio::sync::watch;
use zone_sql::{Attrs, Value};

/// How often sensors are read by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Reads the host's sensors into leaf attributes.
pub struct Sensors {
    sys: System,
}

impl Default for Sensors {
    fn default() -> Self {
        Self::new()
    }
}

impl Sensors {
    pub fn new() -> Sensors {
        let sys = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        Sensors { sys }
    }

    /// One reading: `load` (1-minute load average), `cpu` (percent busy
    /// over the last interval), `ncpus`, `mem_used_mb`, `mem_total_mb`,
    /// `mem_used` (fraction), `uptime_s` (whole minutes, in seconds).
    pub fn read(&mut self) -> Attrs {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        let load = System::load_average().one;
        let mut a = Attrs::new();
        a.set("load", Value::Float((load * 100.0).round() / 100.0));
        a.set(
            "cpu",
            Value::Float(f64::from(self.sys.global_cpu_usage()).round()),
        );
        a.set("ncpus", Value::Int(self.sys.cpus().len() as i64));
        let total = self.sys.total_memory();
        let used = self.sys.used_memory();
        a.set("mem_total_mb", Value::Int((total >> 20) as i64));
        a.set("mem_used_mb", Value::Int((used >> 20) as i64));
        if total > 0 {
            let frac = used as f64 / total as f64;
            a.set("mem_used", Value::Float((frac * 100.0).round() / 100.0));
        }
        a.set("uptime_s", Value::Int((System::uptime() / 60 * 60) as i64));
        a
    }

    /// Samples every `interval` on a background task; every node of the
    /// process reads the latest value from the returned channel.
    pub fn spawn(interval: Duration) -> watch::Receiver<Attrs> {
        let mut s = Sensors::new();
        let (tx, rx) = watch::channel(s.read());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let reading = s.read();
                if tx.send(reading).is_err() {
                    break;
                }
            }
        });
        rx
    }
}

/// CPU time this process has used so far, in milliseconds (user and system).
pub fn process_cpu_ms() -> u64 {
    let Ok(pid) = sysinfo::get_current_pid() else {
        return 0;
    };
    let mut sys = System::new();
    sys.refresh_processes_specifics(
        sysinfo::ProcessesToUpdate::Some(&[pid]),
        true,
        sysinfo::ProcessRefreshKind::nothing().with_cpu(),
    );
    sys.process(pid).map_or(0, |p| p.accumulated_cpu_time())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_host() {
        let a = Sensors::new().read();
        for k in [
            "load",
            "cpu",
            "ncpus",
            "mem_total_mb",
            "mem_used_mb",
            "uptime_s",
        ] {
            assert!(a.get(k).is_some(), "missing {k}");
        }
        assert!(matches!(a.get("ncpus"), Some(Value::Int(n)) if *n >= 1));
        assert!(matches!(a.get("mem_total_mb"), Some(Value::Int(n)) if *n > 0));
    }
}
