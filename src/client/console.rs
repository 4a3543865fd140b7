//! Standard output and signals, as a command in a pipeline must treat them.
//!
//! Output is flushed as it is written, so that `sluice sub … | grep …` sees
//! each event when it arrives rather than when a buffer fills; a reader that
//! goes away (`| head -1`) ends the command quietly, as it does `cat`; and
//! Ctrl-C or SIGTERM is the normal way to stop a command that follows a
//! stream, so it ends with status 0.

use std::io::{self, Write};

use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Standard output, written and flushed in one go per call.
pub struct Stdout(tokio::io::Stdout);

/// Standard output was closed by its reader: not a failure, the end.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct StdoutClosed;

impl Stdout {
    pub fn open() -> Stdout {
        Stdout(tokio::io::stdout())
    }

    /// Writes `bytes` and flushes them.
    pub async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let written = async {
            self.0.write_all(bytes).await?;
            self.0.flush().await
        };
        match written.await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
            Err(e) => Err(anyhow::anyhow!("cannot write to standard output: {e}")),
        }
    }
}

/// A command's result, with a closed standard output counted as success.
pub fn closed_stdout_is_success(result: anyhow::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e) if e.is::<StdoutClosed>() => Ok(()),
        other => other,
    }
}

/// Prints `sluice: MESSAGE` on standard error; a closed standard error is
/// no reason to stop.
pub fn warn(message: &str) {
    let _ = writeln!(io::stderr().lock(), "sluice: {message}");
}

/// SIGINT and SIGTERM, caught from the moment this is made (so a signal
/// that comes early is not missed and does not kill the process).
pub struct Interrupt {
    int: Signal,
    term: Signal,
}

impl Interrupt {
    pub fn catch() -> anyhow::Result<Interrupt> {
        let catch = |kind| signal(kind).map_err(|e| anyhow::anyhow!("cannot handle signals: {e}"));
        Ok(Interrupt {
            int: catch(SignalKind::interrupt())?,
            term: catch(SignalKind::terminate())?,
        })
    }

    /// Resolves when either signal arrives.
    pub async fn received(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}
