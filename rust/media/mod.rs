//! Media metadata for a URL: the cache, then a safe fetch ([`crate::media::fetch`]), then a probe of the bytes
//! ([`crate::media::probe`]) on a CPU thread, all as one job of the worker pool ([`crate::jobs`]).
//!
//! What a URL yields ([`MediaMeta`]): `bytes` (the body's length, or the `Content-Length` of a body too large
//! to download), `type` (from the magic bytes for an image, else from `Content-Type`), and for an image that
//! could be read its `width`, `height` and `blurhash`. A body over the byte limit is not decoded.
//!
//! Resources are bounded: at most [`FETCH_CONCURRENCY`] downloads at once, each holding at most `max_bytes`;
//! decoding runs on [`jobs::cpu_slots`] threads under the probe limits. The HTTP clients, the cache and the
//! download slots belong to the process that created them and are rebuilt after a fork, like the pool.

pub mod cache;
pub mod fetch;
pub mod netguard;
pub mod probe;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::error::Error;
use crate::jobs::{self, Field, Fields, JobId};
use cache::{Cache, Lookup};
use fetch::{FetchLimits, Fetched, Fetcher};
use netguard::Policy;
use probe::ProbeLimits;

/// Most downloads in flight at once; more probes wait for a slot (still within their time limit).
pub const FETCH_CONCURRENCY: usize = 8;

/// Largest cache the caller may ask for, in entries.
pub const MAX_CACHE_ENTRIES: usize = 100_000;

/// Everything one probe runs under, passed in by the caller on every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaLimits {
    /// Download limits.
    pub fetch: FetchLimits,
    /// Decoding limits and BlurHash components.
    pub probe: ProbeLimits,
    /// Which addresses may be connected to.
    pub policy: Policy,
    /// Most cached URLs (0 disables the cache).
    pub cache_size: usize,
    /// How long a cached result is used without asking the server again.
    pub cache_ttl: Duration,
}

impl Default for MediaLimits {
    fn default() -> Self {
        MediaLimits {
            fetch: FetchLimits::default(),
            probe: ProbeLimits::default(),
            policy: Policy::default(),
            cache_size: 256,
            cache_ttl: Duration::from_secs(3600),
        }
    }
}

impl MediaLimits {
    /// Checks that the limits make sense (components 1..=9, time limits between 1 ms and 1 hour, and so on).
    pub fn validate(&self) -> Result<(), Error> {
        self.probe.validate()?;
        let hour = Duration::from_secs(3600);
        for (what, d) in [
            ("connect_timeout", self.fetch.connect_timeout),
            ("timeout", self.fetch.timeout),
        ] {
            if d < Duration::from_millis(1) || d > hour {
                return Err(Error::bad_request(format!(
                    "{what} must be between 0.001 and 3600 seconds"
                )));
            }
        }
        if self.fetch.max_bytes == 0 {
            return Err(Error::bad_request("max_bytes must be positive"));
        }
        if self.fetch.max_redirects > fetch::MAX_REDIRECTS {
            return Err(Error::bad_request(format!(
                "max_redirects must be at most {}",
                fetch::MAX_REDIRECTS
            )));
        }
        if self.cache_size > MAX_CACHE_ENTRIES {
            return Err(Error::bad_request(format!(
                "cache_size must be at most {MAX_CACHE_ENTRIES}"
            )));
        }
        Ok(())
    }

    /// The cache key of `url` under these limits: everything that changes the answer is part of it, the
    /// address policy included, so that a host that may fetch an internal URL never shares its result with
    /// one that may not.
    fn cache_key(&self, url: &str) -> String {
        let allowed: Vec<String> = self.policy.allowed().iter().map(ToString::to_string).collect();
        format!(
            "{url}\n{}x{}\n{} {} {}\n{}",
            self.probe.components_x,
            self.probe.components_y,
            self.fetch.max_bytes,
            self.probe.max_pixels,
            self.probe.max_decode_memory,
            allowed.join(" ")
        )
    }
}

/// What a URL turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaMeta {
    /// Size in bytes, when known.
    pub bytes: Option<u64>,
    /// MIME type (`type/subtype`).
    pub mime: String,
    /// Width in pixels, for an image whose header could be read.
    pub width: Option<u32>,
    /// Height in pixels, likewise.
    pub height: Option<u32>,
    /// BlurHash, for an image whose pixels could be decoded within the limits.
    pub blurhash: Option<String>,
}

