//! Hostile input through the binary: what each case does (also in docs/hostile-input.md).
//!
//! | input                                   | behaviour                                                                 |
//! |-----------------------------------------|---------------------------------------------------------------------------|
//! | a line with invalid UTF-8               | that line fails ("invalid UTF-8 at byte N"), the others go on; exit 1     |
//! | a line with a NUL byte                  | that line fails ("input contains a NUL byte"); exit 1                     |
//! | an empty or blank line                  | that line fails ("empty input"); exit 1                                   |
//! | empty stdin                             | no output at all; exit 0                                                  |
//! | CRLF line ends                          | the CR is dropped: same embedding as with LF                              |
//! | a 1 MB line                             | embedded from its first max_length tokens, with a truncation warning;     |
//! |                                         | about as fast as a short line (only a prefix is tokenized); exit 0       |
//! | a line over 16 MiB (here 40 MB)         | only its first 16 MiB are kept (the rest is read and dropped), so memory |
//! |                                         | stays bounded; embedded from its first tokens; exit 0                    |
//! | stdout closed early (`\| head -1`)      | quiet stop, exit 0 (tests/cli.rs)                                         |
//! | no such bundle directory, or a file     | "no such bundle directory" / "is not a bundle directory"; exit 2          |
//! | compress into a read-only directory     | fails before any training, naming the directory; exit 3; nothing left    |
//! | compress below a path that is a file    | fails before any training, naming it; exit 3                              |
//! | compress over a directory that is not a | refused, naming the first foreign file; exit 2; the directory is intact  |
//! | bundle (`--out ~`)                      |                                                                           |
//! | compress onto a full disk               | fails naming the bundle file that did not fit ("No space left on         |
//! |                                         | device"); exit 3; no partial bundle, no staging directory; an existing   |
//! |                                         | bundle there is left as it was                                            |
//!
//! The read-only and full-disk cases mount a small tmpfs (tests run as root, and root
//! ignores permission bits, so `chmod 555` proves nothing); where `mount` is not
//! permitted they are skipped with a printed reason.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{embslim, head_bundle, run_with_input, HEADLINES};

/// Run `cmd` with `stdin`; returns (exit code, stdout, stderr, wall time, peak RSS in KiB
/// of the child itself, from wait4).
fn run_measured(mut cmd: Command, stdin: Vec<u8>) -> (Option<i32>, Vec<u8>, String, Duration, i64) {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).unwrap();
        v
    });
    let mut err = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `child` is never waited on again (its drop does not wait).
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4");
    let elapsed = start.elapsed();
    writer.join().unwrap();
    let code = if libc::WIFEXITED(status) { Some(libc::WEXITSTATUS(status)) } else { None };
    (code, reader.join().unwrap(), err_reader.join().unwrap(), elapsed, usage.ru_maxrss)
}

fn embed_cmd() -> Command {
    let mut c = embslim();
    c.arg("embed").arg(head_bundle());
    c
}

fn lines(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out).lines().map(str::to_string).collect()
}

#[test]
fn bad_lines_fail_alone_and_the_rest_go_on() {
    let mut input = Vec::new();
    input.extend_from_slice(b"tea\0with milk\n"); // line 1: NUL
    input.extend_from_slice(format!("{}\r\n", HEADLINES[0]).as_bytes()); // line 2: CRLF
    input.extend_from_slice(b"caf\xc3\n"); // line 3: truncated UTF-8 sequence
    input.extend_from_slice(b"   \t \n"); // line 4: blank
    input.extend_from_slice(format!("{}\n", HEADLINES[0]).as_bytes()); // line 5
    let out = run_with_input(embed_cmd(), &input);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let got = lines(&out.stdout);
    assert_eq!(got.len(), 2, "embeddings of lines 2 and 5 only");
    assert_eq!(got[0], got[1], "CRLF and LF give the same embedding");
    for needle in ["line 1: input contains a NUL byte", "line 3: invalid UTF-8 at byte 3", "line 4: empty input"] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(!err.contains("panicked"));
}

