//! Reading real text: a folder of .txt files (one document each, found recursively, in
//! sorted order) or a text file with one document per line. Files that are not valid
//! UTF-8 (one BBC News file is Latin-1) are decoded lossily and named in a warning.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// Name of the top-level folder the file sits in (its class in a labelled corpus).
    pub label: Option<String>,
    /// Where it came from: a file path, or `file:line`.
    pub origin: String,
    pub text: String,
}

#[derive(Clone, Debug, Default)]
pub struct Corpus {
    pub docs: Vec<Document>,
    /// Origins of the documents that were not valid UTF-8 and were decoded lossily.
    pub lossy: Vec<String>,
}

impl Corpus {
    /// One line for stderr naming the lossily decoded documents, if any.
    pub fn lossy_warning(&self) -> Option<String> {
        if self.lossy.is_empty() {
            return None;
        }
        let shown: Vec<&str> = self.lossy.iter().take(5).map(String::as_str).collect();
        let more = if self.lossy.len() > 5 { format!(" and {} more", self.lossy.len() - 5) } else { String::new() };
        Some(format!(
            "warning: {} document(s) are not valid UTF-8 and were decoded lossily: {}{more}",
            self.lossy.len(),
            shown.join(", ")
        ))
    }
}

/// Load every document under `path` (folder of .txt files, recursively) or every
/// non-empty line of the text file `path`.
pub fn load(path: &Path) -> Result<Corpus> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mut corpus = Corpus::default();
    if meta.is_dir() {
        let mut files = Vec::new();
        walk(path, &mut files)?;
        files.sort();
        for file in files {
            let bytes = fs::read(&file).map_err(|e| Error::io(&file, e))?;
            let origin = file.display().to_string();
            let text = decode(bytes, &origin, &mut corpus.lossy);
            let label = file
                .strip_prefix(path)
                .ok()
                .and_then(|rel| {
                    let mut comps = rel.components();
                    let first = comps.next()?;
                    comps.next().map(|_| first.as_os_str().to_string_lossy().into_owned())
                });
            corpus.docs.push(Document { label, origin, text });
        }
    } else {
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let origin = format!("{}:{}", path.display(), i + 1);
            let text = decode(line.to_vec(), &origin, &mut corpus.lossy);
            corpus.docs.push(Document { label: None, origin, text });
        }
    }
    if corpus.docs.is_empty() {
        return Err(Error::Corpus { path: path.to_path_buf(), msg: "no documents (expected .txt files or non-empty lines)".into() });
    }
    Ok(corpus)
}

fn decode(bytes: Vec<u8>, origin: &str, lossy: &mut Vec<String>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            lossy.push(origin.to_string());
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let p = entry.path();
        let ft = entry.file_type().map_err(|e| Error::io(&p, e))?;
        if ft.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "txt") {
            out.push(p);
        }
    }
    Ok(())
}

/// A labelled corpus: documents with a class index, and the class names (sorted).
#[derive(Clone, Debug, Default)]
pub struct Labelled {
    pub texts: Vec<String>,
    pub origins: Vec<String>,
    pub classes: Vec<usize>,
    pub labels: Vec<String>,
    pub lossy: Vec<String>,
}

/// Load labelled text: a folder with one sub-folder of .txt files per class, or a
/// TSV/CSV file of `label<TAB>text` (or `label,text`) rows.
pub fn load_labelled(path: &Path) -> Result<Labelled> {
    let err = |msg: String| Error::Corpus { path: path.to_path_buf(), msg };
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mut pairs: Vec<(String, String, String)> = Vec::new(); // label, origin, text
    let mut lossy = Vec::new();
    if meta.is_dir() {
        let mut class_dirs = Vec::new();
        for entry in fs::read_dir(path).map_err(|e| Error::io(path, e))? {
            let entry = entry.map_err(|e| Error::io(path, e))?;
            let p = entry.path();
            if p.is_dir() {
                class_dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "txt") {
                return Err(err(format!("{} is not inside a class folder; put each class's .txt files in a folder named after the class", p.display())));
            }
        }
        class_dirs.sort();
        for dir in class_dirs {
            let docs = match load(&dir) {
                Ok(c) => c,
                Err(Error::Corpus { .. }) => return Err(err(format!("class folder {} has no .txt files; remove it or add documents", dir.display()))),
                Err(e) => return Err(e),
            };
            let label = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            lossy.extend(docs.lossy);
            pairs.extend(docs.docs.into_iter().map(|d| (label.clone(), d.origin, d.text)));
        }
    } else {
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        let tsv = path.extension().is_some_and(|e| e == "tsv") || bytes.contains(&b'\t');
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let origin = format!("{}:{}", path.display(), i + 1);
            let sep = if tsv { b'\t' } else { b',' };
            let Some(cut) = line.iter().position(|b| *b == sep) else {
                return Err(err(format!("line {}: expected label{}text", i + 1, if tsv { "<TAB>" } else { "," })));
            };
            let label = decode(line[..cut].to_vec(), &origin, &mut lossy).trim().to_string();
            if label.is_empty() {
                return Err(err(format!("line {}: the label is empty", i + 1)));
            }
            let text = decode(line[cut + 1..].to_vec(), &origin, &mut lossy);
            pairs.push((label, origin, text));
        }
    }
    let mut labels: Vec<String> = pairs.iter().map(|p| p.0.clone()).collect();
    labels.sort();
    labels.dedup();
    if labels.len() < 2 {
        return Err(err(format!("found {} class(es); a classifier needs at least two", labels.len())));
    }
    let mut out = Labelled { labels, lossy, ..Default::default() };
    for (label, origin, text) in pairs {
        out.classes.push(out.labels.binary_search(&label).expect("label was collected above"));
        out.origins.push(origin);
        out.texts.push(text);
    }
    Ok(out)
}
