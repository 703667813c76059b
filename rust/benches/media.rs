//! Media probe benchmark: bytes in memory -> (type, width, height, BlurHash 4x3) with [`probe`], on the
//! image files named on the command line.
//!
//! Run by `scripts/bench_media.sh` (through `make bench`), which compares it with peers. For each file it
//! prints one JSON line: the median and minimum wall time of [`probe`] over repeated runs, the peak bytes
//! allocated on the heap during one probe (counted by a global allocator; the input bytes are not
//! counted), the growth of the process's peak RSS over the first probe, the mean CPU time per probe
//! (user + system, all threads: less disturbed by other load than wall time) and the result.
//!
//! `cargo bench --bench media -- FILE...`; `BENCH_SECONDS` sets the time spent per file (default 2).

mod counting;

use counting::{Counting, LIVE, PEAK};
use prosody_native::media::probe::{probe, ProbeLimits};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A field of `/proc/self/status` in KiB (`VmHWM`, `VmRSS`), or 0 where there is none.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// User + system CPU time of the process so far, in milliseconds (clock ticks of 10 ms).
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which ends with the last ')': utime and stime are 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) * 10.0
}

/// Resets the process's peak RSS (VmHWM) to its current RSS, so each file's peak is its own.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let limits = ProbeLimits::default();
    // Cargo passes `--bench` to bench targets; anything starting with `-` is not a file.
    for path in std::env::args().skip(1).filter(|a| !a.starts_with('-')) {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{path}: {e}");
                std::process::exit(1);
            }
        };
        reset_peak_rss();
        let rss_before = status_kib("VmRSS:");
        let live_before = LIVE.load(Ordering::Relaxed);
        PEAK.store(live_before, Ordering::Relaxed);
        let first = probe(&bytes, &limits);
        let peak_alloc = PEAK.load(Ordering::Relaxed).saturating_sub(live_before);
        let rss_growth = status_kib("VmHWM:").saturating_sub(rss_before);
        let info = match first {
            Ok(info) => info,
            Err(e) => {
                eprintln!("{path}: {e}");
                std::process::exit(1);
            }
        };

        let mut times = Vec::new();
        let budget = Duration::from_secs_f64(seconds);
        let start = Instant::now();
        let cpu_start = cpu_ms();
        while times.len() < 5 || (start.elapsed() < budget && times.len() < 1000) {
            let t = Instant::now();
            let result = probe(std::hint::black_box(&bytes), &limits);
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            std::hint::black_box(result).ok();
        }
        let cpu_per_probe = (cpu_ms() - cpu_start) / times.len() as f64;
        times.sort_by(f64::total_cmp);
        let n = times.len();
        let median = if n % 2 == 1 {
            times[n / 2]
        } else {
            (times[n / 2 - 1] + times[n / 2]) / 2.0
        };
        println!(
            "{{\"file\":{},\"median_ms\":{median:.4},\"min_ms\":{:.4},\"cpu_ms\":{cpu_per_probe:.4},\"runs\":{},\"peak_alloc_bytes\":{peak_alloc},\
             \"rss_growth_kib\":{rss_growth},\"mime\":{},\"width\":{},\"height\":{},\"blurhash\":{}}}",
            json_str(&path),
            times[0],
            times.len(),
            json_str(&info.mime),
            info.width.map_or("null".into(), |v| v.to_string()),
            info.height.map_or("null".into(), |v| v.to_string()),
            info.blurhash.as_deref().map_or("null".into(), json_str),
        );
    }
}
