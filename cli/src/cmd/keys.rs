//! `armillary keys ...`: create authorities, agent and client keys, and show
//! what a keys directory holds.

use crate::output::{CliError, CliResult, print_json};
use armillary_agent::ZonePath;
use armillary_agent::security::{
    CertKind, Certificate, DAY, Identity, KeysDir, KeysError, Right, Role, format_time, now_micros,
};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create an authority: a root (self-signed, the trust anchor), or with
    /// --parent a sub-authority for a zone inside the parent's.
    Authority(AuthorityArgs),
    /// Create an agent's key and certificate: the directory `armillary agent --keys` reads.
    Agent(AgentArgs),
    /// Create a client's key and certificate, allowed to install AFCs in some zones.
    Client(ClientArgs),
    /// Show what a keys directory holds: kind, subject, rights, key, validity, chain.
    Show(ShowArgs),
}

/// Options every creating command shares.
#[derive(Args)]
pub struct Common {
    /// Directory to write the keys to (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Days the certificate is valid (cut at the signing authority's own expiry).
    #[arg(long)]
    days: Option<u64>,
    /// Replace keys already in --out (their secret keys are lost).
    #[arg(long)]
    force: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct AuthorityArgs {
    /// The zone the authority governs, e.g. / or /eu.
    #[arg(long)]
    zone: String,
    /// A parent authority's directory: create a sub-authority it signs.
    #[arg(long)]
    parent: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct AgentArgs {
    /// The agent's leaf zone, e.g. /eu/paris/h7.
    #[arg(long)]
    zone: String,
    /// The directory of the authority that signs the certificate.
    #[arg(long)]
    authority: PathBuf,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct ClientArgs {
    /// The client's name: 1 to 64 letters, digits, '.', '_' and '-'.
    #[arg(long)]
    name: String,
    /// What the client may do, comma-separated: afc:/eu,afc:/us.
    #[arg(long, value_delimiter = ',', required = true)]
    allow: Vec<String>,
    /// The directory of the authority that signs the certificate.
    #[arg(long)]
    authority: PathBuf,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct ShowArgs {
    /// A keys directory.
    dir: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: KeysCommand) -> CliResult {
    match cmd {
        KeysCommand::Authority(a) => authority(a),
        KeysCommand::Agent(a) => agent(a),
        KeysCommand::Client(a) => client(a),
        KeysCommand::Show(a) => show(a),
    }
}

/// Default validity per role, in days.
const AUTHORITY_DAYS: u64 = 3650;
const AGENT_DAYS: u64 = 365;
const CLIENT_DAYS: u64 = 90;
/// Longest validity accepted.
const MAX_DAYS: u64 = 36_500;

fn authority(a: AuthorityArgs) -> CliResult {
    let zone = parse_zone(&a.zone)?;
    let now = now_micros();
    let expires = expiry(now, a.common.days, AUTHORITY_DAYS)?;
    let id = match &a.parent {
        None => Identity::new_root(&zone, now, expires),
        Some(dir) => {
            let parent = load_authority(dir, "--parent")?;
            parent
                .new_child(CertKind::Authority, zone.as_str(), now, expires)
                .map_err(|e| CliError::usage(format!("cannot create the sub-authority: {e}")))?
        }
    };
    let written = save(&id, &a.common)?;
    let next = format!(
        "next: armillary keys agent --zone {}/<host> --authority {} --out <agent dir>\n      \
         armillary keys client --name <name> --allow afc:{} --authority {} --out <client dir>",
        if zone.is_root() {
            "/<zone>"
        } else {
            zone.as_str()
        },
        a.common.out.display(),
        zone,
        a.common.out.display()
    );
    let what = if a.parent.is_some() {
        "sub-authority"
    } else {
        "root authority"
    };
    report(&id, &a.common, written, what, expires, &next)
}

fn agent(a: AgentArgs) -> CliResult {
    let zone = parse_zone(&a.zone)?;
    if zone.is_root() {
        return Err(CliError::usage(
            "--zone must be an agent's leaf zone below the root, e.g. /eu/paris/h7",
        ));
    }
    let auth = load_authority(&a.authority, "--authority")?;
    let now = now_micros();
    let expires = expiry(now, a.common.days, AGENT_DAYS)?;
    let id = auth
        .new_child(CertKind::Agent, zone.as_str(), now, expires)
        .map_err(|e| CliError::usage(format!("cannot create the agent's certificate: {e}")))?;
    let written = save(&id, &a.common)?;
    let next = format!(
        "next: copy {} to the host and run: armillary agent --zone {zone} --keys <that dir>",
        a.common.out.display()
    );
    report(&id, &a.common, written, "agent", expires, &next)
}

fn client(a: ClientArgs) -> CliResult {
    let allow = a
        .allow
        .iter()
        .map(|r| Right::parse(r.trim()).map_err(|e| CliError::usage(e.to_string())))
        .collect::<Result<Vec<Right>, CliError>>()?;
    if allow.is_empty() {
        return Err(CliError::usage(
            "--allow needs at least one right, e.g. afc:/eu",
        ));
    }
    let auth = load_authority(&a.authority, "--authority")?;
    let now = now_micros();
    let expires = expiry(now, a.common.days, CLIENT_DAYS)?;
    let id = auth
        .new_child(CertKind::Client { allow }, &a.name, now, expires)
        .map_err(|e| CliError::usage(format!("cannot create the client's certificate: {e}")))?;
    let written = save(&id, &a.common)?;
    let next = format!(
        "next: give {} as the client's --key to sign its AFC installs and removals",
        a.common.out.display()
    );
    report(&id, &a.common, written, "client", expires, &next)
}

fn show(a: ShowArgs) -> CliResult {
    let id = Identity::read(&a.dir).map_err(|e| keys_error(&a.dir, e))?;
    let problem = id.check(now_micros()).err().map(|e| e.to_string());
    if a.json {
        let mut v = describe(&id);
        v["dir"] = json!(a.dir.display().to_string());
        v["valid"] = json!(problem.is_none());
        v["problem"] = json!(problem);
        return print_json(&v);
    }
    let c = &id.cert;
    println!("{}: {} keys", a.dir.display(), id.role());
    println!("  subject   {}", c.subject);
    if let CertKind::Client { allow } = &c.kind {
        let rights: Vec<String> = allow.iter().map(|r| r.to_string()).collect();
        println!("  rights    {}", rights.join(", "));
    }
    println!("  key       {}", c.fingerprint());
    println!(
        "  valid     {} to {}",
        format_time(c.issued),
        format_time(c.expires)
    );
    let chain: Vec<String> = chain_of(&id)
        .iter()
        .map(|l| format!("{} {}", l.kind.label(), l.subject))
        .collect();
    println!("  chain     {}", chain.join(" <- "));
    println!("  anchor    {}", id.anchor.fingerprint());
    match problem {
        None => println!("  status    valid"),
        Some(p) => println!("  status    NOT VALID: {p}"),
    }
    Ok(())
}

fn parse_zone(text: &str) -> Result<ZonePath, CliError> {
    ZonePath::parse(text).map_err(|e| CliError::usage(format!("invalid --zone {text:?}: {e}")))
}

fn expiry(now: u64, days: Option<u64>, default: u64) -> Result<u64, CliError> {
    let days = days.unwrap_or(default);
    if days == 0 || days > MAX_DAYS {
        return Err(CliError::usage(format!(
            "--days must be between 1 and {MAX_DAYS}"
        )));
    }
    Ok(now + days * DAY)
}

fn load_authority(dir: &Path, flag: &str) -> Result<Identity, CliError> {
    Identity::load_as(dir, Role::Authority)
        .map_err(|e| CliError::usage(format!("{flag} {}: {e}", dir.display())))
}

fn keys_error(dir: &Path, e: KeysError) -> CliError {
    CliError::usage(format!("{}: {e}", dir.display()))
}

fn save(id: &Identity, c: &Common) -> Result<Vec<PathBuf>, CliError> {
    id.save(&c.out, c.force).map_err(|e| match e {
        KeysError::Write { .. } => CliError::failed(e.to_string()),
        e => CliError::usage(e.to_string()),
    })
}

/// The chain as stored, leaf first, then the anchor unless the chain holds it.
fn chain_of(id: &Identity) -> Vec<&Certificate> {
    let mut links: Vec<&Certificate> = id.cert.chain().collect();
    if links.last().is_none_or(|l| !l.is_self_signed()) {
        links.push(&id.anchor);
    }
    links
}

fn describe(id: &Identity) -> Value {
    let c = &id.cert;
    let link = |l: &Certificate| {
        json!({
            "kind": l.kind.label(),
            "subject": l.subject,
            "key": l.fingerprint(),
            "issued": format_time(l.issued),
            "expires": format_time(l.expires),
        })
    };
    json!({
        "kind": id.role().label(),
        "subject": c.subject,
        "rights": c.rights().iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "key": c.fingerprint(),
        "issued": format_time(c.issued),
        "expires": format_time(c.expires),
        "chain": chain_of(id).into_iter().map(link).collect::<Vec<_>>(),
        "anchor": link(&id.anchor),
    })
}

fn report(
    id: &Identity,
    c: &Common,
    written: Vec<PathBuf>,
    what: &str,
    asked: u64,
    next: &str,
) -> CliResult {
    let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    let capped = id.cert.expires < asked;
    if c.json {
        let mut v = describe(id);
        v["dir"] = json!(c.out.display().to_string());
        v["written"] = json!(files);
        v["expiry_capped"] = json!(capped);
        return print_json(&v);
    }
    let cert = &id.cert;
    println!("created {what} {} in {}", cert.subject, c.out.display());
    for f in &files {
        let note = if f.ends_with(".key") {
            "secret key (mode 0600): keep it on this side only"
        } else if f.ends_with("anchor.cert") {
            "trust anchor: the root every agent and client of this system shares"
        } else {
            "certificate"
        };
        println!("  {f}  {note}");
    }
    println!("  key {}", cert.fingerprint());
    println!(
        "  valid {} to {}{}",
        format_time(cert.issued),
        format_time(cert.expires),
        if capped {
            " (cut at the signing authority's expiry)"
        } else {
            ""
        }
    );
    println!("{next}");
    Ok(())
}
