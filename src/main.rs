//! The `tianji` binary: `serve`, `migrate` and `token`.

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tianji::telemetry::init();
    let mut settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = settings.ensure_secrets() {
        eprintln!("error: secrets: {error:#}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Serve => actix_web::rt::System::new().block_on(serve(settings)),
        Command::Migrate => actix_web::rt::System::new().block_on(migrate(settings)),
        Command::Token { user, admin, ttl } => token(&settings, user, admin, ttl),
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
    application.run_until_stopped().await?;
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
