//! The `tianji` binary: `serve`, `migrate`, `token` and `reconcile`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tianji::config::Settings;
use tianji::domain::UserId;
use tianji::http::auth::{JwtKeys, Role};

#[derive(Parser)]
#[command(name = "tianji", version, about = "Actor runtime for flash sales")]
struct Cli {
    /// Settings file (default: ./tianji.toml if present). TIANJI_* variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run pending migrations, then serve the HTTP API.
    Serve,
    /// Run pending migrations and exit.
    Migrate,
    /// Print a JWT signed with the configured secret, with the configured issuer and audience.
    Token {
        /// The user id the token is for.
        #[arg(long)]
        user: i64,
        /// Give the token the admin role.
        #[arg(long)]
        admin: bool,
        /// How long the token is valid (e.g. 1h, 30m); at most TIANJI_JWT_LIFETIME_MAX.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Check stored counters against reservations, orders, coupons, purchases, lessons and the
    /// Redis snapshots; exit 0 when clean, 1 on a difference, 2 when the check cannot run.
    Reconcile {
        /// Repair what the stored rows prove (SKU counters, template issued counts, Redis
        /// snapshots) and report what is left.
        #[arg(long)]
        fix: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Settings first: they say how to log, and a bad one is reported on stderr either way.
    let mut settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    // Held to the end of `main`: dropping it flushes the spans not yet exported.
    let _telemetry = match tianji::telemetry::init(&settings.telemetry) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: telemetry: {error:#}");
            return ExitCode::from(2);
        }
    };
    // Reconcile needs no secrets: it neither serves nor signs.
    if let Command::Reconcile { fix } = cli.command {
        return reconcile(&settings, fix);
    }
    if let Err(error) = settings.ensure_secrets() {
        eprintln!("error: secrets: {error:#}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Serve => actix_web::rt::System::new().block_on(serve(settings)),
        Command::Migrate => actix_web::rt::System::new().block_on(migrate(settings)),
        Command::Token { user, admin, ttl } => token(&settings, user, admin, ttl),
        Command::Reconcile { .. } => unreachable!("reconcile returned above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let application = tianji::startup::Application::build(settings).await?;
    println!("tianji listening on port {}", application.port());
    let shutdown = application.run_until_stopped().await?;
    // Past the timeout the node still wrote what it held; the exit code tells the operator
    // that some clients were cut without an answer (or that progress stayed unwritten).
    anyhow::ensure!(
        shutdown.is_clean(),
        "stopped, but not cleanly: {} connections cut at TIANJI_SHUTDOWN_TIMEOUT, writes settled: {}, \
         learning progress rows not written: {}",
        shutdown.connections_cut,
        shutdown.writes_settled,
        shutdown.learning_rows_kept
    );
    Ok(())
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    tianji::persistence::connect(&settings.database_url, true, settings.limits.database_timeout).await?;
    println!("migrations applied");
    Ok(())
}

fn token(settings: &Settings, user: i64, admin: bool, ttl: Duration) -> anyhow::Result<()> {
    let user_id = UserId::parse(user).ok_or_else(|| anyhow::anyhow!("--user must be a positive id"))?;
    let role = if admin { Role::Admin } else { Role::User };
    let keys = JwtKeys::with_rules(settings.jwt_secret(), settings.tokens.clone());
    let lifetime_max = keys.rules().lifetime_max;
    anyhow::ensure!(
        ttl <= lifetime_max,
        "--ttl {} is longer than TIANJI_JWT_LIFETIME_MAX ({}): the server would refuse the token",
        humantime::format_duration(ttl),
        humantime::format_duration(lifetime_max)
    );
    println!("{}", keys.mint(user_id, role, ttl));
    Ok(())
}

/// Prints the report (one line per difference and repair, then a summary) on stdout; the exit
/// code is `tianji::reconcile::EXIT_*`.
fn reconcile(settings: &Settings, fix: bool) -> ExitCode {
    let options = tianji::reconcile::Options {
        database_url: settings.database_url.clone(),
        redis_url: settings.redis_url.clone(),
        fix,
        database_timeout: settings.limits.database_timeout,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: reconcile: {error}");
            return ExitCode::from(tianji::reconcile::EXIT_ERROR);
        }
    };
    match runtime.block_on(tianji::reconcile::run(&options)) {
        Ok(outcome) => {
            for line in outcome.lines(fix) {
                println!("{line}");
            }
            ExitCode::from(outcome.exit_code())
        }
        Err(error) => {
            eprintln!("error: reconcile: {error:#}");
            ExitCode::from(tianji::reconcile::EXIT_ERROR)
        }
    }
}