#[test]
fn empty_stdin_prints_nothing_and_succeeds() {
    let out = run_with_input(embed_cmd(), b"");
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn only_empty_lines_are_each_an_error() {
    let mut cmd = embed_cmd();
    cmd.arg("--json");
    let out = run_with_input(cmd, b"\n\n  \n");
    assert_eq!(out.status.code(), Some(1));
    let got: Vec<serde_json::Value> = lines(&out.stdout).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(got.len(), 3);
    for (i, v) in got.iter().enumerate() {
        assert_eq!(v["line"], i + 1);
        assert_eq!(v["error"], "empty input");
    }
}

/// Words of real headlines, `n` bytes of them on one line.
fn long_line(n: usize) -> Vec<u8> {
    let words: Vec<&str> = HEADLINES.iter().flat_map(|h| h.split(' ')).collect();
    let mut s = String::with_capacity(n + 16);
    let mut i = 0;
    while s.len() < n {
        s.push_str(words[i % words.len()]);
        s.push(' ');
        i += 7;
    }
    s.truncate(n);
    s.into_bytes()
}

#[test]
fn a_1_mb_line_is_embedded_from_its_first_tokens_quickly() {
    let short = format!("{}\n", HEADLINES[2]).into_bytes();
    let (code, _, _, t_short, rss_short) = run_measured(embed_cmd(), short);
    assert_eq!(code, Some(0));

    let mut line = long_line(1 << 20);
    // its first 4 KB hold far more than 128 tokens: the embedding must be that of the prefix
    let prefix_end = line[..4096].iter().rposition(|b| *b == b' ').unwrap();
    let mut prefix = line[..prefix_end].to_vec();
    prefix.push(b'\n');
    line.push(b'\n');
    let (code, out, err, t_long, rss_long) = run_measured(embed_cmd(), line);
    eprintln!("short line: {t_short:?}, {rss_short} KiB; 1 MiB line: {t_long:?}, {rss_long} KiB");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("line 1: input truncated to 128 tokens"), "{err}");
    let (_, want, _, _, _) = run_measured(embed_cmd(), prefix);
    assert_eq!(out, want, "the 1 MiB line embeds as its first 128 tokens");
    assert!(t_long < t_short * 3 + Duration::from_secs(1), "1 MiB line took {t_long:?} (short line {t_short:?})");
    assert!(rss_long < rss_short + 64 * 1024, "1 MiB line peaked at {rss_long} KiB (short line {rss_short} KiB)");
}

#[test]
fn a_line_over_the_limit_is_cut_and_memory_stays_bounded() {
    let (code, _, _, t_short, rss_short) = run_measured(embed_cmd(), format!("{}\n", HEADLINES[1]).into_bytes());
    assert_eq!(code, Some(0));
    // 40 MB on one line, then a normal line: both are embedded, in order
    let mut input = long_line(40 << 20);
    input.push(b'\n');
    input.extend_from_slice(format!("{}\n", HEADLINES[1]).as_bytes());
    let (code, out, err, t, rss) = run_measured(embed_cmd(), input);
    eprintln!("short line: {t_short:?}, {rss_short} KiB; 40 MB line: {t:?}, {rss} KiB");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines(&out).len(), 2);
    let (_, single, _, _, _) = run_measured(embed_cmd(), format!("{}\n", HEADLINES[1]).into_bytes());
    assert_eq!(lines(&out)[1], lines(&single)[0], "the line after the long one is intact");
    // 16 MiB kept + pipe buffers; the other 24 MB are never stored
    assert!(rss < rss_short + 48 * 1024, "40 MB line peaked at {rss} KiB (short line {rss_short} KiB)");
    assert!(t < t_short * 3 + Duration::from_secs(3), "40 MB line took {t:?}");
}

/// Prefix tokenization is exact: a long text truncated to max_length gives the tokens the
/// whole text gives, on real text, text that starts with a long run of whitespace, one
/// huge word, CJK, and punctuation soup.
#[test]
fn long_texts_truncate_exactly_as_the_whole_text_would() {
    use embslim::tokenize::Tokenizer;
    let path = common::minilm().join("tokenizer.json");
    let full = Tokenizer::from_file(&path, None).unwrap();
    let words = String::from_utf8(long_line(200_000)).unwrap();
    let texts = [
        words.clone(),
        format!("{}{}", " ".repeat(300_000), words),
        format!("{}{}", "\n\t ".repeat(3000), &words[..5000]),
        "a".repeat(500_000),
        format!("{} tail", "x".repeat(20_000)),
        "東京は日本の首都です。".repeat(5000),
        "(!?),.;:-".repeat(20_000),
        format!("{} café naïve {}", &words[..3000], &words[..3000]),
    ];
    let whole: Vec<_> = texts.iter().map(|t| full.encode(t)).collect();
    for max in [8usize, 128, 512] {
        let tok = Tokenizer::from_file(&path, Some(max)).unwrap();
        for (i, (t, all)) in texts.iter().zip(&whole).enumerate() {
            let got = tok.encode(t);
            let n = got.ids.len();
            assert_eq!(got.truncated, all.ids.len() > max, "text {i}, max {max}");
            assert!(n <= max);
            // the kept tokens are the first ones of the whole text, then [SEP]
            assert_eq!(got.ids[..n - 1], all.ids[..n - 1], "text {i}, max {max}");
            assert_eq!(got.ids[n - 1], *all.ids.last().unwrap(), "text {i}, max {max}");
            assert_eq!(got.type_ids.len(), n);
        }
    }
}

