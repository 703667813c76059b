//! Media metadata for a URL, probed while it downloads: the cache, then a safe fetch ([`fetch`], with
//! [`netguard`] deciding which addresses may be contacted) whose body goes chunk by chunk into a streaming
//! prober ([`probe`]), all as one job of the worker pool ([`crate::jobs`]).
//!
//! The caller configures a [`Prober`] once (limits, networks, cache settings, the decode budget) and asks it
//! for URLs: [`Prober::lookup`] answers from the cache without starting anything, [`Prober::submit`]
//! starts a job whose result is [`MediaMeta::to_fields`] or an error (`blocked`, `fetch-failed`,
//! `timeout`, ...).
//!
//! How a probe runs:
//! - The body is read as it arrives, in batches of [`BATCH_BYTES`], each fed to the [`probe::StreamProbe`]
//!   on a CPU thread ([`crate::jobs::blocking`]) while the next batch is read. Nothing holds the whole
//!   file: a probe's heap is the HTTP client's read buffers ([`fetch::READ_BUFFER_BYTES`]), three batches
//!   (one read, one waiting, one decoded) and the prober, under 1 MiB for JPEG, PNG and GIF
//!   (`rust/tests/memory.rs`).
//! - The download stops as soon as the prober has its answer (a progressive JPEG's first scan, a PNG's last
//!   row, any header for formats read for their dimensions) and the file's size is known: dropping the
//!   answer closes the connection. Without a stated size (`Content-Length`, or the total of a
//!   `Content-Range`), the rest of the body is read and counted, not kept, up to the cap.
//! - `max_bytes` is a transfer cap: no more of the body is read (or asked for: requests carry a `Range`).
//!   A file larger than the cap still gets its type and dimensions when its header arrives within it.
//! - Decode memory comes from the prober's budget (`max_decode_memory`, shared by all its probes): each JPEG,
//!   PNG or GIF takes [`probe::STREAM_DECODE_BYTES`], a WebP what its frame needs; a probe waits for its share
//!   (within its time limit) and never exceeds the budget.
//! - What a probe yields ([`MediaMeta`]): `bytes` (the size the server states, or the counted body), `type`
//!   (from the magic bytes for a recognised format, else from `Content-Type`), and for an image its
//!   `width` and `height` from the header and a `blurhash` when its pixels could be decoded.
//! - One time limit covers the whole probe: connecting, redirects, the body and decoding it. When it passes
//!   (or the body breaks off) after the format was recognised, the answer is what arrived so far, not
//!   cached.
//!
//! Admission ([`Prober::probe`]): at most `max_downloads` downloads run at once and at most `max_queued`
//! wait for a slot; each sender and each room has at most `max_per_sender` / `max_per_room` probes at once;
//! probes of one URL at once share one download; a failure is remembered for `failure_ttl`; a probe's time
//! limit is never longer than the time its caller can wait, and one that gets no slot in time ends as
//! `too-late`. The HTTP clients, the cache, the admission state, the download slots and the decode budgets
//! belong to the process that created them and are rebuilt after a fork, like the pool.

pub mod cache;
pub mod fetch;
pub mod netguard;
pub mod probe;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;

use crate::error::Error;
use crate::jobs::{self, Field, Fields, JobId};
use cache::{Cache, Lookup};
use fetch::{FetchLimits, Fetcher, Response};
use netguard::Policy;
use probe::{MediaInfo, Need, ProbeLimits, StreamProbe};

/// Largest value of the admission limits (`max_downloads`, `max_queued`, `max_per_sender`, ...).
pub const MAX_ADMISSION: usize = 100_000;

/// Extra time a probe waits for its shared download past its own deadline, so that the download's own
/// answer (`timeout`, `too-late`) arrives rather than the waiter's.
const WAIT_GRACE: Duration = Duration::from_millis(100);

/// Largest cache the caller may ask for, in entries.
pub const MAX_CACHE_ENTRIES: usize = 100_000;

/// Body bytes handed to the prober at once (fewer at the end of the body).
pub const BATCH_BYTES: usize = 64 << 10;

/// Most of a body left once the prober is done that is still read, so that the connection may be reused.
pub const DRAIN_BYTES: u64 = 16 << 10;

/// Everything a [`Prober`] runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaLimits {
    /// Download limits.
    pub fetch: FetchLimits,
    /// Decoding limits, the decode budget and BlurHash components.
    pub probe: ProbeLimits,
    /// Which addresses may be connected to.
    pub policy: Policy,
    /// Most cached URLs (0 disables the cache).
    pub cache_size: usize,
    /// How long a cached result is used without asking the server again.
    pub cache_ttl: Duration,
    /// How long a failure is remembered: the same URL fails at once with the same code meanwhile.
    pub failure_ttl: Duration,
    /// Most downloads at once in this process.
    pub max_downloads: usize,
    /// Most probes waiting for a download slot in this process; more are shed (`queue-full`).
    pub max_queued: usize,
    /// Most probes at once for one sender (`sender-busy`).
    pub max_per_sender: usize,
    /// Most probes at once for one room (`room-busy`).
    pub max_per_room: usize,
}

