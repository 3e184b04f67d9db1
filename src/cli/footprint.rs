//! `embslim footprint`: what a bundle costs on this device.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use embslim::footprint::{self, Percentiles};
use embslim::tokenize::Encoded;
use serde::Serialize;

use super::embed::RunArgs;

#[derive(clap::Args)]
pub struct Args {
    pub bundle: PathBuf,
    /// Texts to run, one per line (default: BBC News from models/bbc-news when present,
    /// else a built-in set of news sentences).
    #[arg(long)]
    pub texts: Option<PathBuf>,
    /// Timed runs per sequence length (after 3 warm-up runs).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Sequence lengths (tokens, special tokens included) to time at batch 1.
    #[arg(long, value_delimiter = ',', default_value = "16,64,128")]
    pub lengths: Vec<usize>,
    /// Documents classified (or embedded, without a head) for the memory figures.
    #[arg(long, default_value_t = 100)]
    pub docs: usize,
    /// Also time every tract op at the longest sequence length (ms per run by op).
    #[arg(long)]
    pub profile: bool,
    #[command(flatten)]
    pub run: RunArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    bundle_bytes: u64,
    files: BTreeMap<String, u64>,
    binary_bytes: Option<u64>,
    /// Resident bytes of the binary's own pages at the end of the run (/proc/self/smaps).
    binary_resident_bytes: Option<u64>,
    load_ms: f64,
    first_result_ms: f64,
    peak_heap_bytes: usize,
    /// Peak heap when each stage ended, in order (load, first_result, documents, latency,
    /// throughput): where the peak is reached.
    peak_heap_by_stage: Vec<(&'static str, usize)>,
    /// Heap held once the bundle is loaded (the body's weights and plan).
    heap_after_load_bytes: usize,
    peak_rss_bytes: Option<u64>,
    /// VmHWM when each stage ended: `documents` is the peak of loading and classifying
    /// one document at a time, before the batched throughput stage.
    peak_rss_by_stage: Vec<(&'static str, Option<u64>)>,
    rss_bytes: Option<u64>,
    factor_file_bytes: usize,
    factor_resident_bytes: Option<usize>,
    docs: usize,
    classified: bool,
    threads: usize,
    latency_ms: BTreeMap<usize, Percentiles>,
    /// Time to decode one token's row from the mapped factor file (the embed stage alone,
    /// rows already resident): what the table's storage costs next to the transformer.
    decode_ns_per_token: f64,
    throughput_docs_per_s: f64,
    /// With --profile: where a body run at the longest length spends its time.
    profile: Option<Profile>,
}

#[derive(Serialize)]
struct Profile {
    seq: usize,
    runs: usize,
    /// Mean milliseconds per run by tract op name, slowest first.
    ms_by_op: Vec<(String, f64)>,
}

/// Peak heap and VmHWM when each stage of the run ended.
#[derive(Default)]
struct Stages {
    heap: Vec<(&'static str, usize)>,
    rss: Vec<(&'static str, Option<u64>)>,
}

impl Stages {
    fn end(&mut self, stage: &'static str) {
        self.heap.push((stage, footprint::heap().1));
        self.rss.push((stage, footprint::proc_rss().0));
    }
}

/// Inputs cut to each sequence length for the latency figures.
const LATENCY_INPUTS: usize = 200;

const BUILTIN: [&str; 4] = [
    "Shares in the bank fell sharply on Monday after it reported a drop in annual profits, blaming weaker lending and higher costs, while analysts said the outlook for the rest of the year remained uncertain as interest rates stayed high.",
    "The film won best picture at the awards ceremony on Sunday night, and its director thanked the cast and crew in a speech that was cheered by an audience of actors, producers and musicians from around the world.",
    "The prime minister faces a vote in parliament over the new tax plans, with opposition parties and some members of his own party warning that the changes would hit families on low incomes the hardest.",
    "The striker scored twice in the second half as the champions came from behind to win the cup final, ending a season in which the club also finished top of the league for the third year running.",
];

fn load_texts(path: &Option<PathBuf>) -> anyhow::Result<Vec<String>> {
    if let Some(p) = path {
        let c = embslim::corpus::load(p).with_context(|| format!("reading {}", p.display()))?;
        return Ok(c.docs.into_iter().map(|d| d.text).collect());
    }
    let bbc = PathBuf::from("models/bbc-news");
    if bbc.is_dir() {
        if let Ok(c) = embslim::corpus::load(&bbc) {
            return Ok(c.docs.into_iter().map(|d| d.text).collect());
        }
    }
    // long enough for 128 tokens: repeat the sentences
    Ok(BUILTIN.iter().map(|s| format!("{s} {s} {s}")).collect())
}

/// Cut an encoding to exactly `len` tokens keeping the final special token.
fn cut(e: &Encoded, len: usize) -> Option<Encoded> {
    if e.ids.len() < len || len < 2 {
        return None;
    }
    let mut ids = e.ids[..len - 1].to_vec();
    ids.push(*e.ids.last()?);
    let mut type_ids = e.type_ids[..len - 1].to_vec();
    type_ids.push(*e.type_ids.last()?);
    Some(Encoded { ids, type_ids, truncated: true })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut texts = load_texts(&args.texts)?;
    anyhow::ensure!(!texts.is_empty(), "no texts to run");
    // keep only what the stages below use (documents, latency inputs, throughput sample): the
    // rest of a corpus would sit in the heap and RSS figures as if the bundle needed it
    texts.truncate(args.docs.max(LATENCY_INPUTS));
    texts.shrink_to_fit();
    let t0 = Instant::now();
    let bundle = args.run.open(&args.bundle)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let heap_after_load_bytes = footprint::heap().0;
    let mut stages = Stages::default();
    stages.end("load");
    let classified = bundle.head().is_some();
    if classified {
        bundle.classify_batch(&[&texts[0]])?;
    } else {
        bundle.embed_batch(&[&texts[0]])?;
    }
    let first_result_ms = t0.elapsed().as_secs_f64() * 1e3;
    stages.end("first_result");

    // memory: classify (or embed) the first `docs` documents one at a time
    let n = args.docs.min(texts.len()).max(1);
    for t in texts.iter().cycle().take(n) {
        if classified {
            bundle.classify_batch(&[t])?;
        } else {
            bundle.embed_batch(&[t])?;
        }
    }
    let factor_resident_bytes = bundle.factor_map().resident_bytes();
    stages.end("documents");

    // latency at fixed sequence lengths, batch 1
    let enc: Vec<Encoded> = texts.iter().take(LATENCY_INPUTS).map(|t| bundle.tokenizer().encode(t)).collect();
    let mut latency_ms = BTreeMap::new();
    for &len in &args.lengths {
        let inputs: Vec<Encoded> = enc.iter().filter_map(|e| cut(e, len)).collect();
        if inputs.is_empty() || len > bundle.max_length() {
            eprintln!("note: no input reaches {len} tokens (max length {}); skipped", bundle.max_length());
            continue;
        }
        let mut ms = Vec::with_capacity(args.runs);
        for (i, e) in inputs.iter().cycle().take(args.runs + 3).enumerate() {
            let t = Instant::now();
            bundle.embed_encoded(std::slice::from_ref(e))?;
            if i >= 3 {
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        latency_ms.insert(len, footprint::percentiles(&mut ms));
    }
    // per-op times at the longest length, on the inputs the latency runs used
    let mut profile = None;
    if let Some(&len) = args.profile.then(|| latency_ms.keys().last()).flatten() {
        let inputs: Vec<Encoded> = enc.iter().filter_map(|e| cut(e, len)).take(args.runs.max(1)).collect();
        let mut total: BTreeMap<String, f64> = BTreeMap::new();
        for e in &inputs {
            for (op, ms) in bundle.profile_encoded(std::slice::from_ref(e))? {
                *total.entry(op).or_default() += ms / inputs.len() as f64;
            }
        }
        let mut ops: Vec<(String, f64)> = total.into_iter().collect();
        ops.sort_by(|a, b| b.1.total_cmp(&a.1));
        profile = Some(Profile { seq: len, runs: inputs.len(), ms_by_op: ops });
    }
    stages.end("latency");

    // the embed stage alone: decode the rows of every token of those inputs, a few times
    let factors = bundle.factors()?;
    let ids: Vec<u32> = enc.iter().flat_map(|e| e.ids.iter().copied()).collect();
    let mut rows = vec![0f32; ids.len() * bundle.manifest.dim];
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        embslim::embed::decode_tokens(&factors, &ids, &mut rows)?;
    }
    let decode_ns_per_token = t.elapsed().as_secs_f64() * 1e9 / (reps * ids.len().max(1)) as f64;

    // throughput: documents at the bundle's max length, batches of 8 on all worker threads
    let sample: Vec<&str> = texts.iter().take(64).map(String::as_str).collect();
    let t = Instant::now();
    bundle.embed_many(&sample, 8, |_| {})?;
    let throughput_docs_per_s = sample.len() as f64 / t.elapsed().as_secs_f64();
    stages.end("throughput");

    let (peak_rss_bytes, rss_bytes) = footprint::proc_rss();
    let files: BTreeMap<String, u64> = bundle.manifest.files.iter().map(|(k, v)| (k.clone(), v.bytes)).collect();
    let manifest_bytes = std::fs::metadata(args.bundle.join(embslim::manifest::MANIFEST_FILE)).map(|m| m.len()).unwrap_or(0);
    let report = Report {
        bundle_bytes: files.values().sum::<u64>() + manifest_bytes,
        files,
        binary_bytes: std::env::current_exe().ok().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len()),
        binary_resident_bytes: footprint::binary_resident(),
        load_ms,
        first_result_ms,
        peak_heap_bytes: footprint::heap().1,
        peak_heap_by_stage: stages.heap,
        heap_after_load_bytes,
        peak_rss_bytes,
        peak_rss_by_stage: stages.rss,
        rss_bytes,
        factor_file_bytes: bundle.factor_map().bytes().len(),
        factor_resident_bytes,
        docs: n,
        classified,
        threads: args.run.threads,
        latency_ms,
        decode_ns_per_token,
        throughput_docs_per_s,
        profile,
    };
    if args.json {
        super::output::json_line(&report)?;
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn mb(b: u64) -> String {
    format!("{:.2} MB", b as f64 / 1e6)
}

fn print_table(r: &Report) {
    let opt = |v: Option<u64>| v.map(mb).unwrap_or_else(|| "n/a".into());
    println!("bundle            {}", mb(r.bundle_bytes));
    for (k, v) in &r.files {
        println!("  {k:<20}{}", mb(*v));
    }
    println!("binary            {} ({} resident)", opt(r.binary_bytes), opt(r.binary_resident_bytes));
    println!("load              {:.1} ms (open, map, verify, build the tract plan)", r.load_ms);
    println!("first result      {:.1} ms", r.first_result_ms);
    println!("peak heap         {}", mb(r.peak_heap_bytes as u64));
    println!("heap after load   {}", mb(r.heap_after_load_bytes as u64));
    let stages: Vec<String> = r.peak_heap_by_stage.iter().map(|(s, b)| format!("{s} {}", mb(*b as u64))).collect();
    println!("  peak by stage   {}", stages.join(", "));
    println!("peak RSS (VmHWM)  {}", opt(r.peak_rss_bytes));
    let stages: Vec<String> = r.peak_rss_by_stage.iter().map(|(s, b)| format!("{s} {}", opt(*b))).collect();
    println!("  peak by stage   {}", stages.join(", "));
    println!("RSS now           {}", opt(r.rss_bytes));
    println!(
        "factor resident   {} of {} after {} {}",
        opt(r.factor_resident_bytes.map(|b| b as u64)),
        mb(r.factor_file_bytes as u64),
        r.docs,
        if r.classified { "classifications" } else { "embeddings" }
    );
    for (len, p) in &r.latency_ms {
        println!("latency seq {len:<4}  p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  ({} runs, {} thread(s))", p.p50, p.p95, p.p99, p.runs, r.threads);
    }
    println!("decode            {:.0} ns per token (embed stage: rows from the factor file)", r.decode_ns_per_token);
    println!("throughput        {:.1} docs/s", r.throughput_docs_per_s);
    if let Some(p) = &r.profile {
        let total: f64 = p.ms_by_op.iter().map(|(_, ms)| ms).sum();
        println!("profile seq {}    {:.2} ms per run over {} runs, by tract op:", p.seq, total, p.runs);
        for (op, ms) in p.ms_by_op.iter().take(8) {
            println!("  {op:<22}{ms:>8.2} ms  {:>5.1} %", 100.0 * ms / total);
        }
    }
}