impl MediaMeta {
    /// The job result that crosses into Lua: `bytes`, `type`, `width`, `height`, `blurhash` (absent ones
    /// left out) and `cached`.
    pub fn to_fields(&self, cached: bool) -> Fields {
        let mut fields = Vec::with_capacity(6);
        if let Some(bytes) = self.bytes {
            fields.push(("bytes", Field::Int(i64::try_from(bytes).unwrap_or(i64::MAX))));
        }
        fields.push(("type", Field::Str(self.mime.clone())));
        if let Some(w) = self.width {
            fields.push(("width", Field::Int(w.into())));
        }
        if let Some(h) = self.height {
            fields.push(("height", Field::Int(h.into())));
        }
        if let Some(hash) = &self.blurhash {
            fields.push(("blurhash", Field::Str(hash.clone())));
        }
        fields.push(("cached", Field::Bool(cached)));
        fields
    }
}

/// The per-process state of media probing: HTTP clients by policy, the URL cache and the download slots.
struct Media {
    pid: u32,
    fetchers: Mutex<HashMap<(Policy, Duration), Arc<Fetcher>>>,
    cache: Mutex<Cache<MediaMeta>>,
    fetch_slots: Semaphore,
}

/// Locked only from the thread that submits (Prosody's main thread), so a fork cannot leave it locked.
static MEDIA: Mutex<Option<Arc<Media>>> = Mutex::new(None);

fn media() -> Arc<Media> {
    let mut slot = lock(&MEDIA);
    let pid = std::process::id();
    if let Some(media) = slot.as_ref().filter(|m| m.pid == pid) {
        return media.clone();
    }
    // Forked (or first use): a lock of the old state may be held by a thread that no longer exists.
    if let Some(old) = slot.take() {
        std::mem::forget(old);
    }
    let media = Arc::new(Media {
        pid,
        fetchers: Mutex::new(HashMap::new()),
        cache: Mutex::new(Cache::new()),
        fetch_slots: Semaphore::new(FETCH_CONCURRENCY),
    });
    *slot = Some(media.clone());
    media
}

/// A fresh cached result for `url` under `limits`, without starting anything (so a reposted link needs no
/// job at all), or `None`.
pub fn lookup(url: &str, limits: &MediaLimits) -> Option<MediaMeta> {
    let media = media();
    let mut cache = lock(&media.cache);
    match cache.lookup(&limits.cache_key(url), limits.cache_ttl, Instant::now()) {
        Lookup::Fresh(meta) => Some(meta),
        _ => None,
    }
}

/// Starts probing `url` under `limits` as a job; its result is [`MediaMeta::to_fields`] or an error
/// (`blocked`, `fetch-failed`, `timeout`, ...). A malformed URL or limits fail here, before any job.
pub fn submit_probe(url: &str, limits: MediaLimits) -> Result<JobId, Error> {
    fetch::parse_url(url)?;
    limits.validate()?;
    let media = media();
    let url = url.to_owned();
    jobs::submit(async move {
        let (meta, cached) = media.probe(&url, &limits).await?;
        Ok(meta.to_fields(cached))
    })
}

impl Media {
    async fn probe(&self, url: &str, limits: &MediaLimits) -> Result<(MediaMeta, bool), Error> {
        let key = limits.cache_key(url);
        let lookup = lock(&self.cache).lookup(&key, limits.cache_ttl, Instant::now());
        let etag = match lookup {
            Lookup::Fresh(meta) => return Ok((meta, true)),
            Lookup::Stale { etag } => Some(etag),
            Lookup::Miss => None,
        };
        let _slot = self
            .fetch_slots
            .acquire()
            .await
            .map_err(|_| Error::Internal("download slots closed".into()))?;
        let fetcher = self.fetcher(limits)?;
        let mut fetched = fetcher.fetch(url, &limits.fetch, etag.as_deref()).await?;
        if fetched.not_modified {
            if let Some(meta) = lock(&self.cache).refresh(&key, Instant::now()) {
                return Ok((meta, true));
            }
            // Evicted meanwhile: ask again, unconditionally.
            fetched = fetcher.fetch(url, &limits.fetch, None).await?;
            if fetched.not_modified {
                return Err(Error::FetchFailed("HTTP 304 to an unconditional request".into()));
            }
        }
        let etag = fetched.etag.clone();
        let meta = describe(fetched, &limits.probe).await;
        lock(&self.cache).insert(key, meta.clone(), etag, limits.cache_size, Instant::now());
        Ok((meta, false))
    }

