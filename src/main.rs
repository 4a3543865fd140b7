//! The `sluice` binary.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// See the `jemalloc` feature in Cargo.toml.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use sluice::auth::Auth;
use sluice::config::{Config, LogFormat, ServeArgs};
use sluice::http::{App, AppState};
use sluice::hub::Hub;
use sluice::limits::Limits;
use sluice::producers::Producers;
use sluice::tls::Tls;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Time left for background tasks after the server's drain, within the
/// 5 s that shutdown may take.
const FINISH: Duration = Duration::from_millis(500);

#[derive(Parser)]
#[command(name = "sluice", version, about = "A real-time event streaming hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // made once, at start: its size does not matter
enum Command {
    /// Run the hub.
    Serve(ServeArgs),
    /// Publish an event, or one per line of standard input.
    Pub(sluice::client::publish::PubArgs),
    /// Print the events of topics as they arrive, resuming across reconnections.
    Sub(sluice::client::subscribe::SubArgs),
    /// Stream a data set (JSON array or NDJSON) into a topic at a steady rate.
    Replay(sluice::client::replay::ReplayArgs),
    /// Load the hub and measure it: publishing, replay, fan-out, idle memory.
    Bench(sluice::bench::BenchArgs),
    /// Mint a token from the hub's --jwt-secret, for development and scripts.
    Token(sluice::auth::mint::TokenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    let result = match cli.command {
        Command::Serve(args) => match sluice::hub::delivery_runtime() {
            Ok(delivery) => {
                let result = runtime.block_on(serve(args, delivery.handle().clone()));
                // What is still running there (a stalled reader past the
                // drain) is dropped, as on the main runtime.
                delivery.shutdown_background();
                result
            }
            Err(error) => Err(error.into()),
        },
        Command::Pub(args) => runtime.block_on(args.run()),
        Command::Sub(args) => runtime.block_on(args.run()),
        Command::Replay(args) => runtime.block_on(args.run()),
        Command::Bench(args) => runtime.block_on(args.run()),
        Command::Token(args) => args.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sluice: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| anyhow::anyhow!("invalid log level {:?}: {e}", config.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in files and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Runs the hub until SIGINT or SIGTERM, with subscribers' streams written on
/// `delivery` (see [`sluice::hub::delivery_runtime`]).
async fn serve(args: ServeArgs, delivery: tokio::runtime::Handle) -> anyhow::Result<()> {
    let config = Config::load(&args)?;
    init_logging(&config)?;
    let auth = Arc::new(Auth::from_config(&config)?);
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Tls::load(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let (hub, hub_tasks) = Hub::start(&config, shutdown.clone(), delivery).await?;
    let producers = Producers::start(hub.clone(), &config, shutdown.clone())?;
    let state = AppState::new(App {
        hub: hub.clone(),
        config: Arc::new(config.clone()),
        producers: producers.clone(),
        auth: auth.clone(),
        limits: Limits::new(&config),
    });

    // The banner must not take the hub down if stdout is closed.
    let say = |line: String| {
        let _ = writeln!(std::io::stdout(), "{line}");
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://{addr}");
    say(format!(
        "Sluice {} listening on {base}",
        env!("CARGO_PKG_VERSION")
    ));
    say(format!("  publish:   POST {base}/publish"));
    say(format!(
        "  subscribe: GET  {base}/stream?topics=…  (SSE; NDJSON at {base}/ndjson)"
    ));
    say(format!("  status:    GET  {base}/health"));
    if config.demo {
        let names = producers.names();
        let names = if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        };
        say(format!("  demo:      producers {names}"));
    }
    tracing::info!(%addr, storage = config.storage.name(), tls = tls.is_some(), "hub started");

    auth.announce();

    tokio::spawn(cancel_on_signal(shutdown.clone()));
    sluice::server::serve(listener, state, tls, shutdown).await;
    // Producers hold the hub; its writer stops only when they let go. Any
    // connection still open past the drain (a stalled reader) is dropped
    // with the runtime, so the process is gone within 5 s of the signal.
    let finish = async move {
        producers.wait().await;
        drop(hub);
        let _ = hub_tasks.await;
    };
    if tokio::time::timeout(FINISH, finish).await.is_err() {
        tracing::warn!("background tasks still running; exiting anyway");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Cancel first: logging may fail (a closed stderr) and must not stop it.
    shutdown.cancel();
    tracing::info!("shutting down");
}
