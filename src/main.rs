//! The `sluice` binary.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use sluice::config::{Config, LogFormat, ServeArgs};
use sluice::http::{AppState, router};
use sluice::hub::Hub;
use sluice::producers::Producers;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "sluice", version, about = "A real-time event streaming hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve(ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
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
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args)?;
    init_logging(&config)?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let (hub, hub_tasks) = Hub::start(&config, shutdown.clone());
    let producers = Producers::start(hub.clone(), &config, shutdown.clone())?;
    let send_buffer = config.socket_send_buffer.map(|b| b.as_u64() as usize);
    let app = router(AppState {
        hub: hub.clone(),
        config: Arc::new(config.clone()),
        producers: producers.clone(),
    });

    let base = format!("http://{addr}");
    println!("Sluice {} listening on {base}", env!("CARGO_PKG_VERSION"));
    println!("  publish:   POST {base}/publish");
    println!("  subscribe: GET  {base}/stream?topics=…  (SSE; NDJSON at {base}/ndjson)");
    println!("  status:    GET  {base}/health");
    if config.demo {
        let names = producers.names();
        let names = if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        };
        println!("  demo:      producers {names}");
    }
    tracing::info!(%addr, storage = config.storage.name(), "hub started");

    tokio::spawn(cancel_on_signal(shutdown.clone()));
    sluice::server::serve(listener, app, shutdown, send_buffer).await;
    // Producers hold the hub; its writer stops only when they let go.
    producers.wait().await;
    drop(hub);
    let _ = hub_tasks.await;
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
    tracing::info!("shutting down");
    shutdown.cancel();
}
