//! What the long-running commands share: logging, the tokio runtime, and
//! waiting for a stop signal.

use crate::output::CliError;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

/// Log timestamps, followed by `INSECURE` on every line when the agent runs
/// without keys, so no log reader can miss it.
struct Stamp {
    insecure: bool,
}

impl FormatTime for Stamp {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        SystemTime.format_time(w)?;
        if self.insecure {
            w.write_str(" INSECURE")?;
        }
        Ok(())
    }
}

/// Logs to standard error; `RUST_LOG` filters (default `info`).
pub fn init_logging(insecure: bool) {
    init_logging_at(insecure, "info")
}

/// Logging at `level` unless `RUST_LOG` says otherwise (benchmarks keep
/// their figures readable with `warn`).
pub fn init_logging_at(insecure: bool, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(Stamp { insecure })
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// A multi-threaded runtime sized for this host.
pub fn tokio() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))
}

/// Returns on Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
