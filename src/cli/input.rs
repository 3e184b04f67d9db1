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
    Box::new(std::iter::from_fn(move || {
        let mut buf = Vec::new();
        match stdin.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                number += 1;
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                }
                Some(Ok(Line { number, text: check(buf) }))
            }
            Err(e) => Some(Err(e)),
        }
    }))
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
