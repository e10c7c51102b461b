//! A thin shell: parse, set up logging and the runtime, run, map to an exit code.

use clap::Parser;
use coder_agent_auth::app::{self, Finished};
use coder_agent_auth::{cli::Cli, error::Failure, logging, tls};

fn main() {
    let cli = Cli::parse();
    logging::init(&cli.log_config());
    let json = cli.sub.is_none() && cli.exchange.json;
    let finished = match cli.into_mode() {
        Err(usage) => Finished::failed(Failure::Usage(usage), json),
        Ok(mode) => {
            tls::install_provider();
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(app::run(mode)),
                Err(e) => Finished::failed(
                    Failure::Internal(anyhow::anyhow!("starting the async runtime: {e}")),
                    json,
                ),
            }
        }
    };
    std::process::exit(app::report(&finished));
}