impl Default for MediaLimits {
    fn default() -> Self {
        MediaLimits {
            fetch: FetchLimits::default(),
            probe: ProbeLimits::default(),
            policy: Policy::default(),
            cache_size: 256,
            cache_ttl: Duration::from_secs(3600),
            failure_ttl: Duration::from_secs(30),
            max_downloads: 16,
            max_queued: 128,
            max_per_sender: 4,
            max_per_room: 8,
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
        for (what, n) in [
            ("max_downloads", self.max_downloads),
            ("max_per_sender", self.max_per_sender),
            ("max_per_room", self.max_per_room),
        ] {
            if n == 0 || n > MAX_ADMISSION {
                return Err(Error::bad_request(format!(
                    "{what} must be between 1 and {MAX_ADMISSION}"
                )));
            }
        }
        if self.max_queued > MAX_ADMISSION {
            return Err(Error::bad_request(format!(
                "max_queued must be at most {MAX_ADMISSION}"
            )));
        }
        if self.probe.max_decode_memory >> 10 > u32::MAX as u64 {
            return Err(Error::bad_request("max_decode_memory is too large"));
        }
        Ok(())
    }

    /// What, besides the URL, makes a cache key: everything that changes the answer, the address policy
    /// included, so that a host that may fetch an internal URL never shares its result with one that may
    /// not.
    fn cache_key_suffix(&self) -> String {
        format!(
            "{}x{}\n{} {} {} {}\n{}",
            self.probe.components_x,
            self.probe.components_y,
            self.fetch.max_bytes,
            self.probe.max_pixels,
            self.probe.max_webp_pixels,
            self.probe.max_decode_memory,
            self.policy.describe()
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

/// A configured prober: limits checked and prepared once, then used for any number of URLs. Lua holds one
/// per module instance and makes a new one when the configuration is reloaded.
#[derive(Debug)]
pub struct Prober {
    limits: Arc<MediaLimits>,
    key_suffix: String,
    /// The decode budget, shared by this prober's downloads.
    budget: Arc<Budget>,
}

/// A prober's decode budget: a semaphore of KiB for this process, made on first use and after a fork.
/// Taken only by a download that needs decode memory, on a worker: submitting a probe on Prosody's main
/// thread never touches it.
#[derive(Debug)]
struct Budget {
    kib: usize,
    /// (pid, semaphore).
    slot: Mutex<Option<(u32, Arc<Semaphore>)>>,
}

impl Budget {
    fn new(max_decode_memory: u64) -> Budget {
        Budget {
            kib: usize::try_from(max_decode_memory >> 10).unwrap_or(usize::MAX),
            slot: Mutex::new(None),
        }
    }

    fn semaphore(&self) -> Arc<Semaphore> {
        let mut slot = lock(&self.slot);
        let pid = std::process::id();
        if let Some((_, budget)) = slot.as_ref().filter(|(p, _)| *p == pid) {
            return budget.clone();
        }
        // Forked (or first use): a lock inside the old semaphore may be held by a thread that no longer
        // exists.
        if let Some(old) = slot.take() {
            std::mem::forget(old);
        }
        let budget = Arc::new(Semaphore::new(self.kib));
        *slot = Some((pid, budget.clone()));
        budget
    }
}

impl Prober {
    /// A prober under `limits`, or [`Error::BadRequest`] for limits that make no sense.
    pub fn new(limits: MediaLimits) -> Result<Prober, Error> {
        limits.validate()?;
        Ok(Prober {
            key_suffix: limits.cache_key_suffix(),
            budget: Arc::new(Budget::new(limits.probe.max_decode_memory)),
            limits: Arc::new(limits),
        })
    }

    /// The limits this prober runs under.
    pub fn limits(&self) -> &MediaLimits {
        &self.limits
    }

    fn cache_key(&self, url: &str) -> String {
        format!("{url}\n{}", self.key_suffix)
    }

    /// A fresh cached result for `url`, without starting anything (so a reposted link needs no job at
    /// all), or `None`. Called on Prosody's main thread, so it never waits for the cache's lock (see
    /// [`Media::cache`]): a busy cache is a miss.
    pub fn lookup(&self, url: &str) -> Option<MediaMeta> {
        let key = self.cache_key(&normalise(url).ok()?);
        let media = media();
        let mut caches = media.cache.try_lock().ok()?;
        match caches.meta.lookup(&key, self.limits.cache_ttl, Instant::now()) {
            Lookup::Fresh(meta) => Some(meta),
            _ => None,
        }
    }

    /// The code a probe for `sender` (a bare JID) in `room` would be shed with at admission now
    /// (`sender-busy`, `room-busy`), or `None`. Lets the caller shed every URL of a message over its limits
    /// at once, without asking for each. Allocates nothing; `sender` and `room` may be empty (not counted).
    pub fn busy(&self, sender: &str, room: &str) -> Option<&'static str> {
        let media = media();
        let admitted = lock(&media.admitted);
        let limits = &self.limits;
        if !sender.is_empty() && admitted.senders.get(sender).copied().unwrap_or(0) >= limits.max_per_sender {
            Some("sender-busy")
        } else if !room.is_empty() && admitted.rooms.get(room).copied().unwrap_or(0) >= limits.max_per_room {
            Some("room-busy")
        } else {
            None
        }
    }

    /// Starts probing `url` as a job, with no sender or room and the whole fetch time limit; see
    /// [`Prober::probe`].
    pub fn submit(&self, url: &str) -> Result<JobId, Error> {
        self.probe(url, "", "", None)
    }

    /// Starts probing `url` for `sender` (a bare JID) in `room`, to be answered within `deadline` (the time
    /// left in the message's hold; never more than the fetch time limit). Its result is
    /// [`MediaMeta::to_fields`] or an error (`blocked`, `fetch-failed`, `timeout`, `too-late` when no
    /// download slot came free in time, ...). Refused at once, before any job: a malformed URL
    /// (`bad-request`), and a probe over a limit (`sender-busy`, `room-busy`, `queue-full`).
    ///
    /// Probes of one URL (normalised) at once share one download: the first one starts it, the others
    /// wait for its answer, taking no download slot or queue place of their own (each still counts for its
    /// sender and room). The download is aborted when every probe waiting for it is cancelled or gone.
    /// Call [`settle`] when the job's result is taken or the job is cancelled.
    pub fn probe(
        &self,
        url: &str,
        sender: &str,
        room: &str,
        deadline: Option<Duration>,
    ) -> Result<JobId, Error> {
        let key = self.cache_key(&normalise(url)?);
        let limits = &self.limits;
        let wait = match deadline {
            Some(d) => d.min(limits.fetch.timeout),
            None => limits.fetch.timeout,
        };
        if wait.is_zero() {
            return Err(Error::TooLate("The hold has ended".into()));
        }
        let deadline = tokio::time::Instant::now() + wait;
        let media = media();
        // Main-thread-only locks below (admission, flights, slots): no worker takes them.
        let mut admitted = lock(&media.admitted);
        if !sender.is_empty() && admitted.senders.get(sender).copied().unwrap_or(0) >= limits.max_per_sender {
            return Err(Error::Shed(
                "sender-busy",
                "Too many probes for this sender".into(),
            ));
        }
        if !room.is_empty() && admitted.rooms.get(room).copied().unwrap_or(0) >= limits.max_per_room {
            return Err(Error::Shed("room-busy", "Too many probes for this room".into()));
        }
        let waiter = {
            let mut flights = lock(&media.flights);
            match flights.get(&key).and_then(Waiter::join) {
                Some(waiter) => waiter,
                None => {
                    let free = limits
                        .max_downloads
                        .saturating_sub(media.in_flight.load(Ordering::Relaxed));
                    if media.queued.load(Ordering::Relaxed) >= limits.max_queued + free {
                        return Err(Error::Shed("queue-full", "Too many probes waiting".into()));
                    }
                    if flights.len() >= 2 * (limits.max_downloads + limits.max_queued) + 64 {
                        flights.retain(|_, f| f.is_open());
                    }
                    // The starter's share is made with the flight, never joined: the download may be done
                    // (even its answer sent) before this thread goes on, and its answer is this probe's.
                    let waiter = self.start(&media, url, &key, deadline)?;
                    tests_hook_new_flight(&waiter.flight);
                    flights.insert(key, waiter.flight.clone());
                    waiter
                }
            }
        };
        let flight = waiter.flight.clone();
        let id = jobs::submit(async move {
            let mut answer = waiter.flight.answer.clone();
            let waited =
                tokio::time::timeout_at(deadline + WAIT_GRACE, answer.wait_for(Option::is_some)).await;
            let outcome = match waited {
                Err(_) => Err(Error::Timeout("No answer before the deadline".into())),
                Ok(Err(_)) => Err(Error::Internal("download went away".into())),
                Ok(Ok(outcome)) => outcome
                    .clone()
                    .unwrap_or_else(|| Err(Error::Internal("no answer".into()))),
            };
            drop(waiter);
            let (meta, cached) = outcome?;
            Ok(meta.to_fields(cached))
        })?;
        if !sender.is_empty() {
            *admitted.senders.entry(sender.to_owned()).or_default() += 1;
        }
        if !room.is_empty() {
            *admitted.rooms.entry(room.to_owned()).or_default() += 1;
        }
        admitted
            .jobs
            .insert(id, (sender.to_owned(), room.to_owned(), flight));
        Ok(id)
    }

    /// Starts the shared download of `url` (cache key `key`) that must be answered before `deadline`, and
    /// returns the starter's share of it.
    fn start(
        &self,
        media: &Arc<Media>,
        url: &str,
        key: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Waiter, Error> {
        let job = Job {
            url: url.to_owned(),
            key: key.to_owned(),
            limits: self.limits.clone(),
            budget: self.budget.clone(),
        };
        let slots = media.slots(self.limits.max_downloads);
        let (sender, answer) = watch::channel(None);
        let done_flag = Arc::new(AtomicBool::new(false));
        let place = QueuePlace::take(media);
        let queued = place.1.clone();
        let task = {
            let media = media.clone();
            let done = done_flag.clone();
            async move {
                // Marks the flight done however the task ends (answered, aborted, panicked), so that no probe
                // joins a download that will never answer.
                let _done = FlightDone(done);
                let outcome = media.probe(&job, slots, place, deadline).await;
                let _ = sender.send(Some(outcome));
            }
        };
        let abort = jobs::spawn(task)?;
        Ok(Waiter {
            flight: Arc::new(Flight {
                answer,
                abort,
                done: done_flag,
                queued,
                waiters: AtomicUsize::new(1), // the starter's
            }),
        })
    }
}

/// Tests: lets a new flight's download finish before the probe that started it goes on (see
/// `a_download_done_before_its_starter_is_admitted_still_answers_it`).
#[cfg(test)]
fn tests_hook_new_flight(flight: &Flight) {
    if tests::FINISH_NEW_FLIGHTS.with(std::cell::Cell::get) {
        let give_up = Instant::now() + Duration::from_secs(30);
        while flight.answer.borrow().is_none() && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(not(test))]
fn tests_hook_new_flight(_: &Flight) {}

/// Lets go of what a probe job held at admission (its sender's and room's counts). Call it on Prosody's
/// main thread for every job of [`Prober::probe`] whose result was taken or which was cancelled.
pub fn settle(id: JobId) {
    let media = media();
    let mut admitted = lock(&media.admitted);
    let Some((sender, room, _)) = admitted.jobs.remove(&id) else {
        return;
    };
    let Admitted { senders, rooms, .. } = &mut *admitted;
    for (map, name) in [(senders, sender), (rooms, room)] {
        if let Some(n) = map.get_mut(&name) {
            *n -= 1;
            if *n == 0 {
                map.remove(&name);
            }
        }
    }
}

/// Whether probe job `id` (of [`Prober::probe`], not yet settled) still waits for its download to get a slot,
/// or gave up waiting (its result, `too-late`, not taken yet): cancelled now, it is a probe that could not start
/// before its caller stopped waiting (`too-late`), whichever of the two deadlines came first.
pub fn is_queued(id: JobId) -> bool {
    let media = media();
    let admitted = lock(&media.admitted);
    admitted
        .jobs
        .get(&id)
        .is_some_and(|(_, _, flight)| flight.queued.load(Ordering::Acquire))
}

/// Process-wide numbers for gauges and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Downloads waiting for a slot.
    pub queued: usize,
    /// Downloads holding a slot.
    pub in_flight: usize,
    /// Body bytes read since the process started.
    pub fetched_bytes: u64,
}

/// The numbers of this process (atomics only: never waits).
pub fn stats() -> Stats {
    let media = media();
    Stats {
        queued: media.queued.load(Ordering::Relaxed),
        in_flight: media.in_flight.load(Ordering::Relaxed),
        fetched_bytes: media.fetched.load(Ordering::Relaxed),
    }
}

/// The cache key of a URL without what the prober adds: the fragment dropped, scheme and host in lower case
/// (the `url` crate's serialisation), or `bad-request`.
pub fn normalise(url: &str) -> Result<String, Error> {
    let mut parsed = fetch::parse_url(url)?;
    parsed.set_fragment(None);
    Ok(parsed.to_string())
}

/// One download that several probes of the same URL wait for.
struct Flight {
    /// `None` until the download has its answer.
    answer: watch::Receiver<Option<Outcome>>,
    abort: AbortHandle,
    /// Set once the task has ended (its answer sent, or aborted): a finished flight is not joined (its answer
    /// may be an old failure).
    done: Arc<AtomicBool>,
    /// Set while the download waits for a slot (it has not started).
    queued: Arc<AtomicBool>,
    /// Probes waiting; the last to go aborts the download.
    waiters: AtomicUsize,
}

type Outcome = Result<(MediaMeta, bool), Error>;

impl Flight {
    fn is_open(&self) -> bool {
        !self.done.load(Ordering::Acquire) && self.waiters.load(Ordering::Acquire) > 0
    }
}

/// Sets a flight's `done` when its task ends, after the answer (if any) was sent: a probe that joined before
/// still gets it.
struct FlightDone(Arc<AtomicBool>);

impl Drop for FlightDone {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A probe's share of a [`Flight`]; dropping the last one aborts the download.
struct Waiter {
    flight: Arc<Flight>,
}

impl Waiter {
    /// Joins `flight` unless it has finished or every waiter has gone (then it is being aborted).
    fn join(flight: &Arc<Flight>) -> Option<Waiter> {
        if flight.done.load(Ordering::Acquire) {
            return None;
        }
        flight
            .waiters
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n > 0).then_some(n + 1))
            .ok()?;
        Some(Waiter {
            flight: flight.clone(),
        })
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.flight.waiters.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.flight.abort.abort();
        }
    }
}

/// A download's place in the queue for a slot, counted in [`Media::queued`] until it gets a slot or goes;
/// its flag (the flight's `queued`) is set meanwhile, and stays set when it gave up for want of a slot.
struct QueuePlace(Arc<Media>, Arc<AtomicBool>, bool);

impl QueuePlace {
    fn take(media: &Arc<Media>) -> QueuePlace {
        media.queued.fetch_add(1, Ordering::Relaxed);
        QueuePlace(media.clone(), Arc::new(AtomicBool::new(true)), false)
    }

    /// Leaves the queue without a slot, the deadline passed: the flag stays set, so that a caller whose own
    /// wait ends at the same moment, before it has taken this `too-late` result, counts the probe the same way
    /// ([`is_queued`]).
    fn give_up(mut self) {
        self.2 = true;
    }
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        if !self.2 {
            self.1.store(false, Ordering::Release);
        }
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A download slot held, counted in [`Media::in_flight`].
struct InFlight(Arc<Media>, #[allow(dead_code)] OwnedSemaphorePermit);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One URL to probe, with what it runs under.
struct Job {
    url: String,
    key: String,
    limits: Arc<MediaLimits>,
    budget: Arc<Budget>,
}

/// What a probe job holds at admission, per sender and per room. Touched only on the main thread.
#[derive(Default)]
struct Admitted {
    jobs: HashMap<JobId, (String, String, Arc<Flight>)>,
    senders: HashMap<String, usize>,
    rooms: HashMap<String, usize>,
}

/// Results and remembered failures, behind one lock.
#[derive(Default)]
struct Caches {
    meta: Cache<MediaMeta>,
    failures: Cache<Error>,
}

/// The per-process state of media probing: HTTP clients by policy, the URL cache, admission and the download
/// slots.
struct Media {
    pid: u32,
    fetchers: Mutex<HashMap<(Policy, Duration), Arc<Fetcher>>>,
    /// Workers take this lock briefly, and they run under `SCHED_IDLE`: one may be descheduled while it
    /// holds it, for as long as the machine is busy. So the main thread only ever `try_lock`s it and takes
    /// "busy" as a miss (the probe's job then looks again, on a worker, where waiting is harmless). Every
    /// other lock here is taken only by the main thread (admission, flights, slots) or only by workers.
    cache: Mutex<Caches>,
    /// Download slots by `max_downloads`. Main thread only.
    slots: Mutex<HashMap<usize, Arc<Semaphore>>>,
    /// Downloads by cache key, so that probes of one URL share one. Main thread only.
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    admitted: Mutex<Admitted>,
    queued: AtomicUsize,
    in_flight: AtomicUsize,
    fetched: AtomicU64,
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
        cache: Mutex::new(Caches::default()),
        slots: Mutex::new(HashMap::new()),
        flights: Mutex::new(HashMap::new()),
        admitted: Mutex::new(Admitted::default()),
        queued: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        fetched: AtomicU64::new(0),
    });
    *slot = Some(media.clone());
    media
}

impl Media {
    /// The download slots for `size` downloads. Each size has its own semaphore: after a reload that changes
    /// `max_downloads`, downloads holding the old one finish under it while new ones take the new one.
    fn slots(&self, size: usize) -> Arc<Semaphore> {
        let mut slots = lock(&self.slots);
        if slots.len() >= 16 && !slots.contains_key(&size) {
            slots.clear(); // sizes come from config: more than a few means churn, not a working set
        }
        slots
            .entry(size)
            .or_insert_with(|| Arc::new(Semaphore::new(size)))
            .clone()
    }

    /// Probes `job`: from the cache or the remembered failures, else downloads it once a slot is free
    /// (`too-late` if none is before `deadline`). Failures other than `too-late` are remembered.
    async fn probe(
        self: &Arc<Self>,
        job: &Job,
        slots: Arc<Semaphore>,
        place: QueuePlace,
        deadline: tokio::time::Instant,
    ) -> Outcome {
        let limits = &job.limits;
        let etag = {
            let mut caches = lock(&self.cache);
            let now = Instant::now();
            if let Lookup::Fresh(e) = caches.failures.lookup(&job.key, limits.failure_ttl, now) {
                return Err(e);
            }
            match caches.meta.lookup(&job.key, limits.cache_ttl, now) {
                Lookup::Fresh(meta) => return Ok((meta, true)),
                Lookup::Stale { etag } => Some(etag),
                Lookup::Miss => None,
            }
        };
        let permit = match tokio::time::timeout_at(deadline, slots.acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(Error::Internal("download slots closed".into())),
            Err(_) => {
                place.give_up();
                return Err(Error::TooLate(
                    "No download slot came free before the deadline".into(),
                ));
            }
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        drop(place);
        let _slot = InFlight(self.clone(), permit);
        let outcome = self.download(job, etag, deadline).await;
        if let Err(e) = &outcome {
            if limits.failure_ttl > Duration::ZERO {
                lock(&self.cache).failures.insert(
                    job.key.clone(),
                    e.clone(),
                    None,
                    limits.cache_size.max(1),
                    Instant::now(),
                );
            }
        }
        outcome
    }

    async fn download(&self, job: &Job, etag: Option<String>, deadline: tokio::time::Instant) -> Outcome {
        let limits = &job.limits;
        let fetcher = self.fetcher(limits)?;
        let open = |etag: Option<String>| {
            let fetcher = fetcher.clone();
            async move {
                match tokio::time::timeout_at(
                    deadline,
                    fetcher.open(&job.url, &limits.fetch, etag.as_deref()),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err(timed_out(limits)),
                }
            }
        };
        let mut response = open(etag).await?;
        if response.not_modified {
            if let Some(meta) = lock(&self.cache).meta.refresh(&job.key, Instant::now()) {
                return Ok((meta, true));
            }
            // Evicted meanwhile: ask again, unconditionally.
            response = open(None).await?;
            if response.not_modified {
                return Err(Error::FetchFailed("HTTP 304 to an unconditional request".into()));
            }
        }
        let transfer = read_body(&mut response, limits, &job.budget, deadline).await?;
        self.fetched.fetch_add(transfer.read, Ordering::Relaxed);
        let etag = response.etag.take();
        drop(response); // closes a connection whose body was not read to the end
        let (meta, complete) = transfer.into_meta()?;
        if complete {
            lock(&self.cache).meta.insert(
                job.key.clone(),
                meta.clone(),
                etag,
                limits.cache_size,
                Instant::now(),
            );
        }
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

fn timed_out(limits: &MediaLimits) -> Error {
    Error::Timeout(format!(
        "No complete answer within {} s",
        limits.fetch.timeout.as_secs_f64()
    ))
}

/// How a body's transfer went, and what the prober made of it.
struct Transfer {
    /// The prober's answer (an error for bytes in no recognised format).
    info: Result<MediaInfo, Error>,
    /// The `Content-Type`.
    declared: Option<String>,
    bytes: Option<u64>,
    /// Body bytes read.
    read: u64,
    /// Why the transfer broke off (time limit, a broken body), if it did.
    failure: Option<Error>,
}

impl Transfer {
    /// The metadata, and whether it is the complete answer (worth caching). A transfer that broke off
    /// before the format was recognised is its error.
    fn into_meta(self) -> Result<(MediaMeta, bool), Error> {
        let complete = self.failure.is_none();
        let meta = match self.info {
            Ok(info) => MediaMeta {
                bytes: self.bytes,
                mime: info.mime,
                width: info.width,
                height: info.height,
                blurhash: info.blurhash,
            },
            Err(_) if !complete => {
                return Err(self
                    .failure
                    .unwrap_or_else(|| Error::Internal("no failure".into())))
            }
            Err(_) => MediaMeta {
                bytes: self.bytes,
                mime: self
                    .declared
                    .unwrap_or_else(|| "application/octet-stream".to_string()),
                width: None,
                height: None,
                blurhash: None,
            },
        };
        Ok((meta, complete))
    }
}

/// Most batches one prober step feeds: a probe gives its CPU thread back to the others at least this often.
const STEP_BATCHES: usize = 16;

/// A prober step on a CPU thread: the answer to its memory request, then the batch, then the batches that
/// have arrived meanwhile (at most [`STEP_BATCHES`] in all), so that a download faster than decoding costs a
/// trip to a CPU thread per megabyte rather than per batch. A memory request that the budget can grant at once
/// (or must refuse: more than the whole budget) is answered here too, so that only a wait for memory goes
/// back to the feeding side (a JPEG asks once its header is read: the round trip cost about 0.15 ms of a
/// 1 MP JPEG's 1.2 ms probe). Gives back the prober, what it needs next, the batches' receiver and the
/// memory granted.
fn probe_step(
    mut probe: Box<StreamProbe>,
    grant: Option<bool>,
    batch: Vec<u8>,
    mut batches: mpsc::Receiver<Vec<u8>>,
    budget: Arc<Semaphore>,
    max_kib: u64,
) -> ProbeStep {
    if let Some(granted) = grant {
        probe.grant(granted);
    }
    let mut need = if batch.is_empty() {
        probe.need()
    } else {
        probe.feed(&batch)
    };
    let mut permits = Vec::new();
    let mut fed = 1;
    loop {
        match need {
            Need::Memory(bytes) => {
                let kib = decode_kib(bytes);
                let granted = if u64::from(kib) > max_kib {
                    false
                } else if let Ok(permit) = budget.clone().try_acquire_many_owned(kib) {
                    permits.push(permit);
                    true
                } else {
                    break; // the feeding side waits for it
                };
                probe.grant(granted);
                need = probe.need();
            }
            Need::Bytes if fed < STEP_BATCHES => match batches.try_recv() {
                Ok(batch) => {
                    need = probe.feed(&batch);
                    fed += 1;
                }
                Err(_) => break,
            },
            Need::Bytes | Need::Nothing => break,
        }
    }
    (probe, need, batches, permits)
}

/// What [`probe_step`] gives back.
type ProbeStep = (
    Box<StreamProbe>,
    Need,
    mpsc::Receiver<Vec<u8>>,
    Vec<OwnedSemaphorePermit>,
);

/// A decode memory request in KiB, the budget's unit.
fn decode_kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// Set by the feeding side when the prober needs nothing more, for the reading side.
#[derive(Default)]
struct Done {
    flag: AtomicBool,
    changed: tokio::sync::Notify,
}

/// How reading a body went.
struct Reading {
    /// Body bytes read (at most the cap).
    read: u64,
    /// The body ended (within the cap).
    ended: bool,
    /// Why the transfer broke off (time limit, a broken body), if it did.
    failure: Option<Error>,
}

/// Reads the body of `response` as it arrives, in batches of [`BATCH_BYTES`] sent to the prober, until
/// `done` (the prober needs nothing more) once the size is known, the transfer cap, the end of the body,
/// the deadline or a broken body. Once the prober is done and the size unknown, the rest is read and
/// counted, not kept, up to the cap.
///
/// Each chunk is copied into a batch and let go at once: a chunk shares the HTTP client's read buffer, which
/// could not be reused while any part of it were kept.
async fn read_batches(
    response: &mut Response,
    batches: mpsc::Sender<Vec<u8>>,
    limits: &MediaLimits,
    deadline: tokio::time::Instant,
    done: &Done,
) -> Reading {
    let cap = limits.fetch.max_bytes;
    let mut batches = Some(batches);
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    let mut reading = Reading {
        read: 0,
        ended: false,
        failure: None,
    };
    while reading.read < cap {
        if done.flag.load(Ordering::Acquire) {
            match response.size {
                // A short rest (a JPEG's EOI, a PNG's checksum and IEND) is read too, and the connection
                // can serve the next probe of that server.
                Some(size) if size.saturating_sub(reading.read) > DRAIN_BYTES => break,
                Some(_) | None => batches = None,
            }
        }
        let next = if batch.is_empty() {
            tokio::select! {
                next = tokio::time::timeout_at(deadline, response.chunk()) => next,
                // The prober finished while the server was slow to send more: look again.
                () = done.changed.notified() => continue,
            }
        } else {
            tokio::select! {
                biased;
                next = tokio::time::timeout_at(deadline, response.chunk()) => next,
                // Nothing more yet: what arrived goes to the prober now, not when a batch is full.
                () = std::future::ready(()) => {
                    let partial = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_BYTES));
                    if let Some(sender) = batches.as_ref() {
                        if sender.send(partial).await.is_err() {
                            batches = None;
                        }
                    }
                    continue;
                }
            }
        };
        let chunk = match next {
            Err(_) => {
                reading.failure = Some(timed_out(limits));
                break;
            }
            Ok(Err(e)) => {
                reading.failure = Some(e);
                break;
            }
            Ok(Ok(None)) => {
                reading.ended = true;
                break;
            }
            Ok(Ok(Some(chunk))) => chunk,
        };
        let take = chunk
            .len()
            .min(usize::try_from(cap - reading.read).unwrap_or(usize::MAX));
        reading.read += take as u64;
        let Some(sender) = batches.as_ref() else {
            continue;
        };
        let mut prober_gone = false;
        for piece in chunk[..take].chunks(BATCH_BYTES) {
            let room = BATCH_BYTES - batch.len();
            let (now, later) = piece.split_at(room.min(piece.len()));
            batch.extend_from_slice(now);
            if batch.len() == BATCH_BYTES {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_BYTES));
                if sender.send(full).await.is_err() {
                    prober_gone = true; // it is done: see `done`
                    break;
                }
                batch.extend_from_slice(later);
            }
        }
        if prober_gone {
            batches = None;
            batch = Vec::new();
        }
    }
    if let Some(sender) = batches {
        if !batch.is_empty() {
            let _ = sender.send(batch).await;
        }
    }
    reading
}

/// Feeds the batches to the prober on CPU threads as they come (while the next one is read), answering its
/// memory requests from the decode budget, until it needs nothing more or the batches end. Sets `done` when
/// the prober's answer is complete. Gives back the prober, the decode memory it holds, and the time limit's
/// error if it passed while waiting for memory.
async fn feed_batches(
    mut probe: Box<StreamProbe>,
    mut batches: mpsc::Receiver<Vec<u8>>,
    limits: &MediaLimits,
    budget: &Budget,
    deadline: tokio::time::Instant,
    done: &Done,
) -> Result<(Box<StreamProbe>, Vec<OwnedSemaphorePermit>, Option<Error>), Error> {
    let mut need = Need::Bytes;
    let mut permits = Vec::new();
    let mut failure = None;
    let max_kib = limits.probe.max_decode_memory >> 10;
    let semaphore = budget.semaphore(); // a probe runs in one process: its budget's semaphore stays the same
    loop {
        let (grant, batch) = match need {
            // A step answers what the budget can grant or must refuse at once; what comes back here is a wait.
            Need::Memory(bytes) => {
                let kib = decode_kib(bytes);
                let permit = if failure.is_some() {
                    semaphore.clone().try_acquire_many_owned(kib).ok()
                } else {
                    match tokio::time::timeout_at(deadline, semaphore.clone().acquire_many_owned(kib)).await {
                        Ok(Ok(permit)) => Some(permit),
                        Ok(Err(_)) => return Err(Error::Internal("decode budget closed".into())),
                        Err(_) => {
                            failure = Some(timed_out(limits));
                            None
                        }
                    }
                };
                let granted = permit.is_some();
                permits.extend(permit);
                (Some(granted), Vec::new())
            }
            Need::Nothing => break,
            Need::Bytes => match batches.recv().await {
                Some(batch) => (None, batch),
                None => break,
            },
        };
        // A step is CPU work bounded by the batch (and the image), not a wait: the deadline applies to the
        // waits around it.
        let step_semaphore = semaphore.clone();
        let granted;
        (probe, need, batches, granted) =
            jobs::blocking(move || Ok(probe_step(probe, grant, batch, batches, step_semaphore, max_kib)))
                .await?;
        permits.extend(granted);
    }
    if need == Need::Nothing {
        done.flag.store(true, Ordering::Release);
        done.changed.notify_one();
    }
    drop(batches); // a reader waiting to hand over a batch stops
    Ok((probe, permits, failure))
}

/// Reads the body of `response` into a streaming prober as it arrives: one future reads batches, another
/// feeds them to the prober, so that decoding one batch overlaps reading the next. Returns the prober's
/// answer with the size and how the transfer went.
async fn read_body(
    response: &mut Response,
    limits: &MediaLimits,
    budget: &Budget,
    deadline: tokio::time::Instant,
) -> Result<Transfer, Error> {
    let probe = Box::new(StreamProbe::new(limits.probe.clone())?);
    let (sender, receiver) = mpsc::channel(1);
    let done = Done::default();
    let declared = response.content_type.clone();
    let size = response.size;
    let (fed, reading) = tokio::join!(
        feed_batches(probe, receiver, limits, budget, deadline, &done),
        read_batches(response, sender, limits, deadline, &done),
    );
    let (probe, permits, waited) = fed?;
    let failure = reading.failure.or(waited);
    let broken = failure.as_ref().is_some_and(|f| f.code() != "timeout");
    let bytes = match size {
        // A body that broke off before its stated size makes that size doubtful.
        Some(size) if !broken => Some(size),
        Some(_) => None,
        None if reading.ended => Some(reading.read),
        None => None,
    };
    // A prober that is done has its picture: what is left (orientation, the BlurHash of the small working
    // image) takes a fraction of a millisecond, and doing it here saves a trip to a CPU thread.
    let info = if probe.is_done() {
        probe.finish()
    } else {
        jobs::blocking(move || Ok(probe.finish())).await?
    };
    drop(permits);
    Ok(Transfer {
        info,
        declared,
        bytes,
        read: reading.read,
        failure,
    })
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

    thread_local! {
        /// Set by a test: each new flight's download finishes before its starter is admitted.
        pub(super) static FINISH_NEW_FLIGHTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn a_download_done_before_its_starter_is_admitted_still_answers_it() {
        // Under CPU starvation the worker may finish a download while Prosody's thread is still admitting the
        // probe that started it; that probe must still get the download's answer, not an internal error.
        let image = png(8, 8);
        let server = TestServer::start("127.0.0.1", move |_, _| Answer::ok("image/png", &image));
        let prober = Prober::new(loopback()).unwrap();
        FINISH_NEW_FLIGHTS.with(|f| f.set(true));
        let started = prober.probe(&server.url("/quick.png"), "a@quick", "r@quick", None);
        FINISH_NEW_FLIGHTS.with(|f| f.set(false));
        let id = started.expect("admitted");
        let fields = complete(id).unwrap();
        settle(id);
        assert_eq!(Some(&Field::Int(8)), field(&fields, "width"));
        assert_eq!(Some(&Field::Bool(false)), field(&fields, "cached"));
    }

    fn loopback() -> MediaLimits {
        MediaLimits {
            policy: Policy::parse(&["127.0.0.1/32"]).unwrap(),
            ..MediaLimits::default()
        }
    }

    fn submit(url: &str, limits: MediaLimits) -> JobId {
        Prober::new(limits).unwrap().submit(url).unwrap()
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
        let fields = complete(Prober::new(limits.clone()).unwrap().submit(&url).unwrap()).unwrap();
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

        let hit = Prober::new(limits.clone())
            .unwrap()
            .lookup(&url)
            .expect("a fresh cache entry");
        assert_eq!(Some(40), hit.width);
        let again = complete(Prober::new(limits.clone()).unwrap().submit(&url).unwrap()).unwrap();
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
            Prober::new(other_components).unwrap().lookup(&url),
            "different limits, different entry"
        );
    }

    #[test]
    fn normalised_keys_drop_the_fragment_and_lower_case_scheme_and_host() {
        assert_eq!(
            "http://example.org/A.png?x=1",
            normalise("HTTP://Example.ORG/A.png?x=1#Frag").unwrap()
        );
        assert_eq!("bad-request", normalise("not a url").unwrap_err().code());
    }

    #[test]
    fn probes_of_one_url_at_once_share_one_download() {
        let image = png(64, 64);
        let server = TestServer::start("127.0.0.1", move |_, _| {
            let mut a = Answer::ok("image/png", &image);
            a.stall_after = Some(100); // the header, then nothing: the download outlives both submissions
            a
        });
        let prober = Prober::new(loopback()).unwrap();
        let url = server.url("/shared.png");
        let deadline = Some(Duration::from_millis(300));
        let a = prober.probe(&url, "a@flight", "room@flight", deadline).unwrap();
        let b = prober
            .probe(&format!("{url}#other"), "b@flight", "room@flight", deadline)
            .unwrap();
        let results = crate::jobs::tests::wait_for(&[a, b]);
        assert!(results[0].result.is_ok(), "{:?}", results[0].result);
        assert_eq!(results[0].result, results[1].result);
        assert_eq!(1, server.connections.load(Ordering::SeqCst), "one download");
        settle(a);
        settle(b);
    }

    #[test]
    fn a_failure_is_remembered_for_its_time_to_live() {
        let server = TestServer::start("127.0.0.1", |_, _| Answer::status("404 Not Found"));
        let url = server.url("/missing.png");
        let first = complete(submit(&url, loopback())).unwrap_err();
        let second = complete(submit(&url, loopback())).unwrap_err();
        assert_eq!("fetch-failed", first.code());
        assert_eq!(first, second);
        assert_eq!(
            1,
            server.connections.load(Ordering::SeqCst),
            "the second fails at once"
        );
        let forgetful = MediaLimits {
            failure_ttl: Duration::ZERO,
            ..loopback()
        };
        let other = server.url("/other.png");
        complete(submit(&other, forgetful.clone())).unwrap_err();
        complete(submit(&other, forgetful)).unwrap_err();
        assert_eq!(3, server.connections.load(Ordering::SeqCst));
    }

    #[test]
    fn probes_over_a_sender_or_room_limit_are_shed_and_settling_frees_them() {
        let image = png(64, 64);
        let server = TestServer::start("127.0.0.1", move |_, _| {
            let mut a = Answer::ok("image/png", &image);
            a.stall_after = Some(10); // every probe runs until it is cancelled
            a
        });
        let prober = Prober::new(MediaLimits {
            max_per_sender: 1,
            max_per_room: 2,
            ..loopback()
        })
        .unwrap();
        let d = Some(Duration::from_secs(30));
        let url = |n: u32| server.url(&format!("/shed-{n}.png"));
        assert_eq!(None, prober.busy("s1@shed", "r@shed"));
        let first = prober.probe(&url(1), "s1@shed", "r@shed", d).unwrap();
        assert_eq!(Some("sender-busy"), prober.busy("s1@shed", "r@shed"));
        let busy = prober.probe(&url(2), "s1@shed", "r@shed", d).unwrap_err();
        assert_eq!("sender-busy", busy.code());
        let second = prober.probe(&url(3), "s2@shed", "r@shed", d).unwrap();
        assert_eq!(Some("room-busy"), prober.busy("s3@shed", "r@shed"));
        assert_eq!(None, prober.busy("s3@shed", ""));
        let full = prober.probe(&url(4), "s3@shed", "r@shed", d).unwrap_err();
        assert_eq!("room-busy", full.code());
        assert!(crate::jobs::cancel(first));
        settle(first);
        assert_eq!(None, prober.busy("s1@shed", ""));
        let third = prober.probe(&url(5), "s1@shed", "r@shed", d).unwrap();
        for id in [second, third] {
            crate::jobs::cancel(id);
            settle(id);
        }
        let late = prober.probe(&url(6), "s4@shed", "r2@shed", Some(Duration::ZERO));
        assert_eq!("too-late", late.unwrap_err().code());
    }

    #[test]
    fn a_probe_that_gets_no_download_slot_before_its_deadline_is_too_late() {
        let image = png(64, 64);
        let server = TestServer::start("127.0.0.1", move |_, _| {
            let mut a = Answer::ok("image/png", &image);
            a.stall_after = Some(10); // the holder keeps its slot until it is cancelled
            a
        });
        // A size no other test uses, so that these two probes share their single slot.
        let prober = Prober::new(MediaLimits {
            max_downloads: 1,
            ..loopback()
        })
        .unwrap();
        let holder = prober
            .probe(
                &server.url("/slot-holder.png"),
                "a@late",
                "r@late",
                Some(Duration::from_secs(30)),
            )
            .unwrap();
        let late = prober
            .probe(
                &server.url("/slot-waiter.png"),
                "b@late",
                "r@late",
                Some(Duration::from_millis(200)),
            )
            .unwrap();
        assert!(is_queued(late), "waiting for a slot");
        let result = crate::jobs::tests::wait_for(&[late]).remove(0).result;
        assert_eq!("too-late", result.unwrap_err().code());
        assert!(
            is_queued(late),
            "it never got a slot: a hold ending now counts it as too late too"
        );
        crate::jobs::cancel(holder);
        settle(holder);
        settle(late);
        assert!(!is_queued(late), "settled");
    }

    #[test]
    fn admission_limits_are_checked() {
        for limits in [
            MediaLimits {
                max_downloads: 0,
                ..MediaLimits::default()
            },
            MediaLimits {
                max_per_sender: 0,
                ..MediaLimits::default()
            },
            MediaLimits {
                max_queued: MAX_ADMISSION + 1,
                ..MediaLimits::default()
            },
        ] {
            assert_eq!("bad-request", limits.validate().unwrap_err().code());
        }
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
        let first = complete(Prober::new(limits.clone()).unwrap().submit(&url).unwrap()).unwrap();
        assert_eq!(Some(&Field::Bool(false)), field(&first, "cached"));
        std::thread::sleep(Duration::from_millis(5)); // let the 1 ms time to live pass
        let second = complete(Prober::new(limits).unwrap().submit(&url).unwrap()).unwrap();
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
        let fields = complete(submit(&server.url("/a.txt"), loopback())).unwrap();
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
    fn an_image_over_the_cap_gets_its_header_metadata() {
        let image = png(64, 64);
        let len = image.len() as i64;
        let server = TestServer::start("127.0.0.1", move |_, _| {
            Answer::ok("application/octet-stream", &image)
        });
        let limits = MediaLimits {
            fetch: FetchLimits {
                max_bytes: 100,
                ..FetchLimits::default()
            },
            ..loopback()
        };
        let fields = complete(submit(&server.url("/big.png"), limits)).unwrap();
        assert_eq!(
            vec![
                ("bytes", Field::Int(len)),
                ("type", Field::Str("image/png".into())),
                ("width", Field::Int(64)),
                ("height", Field::Int(64)),
                ("cached", Field::Bool(false))
            ],
            fields
        );
    }

    #[test]
    fn a_progressive_jpeg_stops_the_download_after_its_first_scan() {
        let (image, _) = crate::media::probe::tests::padded_progressive(4096);
        let expected = crate::media::probe::probe(&image, &ProbeLimits::default()).unwrap();
        let len = image.len();
        let server = TestServer::start("127.0.0.1", move |_, _| Answer::ok("image/jpeg", &image));
        let fields = complete(submit(&server.url("/p.jpg"), loopback())).unwrap();
        assert_eq!(
            vec![
                ("bytes", Field::Int(len as i64)),
                ("type", Field::Str("image/jpeg".into())),
                ("width", Field::Int(76)),
                ("height", Field::Int(52)),
                ("blurhash", Field::Str(expected.blurhash.unwrap())),
                ("cached", Field::Bool(false))
            ],
            fields
        );
        // The server stops when its writes fail: what it sent is what the client took, plus socket buffers.
        let sent = wait_until_settled(&server.sent);
        assert!(sent < len / 4, "sent {sent} of {len}");
    }

    #[test]
    fn a_prober_done_early_does_not_wait_for_a_slow_server() {
        // The server sends the DC scan and a little more, then nothing for 30 s; the probe's time limit is
        // longer still, so only stopping when the answer is complete delivers it within the test's wait.
        let (image, dc_end) = crate::media::probe::tests::padded_progressive(64);
        let len = image.len();
        let server = TestServer::start("127.0.0.1", move |_, _| {
            let mut a = Answer::ok("image/jpeg", &image);
            a.stall_after = Some(dc_end + 100);
            a
        });
        let patient = MediaLimits {
            fetch: FetchLimits {
                timeout: Duration::from_secs(600),
                ..FetchLimits::default()
            },
            ..loopback()
        };
        let fields = complete(submit(&server.url("/slow.jpg"), patient)).unwrap();
        assert_eq!(Some(&Field::Int(len as i64)), field(&fields, "bytes"));
        assert!(field(&fields, "blurhash").is_some());
    }

    #[test]
    fn the_short_rest_of_a_body_is_read_so_the_connection_serves_the_next_probe() {
        // The JPEG decoder is done before the file's last bytes (its EOI marker).
        let image = crate::media::probe::tests::data("photo_420.jpg");
        let server = TestServer::start("127.0.0.1", move |_, _| {
            let mut a = Answer::ok("image/jpeg", &image);
            a.keep_alive = true;
            a
        });
        let prober = Prober::new(loopback()).unwrap();
        for path in ["/first.jpg", "/second.jpg"] {
            let fields = complete(prober.submit(&server.url(path)).unwrap()).unwrap();
            assert!(field(&fields, "blurhash").is_some(), "{path}");
        }
        assert_eq!(1, server.connections.load(Ordering::SeqCst));
    }

    /// The value of `counter` once it has stopped changing (the server's writes end when the client closes).
    fn wait_until_settled(counter: &std::sync::atomic::AtomicUsize) -> usize {
        let mut last = usize::MAX;
        for _ in 0..100 {
            let now = counter.load(Ordering::SeqCst);
            if now == last {
                return now;
            }
            last = now;
            std::thread::sleep(Duration::from_millis(50));
        }
        last
    }

    #[test]
    fn a_body_without_a_length_is_counted_up_to_the_cap() {
        let image = png(30, 20);
        let len = image.len();
        let server = TestServer::start("127.0.0.1", move |_, _| {
            let mut a = Answer::ok("image/png", &image);
            a.content_length = false;
            a
        });
        let fields = complete(submit(&server.url("/counted.png"), loopback())).unwrap();
        assert_eq!(Some(&Field::Int(len as i64)), field(&fields, "bytes"));
        assert!(field(&fields, "blurhash").is_some());
        // Over the cap: no size, but the header's dimensions.
        let capped = MediaLimits {
            fetch: FetchLimits {
                max_bytes: len as u64 / 2,
                ..FetchLimits::default()
            },
            ..loopback()
        };
        let fields = complete(submit(&server.url("/capped.png"), capped)).unwrap();
        assert_eq!(
            vec![
                ("type", Field::Str("image/png".into())),
                ("width", Field::Int(30)),
                ("height", Field::Int(20)),
                ("cached", Field::Bool(false))
            ],
            fields
        );
    }

    #[test]
    fn a_lying_content_length_neither_confuses_the_result_nor_passes_the_cap() {
        let image = png(30, 20);
        let len = image.len();
        let served = image.clone();
        let server = TestServer::start("127.0.0.1", move |path, _| {
            let mut a = Answer::ok("image/png", &served);
            a.declared_length = Some(match path {
                "/longer.png" => len as u64 * 2, // the body ends early
                _ => len as u64 / 2,             // the body goes on
            });
            a
        });
        // Longer than the body: the size is doubtful and left out; the header was read; not cached.
        let url = server.url("/longer.png");
        let fields = complete(submit(&url, loopback())).unwrap();
        assert_eq!(None, field(&fields, "bytes"));
        assert_eq!(Some(&Field::Int(30)), field(&fields, "width"));
        assert!(
            field(&fields, "blurhash").is_some(),
            "every pixel arrived before the body broke off"
        );
        assert_eq!(None, Prober::new(loopback()).unwrap().lookup(&url));
        // Shorter than the body: the body is what was declared, a truncated image without BlurHash.
        let fields = complete(submit(&server.url("/shorter.png"), loopback())).unwrap();
        assert_eq!(Some(&Field::Int(len as i64 / 2)), field(&fields, "bytes"));
        assert_eq!(Some(&Field::Int(30)), field(&fields, "width"));
        assert_eq!(None, field(&fields, "blurhash"));
        // Either way, never more than the cap is read.
        let server = TestServer::start("127.0.0.1", move |_, _| {
            let mut a = Answer::ok("image/png", &[0u8; 4 << 20]);
            a.declared_length = Some(100);
            a
        });
        let capped = MediaLimits {
            fetch: FetchLimits {
                max_bytes: 50,
                ..FetchLimits::default()
            },
            ..loopback()
        };
        let fields = complete(submit(&server.url("/lie.bin"), capped)).unwrap();
        assert_eq!(Some(&Field::Int(100)), field(&fields, "bytes"));
        assert!(wait_until_settled(&server.sent) < 2 << 20);
    }

    #[test]
    fn a_ranged_answer_gives_the_whole_size() {
        let image = png(30, 20);
        let server = TestServer::start("127.0.0.1", move |_, _| {
            Answer::ok("image/png", &image[..100])
                .header("Content-Range", "bytes 0-99/987654")
                .status_line("206 Partial Content")
        });
        let capped = MediaLimits {
            fetch: FetchLimits {
                max_bytes: 100,
                ..FetchLimits::default()
            },
            ..loopback()
        };
        let fields = complete(submit(&server.url("/ranged.png"), capped)).unwrap();
        assert_eq!(Some(&Field::Int(987_654)), field(&fields, "bytes"));
        assert_eq!(Some(&Field::Int(20)), field(&fields, "height"));
    }

    #[test]
    fn a_step_takes_the_memory_it_can_have_at_once_and_leaves_a_wait_to_the_feeding_side() {
        let image = crate::media::probe::tests::data("photo_420.jpg");
        let step = |permits: usize, max_kib: u64| {
            let probe = Box::new(StreamProbe::new(ProbeLimits::default()).unwrap());
            let (_sender, receiver) = mpsc::channel(1);
            let budget = Arc::new(Semaphore::new(permits));
            let (_, need, _, granted) =
                probe_step(probe, None, image.clone(), receiver, budget.clone(), max_kib);
            (need, granted.len(), budget.available_permits())
        };
        // Memory free: granted in the step, and the whole image decoded in it.
        let (need, granted, left) = step(1 << 20, 1 << 20);
        assert_eq!((Need::Nothing, 1), (need, granted));
        assert!(left < 1 << 20);
        // None free: the request goes back to the feeding side, to wait for it there.
        let (need, granted, _) = step(0, 1 << 20);
        assert!(matches!(need, Need::Memory(_)), "{need:?}");
        assert_eq!(0, granted);
        // More than the whole budget: refused in the step, without a wait; the header's answer stands.
        let (need, granted, left) = step(1 << 20, 1);
        assert_eq!((Need::Nothing, 0, 1 << 20), (need, granted, left));
    }

    #[test]
    fn webp_decodes_wait_for_the_shared_budget() {
        let image = crate::media::probe::tests::data("photo_lossless.webp");
        let (image_head, image_len) = (image[..30].to_vec(), image.len() as u64);
        let server = TestServer::start("127.0.0.1", move |_, _| Answer::ok("image/webp", &image));
        let prober = Prober::new(MediaLimits {
            cache_size: 0,
            ..loopback()
        })
        .unwrap();
        // Everything taken: the probe waits for its share.
        let budget = prober.budget.semaphore();
        let all = budget
            .clone()
            .try_acquire_many_owned(budget.available_permits() as u32)
            .unwrap();
        let id = prober.submit(&server.url("/a.webp")).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !crate::jobs::take_results().iter().any(|c| c.id == id),
            "still waiting"
        );
        drop(all);
        let fields = complete(id).unwrap();
        assert!(field(&fields, "blurhash").is_some());
        // A WebP needing more than the whole budget is refused at once.
        let small = Prober::new(MediaLimits {
            probe: ProbeLimits {
                max_decode_memory: 1 << 20,
                max_webp_pixels: u64::MAX,
                ..ProbeLimits::default()
            },
            ..loopback()
        })
        .unwrap();
        let big = crate::media::probe::webp::estimate(&image_head, image_len).unwrap() > 1 << 20;
        let fields = complete(small.submit(&server.url("/b.webp")).unwrap()).unwrap();
        assert_eq!(Some(&Field::Int(76)), field(&fields, "width"));
        assert_eq!(big, field(&fields, "blurhash").is_none());
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
        let fields = complete(submit(&server.url("/bomb.png"), limits)).unwrap();
        assert_eq!(Some(&Field::Int(50)), field(&fields, "width"));
        assert_eq!(None, field(&fields, "blurhash"));
    }

    #[test]
    fn errors_come_back_as_job_results() {
        let blocked = TestServer::start("127.0.0.2", |_, _| Answer::ok("image/png", b"x"));
        let err = complete(submit(&blocked.url("/x.png"), loopback())).unwrap_err();
        assert_eq!("blocked", err.code());
        assert_eq!(0, blocked.connections.load(Ordering::SeqCst));
        let missing = TestServer::start("127.0.0.1", |_, _| Answer::status("404 Not Found"));
        let err = complete(submit(&missing.url("/gone.png"), loopback())).unwrap_err();
        assert_eq!("fetch-failed", err.code());
    }

    #[test]
    fn bad_urls_and_limits_fail_before_any_job() {
        assert_eq!(
            "bad-request",
            Prober::new(loopback())
                .unwrap()
                .submit("ftp://example.com/x")
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
        assert_eq!("bad-request", Prober::new(zero_timeout).unwrap_err().code());
        let bad_components = MediaLimits {
            probe: ProbeLimits {
                components_x: 10,
                ..ProbeLimits::default()
            },
            ..loopback()
        };
        assert_eq!("bad-request", Prober::new(bad_components).unwrap_err().code());
    }
}
