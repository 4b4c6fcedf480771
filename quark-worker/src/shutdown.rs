//! Waiting for the operator to say stop.

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
///
/// It listens from its first poll. To wait for a second signal after a first, use
/// [`ShutdownSignals`], which keeps a signal that arrives while nothing waits.
pub async fn shutdown_signal() {
    match ShutdownSignals::new() {
        Ok(mut signals) => signals.recv().await,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, listened to from creation on: a signal that arrives between two
/// [`recv`](Self::recv) calls is kept for the next one, so "Ctrl-C again to exit at once" holds
/// however soon the second Ctrl-C comes.
#[derive(Debug)]
pub struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(not(unix))]
    ctrl_c: tokio::signal::windows::CtrlC,
}

impl ShutdownSignals {
    /// Starts listening. Fails if the process cannot install the signal handlers.
    pub fn new() -> std::io::Result<ShutdownSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(ShutdownSignals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(ShutdownSignals {
                ctrl_c: tokio::signal::windows::ctrl_c()?,
            })
        }
    }

    /// Resolves on the next signal, or at once for one received since the last call.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = self.ctrl_c.recv().await;
        }
    }
}
