//! Input lines for `embed` and `classify`: the TEXT arguments, or stdin read line by line
//! as raw bytes, so one invalid line is reported by number and the rest go on.

use std::io::{BufRead, Write};

/// One input line: its 1-based number and its text, or why it cannot be used.
pub struct Line {
    pub number: usize,
    pub text: Result<String, String>,
}

/// Iterate over the inputs: `texts` if given, else the lines of stdin.
pub fn lines(texts: Vec<String>) -> Box<dyn Iterator<Item = std::io::Result<Line>>> {
    if !texts.is_empty() {
        return Box::new(texts.into_iter().enumerate().map(|(i, t)| Ok(Line { number: i + 1, text: check(t.into_bytes()) })));
    }
    let mut stdin = std::io::stdin().lock();
    let mut number = 0;
    Box::new(std::iter::from_fn(move || match read_line(&mut stdin, MAX_LINE_BYTES) {
        Ok(None) => None,
        Ok(Some((mut buf, cut))) => {
            number += 1;
            if cut {
                // the cut may split a character: drop its first bytes, keep the rest checked
                if let Err(e) = std::str::from_utf8(&buf) {
                    if e.error_len().is_none() {
                        buf.truncate(e.valid_up_to());
                    }
                }
            } else if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            Some(Ok(Line { number, text: check(buf) }))
        }
        Err(e) => Some(Err(e)),
    }))
}

/// Longest part of an input line that is kept, in bytes. The rest of a longer line is
/// read and dropped, never stored, so memory stays bounded whatever comes in; a model
/// reads at most its maximum length in tokens (a few hundred), which 16 MiB of text
/// always exceeds unless it is nearly all whitespace.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Read one line (without its newline), keeping at most `max` bytes of it; None at the
/// end of input. The flag says the line was longer than `max`.
fn read_line(r: &mut impl BufRead, max: usize) -> std::io::Result<Option<(Vec<u8>, bool)>> {
    let (mut buf, mut cut, mut any) = (Vec::new(), false, false);
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(any.then_some((buf, cut)));
        }
        any = true;
        let (take, newline) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        let room = max - buf.len();
        buf.extend_from_slice(&chunk[..take.min(room)]);
        cut |= take > room;
        r.consume(take + usize::from(newline));
        if newline {
            return Ok(Some((buf, cut)));
        }
    }
}

fn check(bytes: Vec<u8>) -> Result<String, String> {
    let s = String::from_utf8(bytes).map_err(|e| format!("invalid UTF-8 at byte {}", e.utf8_error().valid_up_to()))?;
    if s.trim().is_empty() {
        return Err("empty input".into());
    }
    if s.contains('\0') {
        return Err("input contains a NUL byte".into());
    }
    Ok(s)
}

/// Standard output that turns a closed pipe into a quiet stop.
pub struct Out {
    inner: std::io::BufWriter<std::io::Stdout>,
    /// Flush after every line (interactive / streaming use).
    pub line_buffered: bool,
}

/// The reader went away (e.g. `| head`): stop quietly with status 0.
#[derive(Debug, thiserror::Error)]
#[error("broken pipe")]
pub struct BrokenPipe;

impl Out {
    pub fn new() -> Self {
        Out { inner: std::io::BufWriter::new(std::io::stdout()), line_buffered: true }
    }

    pub fn line(&mut self, s: &str) -> anyhow::Result<()> {
        let res = writeln!(self.inner, "{s}").and_then(|_| if self.line_buffered { self.inner.flush() } else { Ok(()) });
        match res {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(BrokenPipe.into()),
            other => Ok(other?),
        }
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        match self.inner.flush() {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(BrokenPipe.into()),
            other => Ok(other?),
        }
    }
}
