//! The log's writer: log lines are appended to a bounded in-memory buffer (a copy under
//! a lock held for that copy) and a thread of its own writes the buffer to standard
//! error every [`WRITE_INTERVAL`] in one `write`. A request never makes a system call
//! for its log line, never wakes another thread, and never waits for standard error
//! (a slow file, a full pipe, a terminal): when the buffer holds [`BUFFER_LIMIT`]
//! bytes, further lines are dropped and counted until the thread has written it.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the writer thread writes what was logged.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(20);
/// Most bytes waiting to be written (about 50,000 decision records).
pub const BUFFER_LIMIT: usize = 16 * 1024 * 1024;

struct Shared {
    buffer: Mutex<Vec<u8>>,
    dropped: AtomicU64,
}

/// A `MakeWriter` for tracing-subscriber: every log line (one `write_all` per event)
/// goes into the buffer whole, or is dropped whole.
#[derive(Clone)]
pub struct BufferedLog {
    shared: Arc<Shared>,
}

impl Write for BufferedLog {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.append(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedLog {
    type Writer = BufferedLog;

    fn make_writer(&'a self) -> BufferedLog {
        self.clone()
    }
}

impl BufferedLog {
    /// Appends `line` whole, or drops and counts it when the buffer is full.
    pub fn append(&self, line: &[u8]) {
        let mut buffer = self
            .shared
            .buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buffer.len() + line.len() > BUFFER_LIMIT {
            drop(buffer);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            buffer.extend_from_slice(line);
        }
    }

    /// Lines dropped so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// Ends the writer thread: what is buffered is written first.
pub struct WriterStop {
    stop: mpsc::Sender<()>,
    done: mpsc::Receiver<()>,
}

impl WriterStop {
    /// Asks the thread to write what is buffered and end, and waits for it (`wait` at
    /// most: a stuck standard error does not hold up the caller).
    pub fn stop(self, wait: Duration) {
        let _ = self.stop.send(());
        let _ = self.done.recv_timeout(wait);
    }
}

/// Starts the writer thread over `out`.
pub fn start(out: impl Write + Send + 'static) -> std::io::Result<(BufferedLog, WriterStop)> {
    let shared = Arc::new(Shared {
        buffer: Mutex::new(Vec::with_capacity(64 * 1024)),
        dropped: AtomicU64::new(0),
    });
    let (stop, stopped) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    let thread_shared = shared.clone();
    std::thread::Builder::new()
        .name("imdsguard-log".into())
        .spawn(move || {
            let mut out = out;
            let mut spare = Vec::with_capacity(64 * 1024);
            loop {
                let last = !matches!(
                    stopped.recv_timeout(WRITE_INTERVAL),
                    Err(mpsc::RecvTimeoutError::Timeout)
                );
                {
                    let mut buffer = thread_shared
                        .buffer
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    std::mem::swap(&mut *buffer, &mut spare);
                }
                if !spare.is_empty() {
                    let _ = out.write_all(&spare);
                    let _ = out.flush();
                    spare.clear();
                }
                if last {
                    let _ = done_tx.send(());
                    return;
                }
            }
        })?;
    Ok((BufferedLog { shared }, WriterStop { stop, done }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_in_batches_and_all_at_stop() {
        let sink = Sink::default();
        let (mut log, stop) = start(sink.clone()).unwrap();
        for i in 0..1000 {
            log.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        stop.stop(Duration::from_secs(5));
        let writes = sink.0.lock().unwrap().clone();
        let text: Vec<u8> = writes.concat();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert_eq!(text.lines().last(), Some("line 999"));
        assert!(writes.len() < 100, "{} writes for 1000 lines", writes.len());
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn a_stuck_output_drops_and_counts_lines_instead_of_blocking() {
        // An output that never returns from its first write.
        struct Stuck;
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                loop {
                    std::thread::park();
                }
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (mut log, stop) = start(Stuck).unwrap();
        let line = vec![b'x'; 1023];
        let started = std::time::Instant::now();
        for _ in 0..(2 * BUFFER_LIMIT / 1024) {
            log.write_all(&line).unwrap();
            log.write_all(b"\n").unwrap();
        }
        assert!(log.dropped() > 0);
        assert!(started.elapsed() < Duration::from_secs(5));
        let started = std::time::Instant::now();
        stop.stop(Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
