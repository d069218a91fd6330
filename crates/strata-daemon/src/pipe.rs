//! A layer tar written on one thread and imported on another through a
//! pipe, where the import sees the end of the stream only once the writer
//! has finished well: a writer that fails partway (a file gone, an I/O
//! error) makes the import's read fail, so no truncated layer — which may
//! still read as a well-formed tar, cut at a member boundary — is ever
//! committed.

use std::io::{BufWriter, PipeReader, PipeWriter, Read};
use std::sync::mpsc;

/// The reading end: the pipe's bytes, then the writer's outcome at EOF.
pub struct CheckedReader {
    pipe: PipeReader,
    outcome: mpsc::Receiver<Result<(), String>>,
    finished: bool,
}

impl Read for CheckedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.finished {
            // EOF: the writer closed its end; it says how.
            match self.outcome.recv() {
                Ok(Ok(())) => self.finished = true,
                Ok(Err(e)) => return Err(std::io::Error::other(e)),
                Err(_) => return Err(std::io::Error::other("the layer writer stopped without a word")),
            }
        }
        Ok(n)
    }
}

/// Why [`through_pipe`] failed.
#[derive(Debug, PartialEq, Eq)]
pub enum PipeError<E> {
    /// The writer failed (or the pipe could not be made): the reader's own
    /// error, if any, followed from it.
    Writer(String),
    /// The reader failed with the whole stream written.
    Reader(E),
}

impl<E: std::fmt::Display> std::fmt::Display for PipeError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PipeError::Writer(e) => f.write_str(e),
            PipeError::Reader(e) => e.fmt(f),
        }
    }
}

/// Runs `write` on a thread into a pipe and `read` on this one from its
/// other end ([`CheckedReader`]). Returns `read`'s result.
///
/// Errors: [`PipeError::Writer`] when the pipe cannot be made or `write`
/// failed (whatever `read` then saw); [`PipeError::Reader`] otherwise.
pub fn through_pipe<T, E>(
    write: impl FnOnce(BufWriter<PipeWriter>) -> Result<(), String> + Send,
    read: impl FnOnce(CheckedReader) -> Result<T, E>,
) -> Result<T, PipeError<E>> {
    let (pipe, pipe_in) = std::io::pipe().map_err(|e| PipeError::Writer(format!("making a pipe: {e}")))?;
    let (tx, outcome) = mpsc::sync_channel(1);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || {
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(BufWriter::new(pipe_in))))
                    .unwrap_or_else(|_| Err("the layer writer panicked".to_owned()));
            let _ = tx.send(result.clone());
            result
        });
        let result = read(CheckedReader { pipe, outcome, finished: false });
        match writer.join() {
            Ok(Err(e)) => Err(PipeError::Writer(e)),
            Ok(Ok(())) => result.map_err(PipeError::Reader),
            Err(_) => Err(PipeError::Writer("the layer writer panicked".to_owned())),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(mut r: CheckedReader) -> Result<Vec<u8>, std::io::Error> {
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn the_reader_sees_the_end_only_after_a_good_writer() {
        let got = through_pipe(
            |mut w| {
                w.write_all(b"whole").map_err(|e| e.to_string())?;
                w.flush().map_err(|e| e.to_string())
            },
            read_all,
        );
        assert_eq!(got.map_err(|e| e.to_string()), Ok(b"whole".to_vec()));
    }

    #[test]
    fn a_writer_failing_partway_fails_the_reader_at_eof() {
        let seen = std::sync::Mutex::new(None);
        let got = through_pipe(
            |mut w| {
                w.write_all(b"part").map_err(|e| e.to_string())?;
                w.flush().map_err(|e| e.to_string())?;
                Err("a file vanished".to_owned())
            },
            |r| {
                let read = read_all(r);
                *seen.lock().expect("lock") = Some(read.is_err());
                read
            },
        );
        assert!(matches!(got, Err(PipeError::Writer(ref e)) if e == "a file vanished"), "{got:?}");
        assert_eq!(*seen.lock().expect("lock"), Some(true), "the reader saw an error, not a clean end");
    }
}
