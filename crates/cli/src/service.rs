//! What every long-running command (`emulate`, `proxy`, `agent run`) shares, and only
//! the binary does: the log set-up, the async runtime, the stop signals, and the
//! duration syntax of the flags.

use std::time::Duration;

/// Log line format (standard error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// The log writer thread's handles, once logging is set up.
struct LogQueue {
    log: crate::log_writer::BufferedLog,
    format: LogFormat,
    /// Taken by [`flush_logs`]: writes out what is buffered and stops the thread.
    stop: std::sync::Mutex<Option<crate::log_writer::WriterStop>>,
}

static LOG_QUEUE: std::sync::OnceLock<LogQueue> = std::sync::OnceLock::new();

/// Installs the process's one log subscriber: `RUST_LOG` (default `info`) to standard
/// error, as text or JSON lines.
///
/// A line is formatted where it is logged and appended to a bounded buffer; a thread
/// of its own writes the buffer to standard error every 20 ms in one `write`
/// ([`crate::log_writer`]). A request never makes a system call for its log line and
/// never waits for standard error (a slow file, a full pipe, a terminal); when the
/// buffer is full the line is dropped and counted ([`dropped_log_lines`], the proxy's
/// `imdsguard_log_dropped_lines_total`). A server command calls [`flush_logs`] when it
/// ends.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let Ok((log, stop)) = crate::log_writer::start(std::io::stderr()) else {
        // No thread: write each line directly.
        let builder = builder.with_writer(std::io::stderr);
        let _ = match format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().try_init(),
        };
        return;
    };
    let builder = builder.with_writer(log.clone());
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if installed.is_ok() {
        let _ = LOG_QUEUE.set(LogQueue {
            log,
            format,
            stop: std::sync::Mutex::new(Some(stop)),
        });
    } else {
        stop.stop(Duration::from_secs(1));
    }
}

/// Writes out the buffered log lines and stops the writer thread (waiting a second at
/// most); later lines are not written. A server command calls it last, when its server
/// has stopped.
pub fn flush_logs() {
    if let Some(queue) = LOG_QUEUE.get() {
        let stop = queue
            .stop
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(stop) = stop {
            stop.stop(Duration::from_secs(1));
        }
    }
}

/// The log buffer, when logging is set up with JSON lines: a writer of records that
/// formats its own JSON lines (the proxy's decision records) appends them here, beside
/// the subscriber's, one `write` a line.
pub fn json_log_buffer() -> Option<crate::log_writer::BufferedLog> {
    LOG_QUEUE
        .get()
        .filter(|q| q.format == LogFormat::Json)
        .map(|q| q.log.clone())
}

/// Log lines dropped so far because the log buffer was full (0 before
/// [`init_logging`]).
pub fn dropped_log_lines() -> u64 {
    LOG_QUEUE.get().map_or(0, |q| q.log.dropped())
}

/// The runtime of a server command: one worker thread per core, or
/// `TOKIO_WORKER_THREADS` when set (tokio reads it), IO and timers.
pub fn server_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// Which stop signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

/// SIGINT and SIGTERM, handled from the moment this is made (before a server starts,
/// so that a signal during start-up stops it cleanly instead of killing it). Needs a
/// runtime with IO.
pub struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers.
    pub fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        let io = |e| anyhow::anyhow!("cannot handle signals: {e}");
        Ok(StopSignals {
            int: signal(SignalKind::interrupt()).map_err(io)?,
            term: signal(SignalKind::terminate()).map_err(io)?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.int.recv() => Stop::Interrupt,
            _ = self.term.recv() => Stop::Terminate,
        }
    }
}

/// Sends a message on `reload_now` for every SIGHUP (a reload request), from a task of
/// its own; does nothing when SIGHUP cannot be handled. Needs a runtime with IO.
pub fn forward_hangups(reload_now: tokio::sync::mpsc::UnboundedSender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("SIGHUP cannot be handled: files are reloaded when they change only");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if reload_now.send(()).is_err() {
                break;
            }
        }
    });
}

/// The one duration syntax of every flag: humantime's (`500ms`, `2s`, `1.5s`, `1m30s`,
/// `1h`), or a bare number of seconds (`2`, `0.5`); at most one day.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let d = match t.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            Duration::try_from_secs_f64(secs).map_err(|_| format!("`{text}` is out of range"))?
        }
        Ok(_) => return Err(format!("`{text}` is not a duration above or at 0")),
        Err(_) => humantime::parse_duration(t)
            .map_err(|e| format!("`{text}` is not a duration ({e}; e.g. 500ms, 2s, 1.5s, 1m)"))?,
    };
    if d > Duration::from_secs(86_400) {
        return Err(format!("`{text}` is out of range (at most 1 day)"));
    }
    Ok(d)
}

/// [`parse_duration`], above 0.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("`{text}`: expected a duration above 0")),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_have_one_syntax() {
        for (text, want) in [
            ("500ms", Duration::from_millis(500)),
            ("1.5s", Duration::from_millis(1500)),
            ("2s", Duration::from_secs(2)),
            ("2", Duration::from_secs(2)),
            ("0.25", Duration::from_millis(250)),
            ("1m", Duration::from_secs(60)),
            ("1m30s", Duration::from_secs(90)),
            (" 3s ", Duration::from_secs(3)),
            ("0", Duration::ZERO),
            ("1d", Duration::from_secs(86_400)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "soon",
            "-1",
            "-1s",
            "NaN",
            "inf",
            "2 parsecs",
            "25h",
            "1e300",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_positive_duration("0").is_err());
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(
            parse_positive_duration("250ms"),
            Ok(Duration::from_millis(250))
        );
    }
}
