//! tianji-loadtest: drives tianji and its baselines with one driver, closed loop or open loop
//! at a fixed rate, and checks that what each acknowledged is what it stored. `engines` runs
//! reservation engines in process; `http` runs scenarios against a running `tianji serve`
//! beside a bare actix-web handler; `scale` starts clusters of 1, then 3 `tianji serve` nodes
//! and drives the same order load against each. Beside each throughput it reports machine time per
//! operation (CPU time of the processes involved). Every run is bounded in attempts and time,
//! sends load only to loopback addresses, and removes what it created (databases, Redis keys,
//! servers it started).
//!
//! Exit status: 0 when every end-state check passed, 1 when a check failed, 2 on any error.

mod check;
mod cli;
mod cpu;
mod database;
mod driver;
mod engines;
mod html;
mod http;
mod process;
mod report;
mod scale;
mod target;
mod workload;

use clap::Parser;
use cli::{Cli, Command};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (outcome, json, html) = match &cli.command {
        Command::Engines(args) => {
            (actix::System::new().block_on(engines::run(args)), args.load.json.as_ref(), args.load.html.as_ref())
        }
        Command::Http(args) => (http::main(args), args.load.json.as_ref(), args.load.html.as_ref()),
        Command::Scale(args) => (scale::main(args), args.json.as_ref(), None),
    };
    match outcome.and_then(|report| publish(&report, json, html).map(|()| report)) {
        Ok(report) if report.passed() => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("END-STATE CHECK FAILED: see the check column above");
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Prints the table and writes the files asked for.
fn publish(report: &report::Report, json: Option<&PathBuf>, html: Option<&PathBuf>) -> anyhow::Result<()> {
    print!("{}", report::table(report));
    if let Some(path) = json {
        report.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = html {
        std::fs::write(path, html::render(report)).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
