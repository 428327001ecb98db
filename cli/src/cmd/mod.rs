//! One module per command.

pub mod afc;
pub mod afc_remote;
pub mod agent;
pub mod attr;
pub mod bench;
pub mod bench_chm;
pub mod bench_crm;
pub mod bench_evn;
pub mod bench_soak;
pub mod chm;
pub mod crm;
pub mod crm_kv;
pub mod crm_machine;
pub mod dds;
pub mod dds_bench;
pub mod dev;
pub mod evn;
pub mod keys;
pub mod sim;
pub mod watch;
pub mod zones;

/// A command's one argument, an id, at the agent at `--api`.
#[derive(clap::Args)]
pub struct IdArgs {
    pub id: String,
    #[command(flatten)]
    pub api: crate::client::ApiArgs,
}