    /// The client for this policy and connect limit, built on first use (on a worker thread: it reads the
    /// system's certificates).
    fn fetcher(&self, limits: &MediaLimits) -> Result<Arc<Fetcher>, Error> {
        let key = (limits.policy.clone(), limits.fetch.connect_timeout);
        if let Some(f) = lock(&self.fetchers).get(&key) {
            return Ok(f.clone());
        }
        let fetcher = Arc::new(Fetcher::new(limits.policy.clone(), limits.fetch.connect_timeout)?);
        let mut fetchers = lock(&self.fetchers);
        if fetchers.len() >= 16 {
            fetchers.clear(); // policies come from config: more than a few means churn, not a working set
        }
        Ok(fetchers.entry(key).or_insert(fetcher).clone())
    }
}

/// Turns a fetched answer into metadata, decoding an image on a CPU thread.
async fn describe(fetched: Fetched, limits: &ProbeLimits) -> MediaMeta {
    let declared = fetched
        .content_type
        .unwrap_or_else(|| "application/octet-stream".to_string());
    let Some(body) = fetched.body else {
        // Too large to download: the headers are all there is.
        return MediaMeta {
            bytes: fetched.content_length,
            mime: declared,
            width: None,
            height: None,
            blurhash: None,
        };
    };
    let bytes = Some(body.len() as u64);
    let Some(sniffed) = probe::sniff(&body) else {
        return MediaMeta {
            bytes,
            mime: declared,
            width: None,
            height: None,
            blurhash: None,
        };
    };
    let limits = limits.clone();
    match jobs::blocking(move || probe::probe(&body, &limits)).await {
        Ok(info) => MediaMeta {
            bytes,
            mime: info.mime,
            width: info.width,
            height: info.height,
            blurhash: info.blurhash,
        },
        Err(_) => MediaMeta {
            bytes,
            mime: sniffed.to_string(),
            width: None,
            height: None,
            blurhash: None,
        },
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::fetch::tests::{Answer, TestServer};
    use std::sync::atomic::Ordering;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        let pixels: Vec<u8> = (0..width * height * 3).map(|i| (i * 7 % 251) as u8).collect();
        writer.write_image_data(&pixels).unwrap();
        writer.finish().unwrap();
        out
    }

    fn loopback() -> MediaLimits {
        MediaLimits {
            policy: Policy::parse(&["127.0.0.1/32"]).unwrap(),
            ..MediaLimits::default()
        }
    }

    fn complete(id: JobId) -> Result<Fields, Error> {
        crate::jobs::tests::wait_for(&[id]).remove(0).result
    }

    fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a Field> {
        fields.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    #[test]
    fn probes_an_image_url_and_caches_the_result() {
        let image = png(40, 30);
        let len = image.len() as i64;
        let server = TestServer::start("127.0.0.1", move |_, _| {
            Answer::ok("application/octet-stream", &image)
        });
        let url = server.url("/cat.png");
        let limits = loopback();
        let fields = complete(submit_probe(&url, limits.clone()).unwrap()).unwrap();
        assert_eq!(Some(&Field::Int(len)), field(&fields, "bytes"));
        assert_eq!(
            Some(&Field::Str("image/png".into())),
            field(&fields, "type"),
            "type comes from the bytes"
        );
        assert_eq!(Some(&Field::Int(40)), field(&fields, "width"));
        assert_eq!(Some(&Field::Int(30)), field(&fields, "height"));
        assert!(matches!(field(&fields, "blurhash"), Some(Field::Str(h)) if h.len() == 4 + 2 * 4 * 3));
        assert_eq!(Some(&Field::Bool(false)), field(&fields, "cached"));
        assert_eq!(1, server.connections.load(Ordering::SeqCst));

        let hit = lookup(&url, &limits).expect("a fresh cache entry");
        assert_eq!(Some(40), hit.width);
        let again = complete(submit_probe(&url, limits.clone()).unwrap()).unwrap();
        assert_eq!(Some(&Field::Bool(true)), field(&again, "cached"));
        assert_eq!(
            1,
            server.connections.load(Ordering::SeqCst),
            "a cache hit costs no request"
        );

        let other_components = MediaLimits {
            probe: ProbeLimits {
                components_x: 3,
                ..limits.probe.clone()
            },
            ..limits
        };
        assert_eq!(
            None,
            lookup(&url, &other_components),
            "different limits, different entry"
        );
    }

    #[test]
    fn a_stale_entry_is_revalidated_with_its_etag() {
        let image = png(8, 8);
        let server = TestServer::start("127.0.0.1", move |_, inm| {
            if inm == "\"img1\"" {
                Answer::status("304 Not Modified")
            } else {
                Answer::ok("image/png", &image).header("ETag", "\"img1\"")
            }
        });
        let url = server.url("/etag.png");
        let limits = MediaLimits {
            cache_ttl: Duration::from_millis(1),
            ..loopback()
        };
        let first = complete(submit_probe(&url, limits.clone()).unwrap()).unwrap();
        assert_eq!(Some(&Field::Bool(false)), field(&first, "cached"));
        std::thread::sleep(Duration::from_millis(5)); // let the 1 ms time to live pass
        let second = complete(submit_probe(&url, limits).unwrap()).unwrap();
        assert_eq!(
            Some(&Field::Bool(true)),
            field(&second, "cached"),
            "304 reuses the entry"
        );
        assert_eq!(Some(&Field::Int(8)), field(&second, "width"));
        assert_eq!(2, server.connections.load(Ordering::SeqCst));
    }

    #[test]
    fn a_non_image_keeps_its_declared_type() {
        let server = TestServer::start("127.0.0.1", |_, _| {
            Answer::ok("text/plain; charset=utf-8", b"just text")
        });
        let fields = complete(submit_probe(&server.url("/a.txt"), loopback()).unwrap()).unwrap();
        assert_eq!(
            vec![
                ("bytes", Field::Int(9)),
                ("type", Field::Str("text/plain".into())),
                ("cached", Field::Bool(false))
            ],
            fields
        );
    }

    #[test]
    fn an_oversized_image_gets_header_metadata_only() {
        let image = png(64, 64);
        let len = image.len() as i64;
        let server = TestServer::start("127.0.0.1", move |_, _| Answer::ok("image/png", &image));
        let limits = MediaLimits {
            fetch: FetchLimits {
                max_bytes: 100,
                ..FetchLimits::default()
            },
            ..loopback()
        };
        let fields = complete(submit_probe(&server.url("/big.png"), limits).unwrap()).unwrap();
        assert_eq!(
            vec![
                ("bytes", Field::Int(len)),
                ("type", Field::Str("image/png".into())),
                ("cached", Field::Bool(false))
            ],
            fields
        );
    }

    #[test]
    fn an_image_over_the_pixel_limit_gets_no_blurhash() {
        let image = png(50, 50);
        let server = TestServer::start("127.0.0.1", move |_, _| Answer::ok("image/png", &image));
        let limits = MediaLimits {
            probe: ProbeLimits {
                max_pixels: 100,
                ..ProbeLimits::default()
            },
            ..loopback()
        };
        let fields = complete(submit_probe(&server.url("/bomb.png"), limits).unwrap()).unwrap();
        assert_eq!(Some(&Field::Int(50)), field(&fields, "width"));
        assert_eq!(None, field(&fields, "blurhash"));
    }

    #[test]
    fn errors_come_back_as_job_results() {
        let blocked = TestServer::start("127.0.0.2", |_, _| Answer::ok("image/png", b"x"));
        let err = complete(submit_probe(&blocked.url("/x.png"), loopback()).unwrap()).unwrap_err();
        assert_eq!("blocked", err.code());
        assert_eq!(0, blocked.connections.load(Ordering::SeqCst));
        let missing = TestServer::start("127.0.0.1", |_, _| Answer::status("404 Not Found"));
        let err = complete(submit_probe(&missing.url("/gone.png"), loopback()).unwrap()).unwrap_err();
        assert_eq!("fetch-failed", err.code());
    }

    #[test]
    fn bad_urls_and_limits_fail_before_any_job() {
        assert_eq!(
            "bad-request",
            submit_probe("ftp://example.com/x", loopback())
                .unwrap_err()
                .code()
        );
        let zero_timeout = MediaLimits {
            fetch: FetchLimits {
                timeout: Duration::ZERO,
                ..FetchLimits::default()
            },
            ..loopback()
        };
        assert_eq!(
            "bad-request",
            submit_probe("http://example.com/", zero_timeout)
                .unwrap_err()
                .code()
        );
        let bad_components = MediaLimits {
            probe: ProbeLimits {
                components_x: 10,
                ..ProbeLimits::default()
            },
            ..loopback()
        };
        assert_eq!(
            "bad-request",
            submit_probe("http://example.com/", bad_components)
                .unwrap_err()
                .code()
        );
    }
}
