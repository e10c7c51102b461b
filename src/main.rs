//! A thin shell: parse, set up logging and the runtime, run, map to an exit code.

use clap::Parser;
use coder_agent_auth::{app, cli::Cli, error::Failure, logging, tls};

fn main() {
    let cli = Cli::parse();
    logging::init(&cli.log_config());
    let result = match cli.into_config() {
        Err(usage) => Err(Failure::Usage(usage)),
        Ok(cfg) => {
            tls::install_provider();
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(app::run(cfg)),
                Err(e) => Err(Failure::Internal(anyhow::anyhow!(
                    "starting the async runtime: {e}"
                ))),
            }
        }
    };
    std::process::exit(app::report(&result));
}