#[test]
fn a_missing_bundle_is_a_usage_error() {
    let out = embslim().arg("embed").arg("/nonexistent/bundle").arg("hello").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/bundle: no such bundle directory"));
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let out = embslim().arg("embed").arg(&file).arg("hello").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("file: is not a bundle directory"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A tmpfs mounted at a fresh temporary directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// None (with the reason printed) where mounting is not permitted.
    fn mount(options: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(dir.path()).output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!("skipped: cannot mount a tmpfs ({options}): {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[cfg(feature = "train")]
fn compress_into(out: &Path) -> std::process::Output {
    embslim()
        .args(["compress", "--model"])
        .arg(common::tiny_bert(32))
        .arg("--out")
        .arg(out)
        .args(["--method", "int4", "--corpus", "/nonexistent"])
        .output()
        .unwrap()
}

/// Everything in `dir`, hidden entries included, sorted.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[cfg(feature = "train")]
#[test]
fn compress_into_a_read_only_directory_fails_before_training() {
    // root ignores permission bits: a read-only mount is what refuses root
    let Some(fs) = Tmpfs::mount("ro,size=1m") else { return };
    let out = compress_into(&fs.path().join("bundle"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&fs.path().display().to_string()) && err.contains("Read-only file system"), "{err}");
    // the up-front probe failed (a failure at write time would name a bundle file)
    assert!(!err.contains(".safetensors") && !err.contains("staging") && out.stdout.is_empty(), "{err}");
    assert!(!err.contains("panicked"));
    assert_eq!(entries(fs.path()), Vec::<PathBuf>::new());
}

#[cfg(feature = "train")]
#[test]
fn compress_below_a_file_fails_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let out = compress_into(&file.join("bundle"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("plain-file") && !err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

#[cfg(feature = "train")]
#[test]
fn compress_refuses_to_replace_a_directory_that_is_not_a_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(home.join("notes.txt"), b"precious").unwrap();
    std::fs::write(home.join("manifest.json"), b"{}").unwrap();
    let out = compress_into(&home);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("holds notes.txt, which is not part of a bundle; refusing to replace it"), "{err}");
    assert_eq!(std::fs::read(home.join("notes.txt")).unwrap(), b"precious");
    // a plain file in the way is refused too, and kept
    let file = tmp.path().join("file");
    std::fs::write(&file, b"data").unwrap();
    let out = compress_into(&file);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
}

#[cfg(feature = "train")]
#[test]
fn compress_onto_a_full_disk_fails_and_leaves_nothing_half_written() {
    // a bundle of the tiny model is about 1.05 MiB: 512 KiB cannot hold it
    let Some(fs) = Tmpfs::mount("size=512k") else { return };
    let out = compress_into(&fs.path().join("bundle"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("No space left on device") && err.contains(&fs.path().join("bundle").display().to_string()), "{err}");
    assert!(!err.contains("panicked"));
    assert_eq!(entries(fs.path()), Vec::<PathBuf>::new(), "no partial bundle, no staging directory");

    // 1.6 MiB holds one bundle but not a second one beside it: the old one stays intact
    let Some(fs) = Tmpfs::mount("size=1600k") else { return };
    let bundle = fs.path().join("bundle");
    let first = compress_into(&bundle);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let before: Vec<(PathBuf, Vec<u8>)> = entries(&bundle).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    let out = compress_into(&bundle);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    let after: Vec<(PathBuf, Vec<u8>)> = entries(&bundle).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    assert!(before == after, "the old bundle changed");
    assert_eq!(entries(fs.path()), vec![bundle.clone()], "no staging directory left");
    embslim::Bundle::open(&bundle, &embslim::OpenOptions::default()).unwrap();
}
