//! Running the checks CHM's core asks for: an HTTP GET, a TCP connect or a
//! command, each within its timeout, turned into a status and a bounded
//! output. TTL checks need nothing here: heartbeats come through the API.

use crate::chm::proto::registry::{MAX_OUTPUT, cut};
use crate::chm::proto::{Check, Status};
use crate::row::Micros;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// What one run of a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    /// Its first line is the reason when the status changes.
    pub output: String,
}

impl Outcome {
    fn new(status: Status, output: impl Into<String>) -> Outcome {
        Outcome {
            status,
            output: cut(&output.into(), MAX_OUTPUT),
        }
    }
}

/// Runs checks; one per process, shared by every check of the agent.
#[derive(Clone)]
pub struct Runner {
    http: reqwest::Client,
}

impl Default for Runner {
    fn default() -> Self {
        Runner::new()
    }
}

impl Runner {
    pub fn new() -> Runner {
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "armillary/",
                env!("CARGO_PKG_VERSION"),
                " health check"
            ))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .unwrap_or_default();
        Runner { http }
    }

    /// Runs `check` once; it takes at most `timeout` (a run that takes
    /// longer is critical).
    pub async fn run(&self, check: &Check, timeout: Micros) -> Outcome {
        let limit = Duration::from_micros(timeout);
        let run = async {
            match check {
                Check::Http { url } => self.http(url).await,
                Check::Tcp { addr } => tcp(addr).await,
                Check::Cmd { command } => cmd(command).await,
                Check::Ttl { .. } => Outcome::new(Status::Critical, "TTL checks are not run"),
            }
        };
        match tokio::time::timeout(limit, run).await {
            Ok(o) => o,
            Err(_) => Outcome::new(
                Status::Critical,
                format!(
                    "{} check timed out after {}",
                    check.kind(),
                    humantime::format_duration(limit)
                ),
            ),
        }
    }

    /// 2xx passing, 429 warning, anything else critical; the body's start
    /// is the output.
    async fn http(&self, url: &str) -> Outcome {
        let res = match self.http.get(url).send().await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::new(Status::Critical, format!("GET {url}: {}", error_chain(&e)));
            }
        };
        let code = res.status();
        let status = if code.is_success() {
            Status::Passing
        } else if code.as_u16() == 429 {
            Status::Warning
        } else {
            Status::Critical
        };
        let mut body = Vec::new();
        let mut res = res;
        while body.len() < MAX_OUTPUT {
            match res.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                _ => break,
            }
        }
        body.truncate(MAX_OUTPUT);
        let text = String::from_utf8_lossy(&body);
        Outcome::new(status, format!("HTTP GET {url}: {code}\n{text}"))
    }
}

/// The message of an error and of its sources, one after the other.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Passing when a TCP connection opens.
async fn tcp(addr: &str) -> Outcome {
    match tokio::net::TcpStream::connect(addr).await {
        Ok(_) => Outcome::new(Status::Passing, format!("TCP connect {addr}: success")),
        Err(e) => Outcome::new(Status::Critical, format!("TCP connect {addr}: {e}")),
    }
}

/// Runs `sh -c command`: exit 0 passing, 1 warning, anything else critical.
/// Its output (stdout, then stderr) is read up to the cap; the process is
/// killed if the check is dropped (its timeout).
async fn cmd(command: &str) -> Outcome {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return Outcome::new(
                Status::Critical,
                format!("could not start {command:?}: {e}"),
            );
        }
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    tokio::join!(capped(stdout, &mut out), capped(stderr, &mut err));
    let code = match child.wait().await {
        Ok(s) => s.code(),
        Err(e) => return Outcome::new(Status::Critical, format!("{command:?}: {e}")),
    };
    let status = match code {
        Some(0) => Status::Passing,
        Some(1) => Status::Warning,
        _ => Status::Critical,
    };
    out.extend_from_slice(&err);
    let text = String::from_utf8_lossy(&out);
    let text = text.trim();
    let output = match (text.is_empty(), code) {
        (false, _) => text.to_string(),
        (true, Some(c)) => format!("{command:?} exited with {c}"),
        (true, None) => format!("{command:?} was killed by a signal"),
    };
    Outcome::new(status, output)
}

/// Reads `from` to its end, keeping the first [`MAX_OUTPUT`] bytes: the
/// command is never stopped by a full or closed pipe.
async fn capped(from: Option<impl tokio::io::AsyncRead + Unpin>, into: &mut Vec<u8>) {
    let Some(mut from) = from else { return };
    let mut chunk = [0u8; 4096];
    loop {
        match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(into.len());
                into.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(check: Check, timeout: Micros) -> Outcome {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(Runner::new().run(&check, timeout))
    }

    fn cmd(c: &str) -> Check {
        Check::Cmd { command: c.into() }
    }

    #[test]
    fn commands_map_exit_codes_to_statuses() {
        assert_eq!(run(cmd("echo fine"), 5_000_000).status, Status::Passing);
        assert_eq!(run(cmd("echo fine"), 5_000_000).output, "fine");
        assert_eq!(
            run(cmd("echo slow >&2; exit 1"), 5_000_000),
            Outcome::new(Status::Warning, "slow")
        );
        let o = run(cmd("exit 7"), 5_000_000);
        assert_eq!(o.status, Status::Critical);
        assert!(o.output.contains("exited with 7"), "{}", o.output);
    }

    #[test]
    fn a_command_past_its_timeout_is_killed_and_critical() {
        let o = run(cmd("sleep 30"), 200_000);
        assert_eq!(o.status, Status::Critical);
        assert!(o.output.contains("timed out"), "{}", o.output);
    }

    #[test]
    fn output_is_capped() {
        let o = run(cmd("head -c 100000 /dev/zero | tr '\\0' x"), 5_000_000);
        assert_eq!(o.status, Status::Passing);
        assert_eq!(o.output.len(), MAX_OUTPUT);
    }

    #[test]
    fn tcp_checks_connect() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        assert_eq!(
            run(Check::Tcp { addr: addr.clone() }, 2_000_000).status,
            Status::Passing
        );
        drop(l);
        let o = run(Check::Tcp { addr }, 2_000_000);
        assert_eq!(o.status, Status::Critical);
        assert!(o.output.starts_with("TCP connect"), "{}", o.output);
    }
}
