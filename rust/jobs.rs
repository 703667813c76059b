//! Worker pool, completion queue and wake-up descriptor: how slow work runs beside Prosody's event loop.
//!
//! A job is a future (network I/O) that may hand CPU-heavy steps to [`blocking`]. It runs on a tokio runtime
//! whose threads never touch Lua. When it finishes, its result (plain [`Fields`] or an [`Error`]) goes into the
//! completion queue and the wake-up descriptor ([`wakeup_fd`], an eventfd on Linux and a pipe elsewhere) becomes
//! readable. Prosody's loop watches that descriptor with `server.watchfd`; on the main thread Lua calls
//! [`take_results`] and calls each waiting callback by job id. Nothing polls.
//!
//! Fork safety: Prosody daemonizes by forking after its modules are loaded, and a fork keeps only the calling
//! thread. The runtime is therefore created on first use, and the pool remembers the pid it was created in:
//! when [`submit`] finds a different pid, the old pool (whose threads did not survive the fork, and whose locks
//! they may have held) is leaked, never touched again, and a new one is built. Only the main thread ever locks
//! the global slot, so a fork cannot leave it locked.
//!
//! Signals: worker threads block every asynchronous signal, so that a signal meant for Prosody (SIGHUP to
//! reload, SIGTERM to stop, or one Prosody waits for through a signalfd) is always delivered to its main
//! thread and never runs a handler, or a default action, on ours.
//!
//! Scheduling: worker threads run under `SCHED_IDLE`, so that Prosody's thread takes a core back the moment it
//! wakes up. A lower nice value is not enough: Linux's EEVDF scheduler lets a running thread finish its slice
//! before a waking one of any nice value, which delayed Prosody's loop by 3 to 7 ms while images were decoded
//! on both cores of a 2-core machine. The price is that on a machine whose cores are all busy with other
//! work, probing waits, and a held message goes out without metadata when its timeout passes. There is one I/O
//! thread: network waits need no more, and it leaves the other cores free.
//!
//! A panic in a job becomes an `internal-error` result; the pool lives on.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use crate::error::{guard, Error};

/// Identifies a job from [`submit`] to its completion; never reused within a process.
pub type JobId = u64;

/// A plain value in a job's result, as it crosses into Lua.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

/// The result of a finished job: named plain values, in a stable order (a flat Lua table).
pub type Fields = Vec<(&'static str, Field)>;

/// A finished job, as [`take_results`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The id [`submit`] returned.
    pub id: JobId,
    /// What the job produced.
    pub result: Result<Fields, Error>,
}

/// Threads that drive I/O futures. Network jobs spend their time waiting, so one is enough.
const IO_THREADS: usize = 1;

/// Most threads tokio may start for [`blocking`] work and name resolution.
const MAX_BLOCKING_THREADS: usize = 8;

/// State shared between the main thread and the pool's threads. Replaced whole after a fork.
struct Shared {
    /// Finished jobs not yet taken by [`take_results`].
    done: Mutex<Vec<Completion>>,
    /// Jobs still running, so that [`cancel`] can abort them.
    running: Mutex<HashMap<JobId, AbortHandle>>,
    /// Limits how many [`blocking`] steps run at once ([`cpu_slots`]).
    cpu_slots: Semaphore,
}

/// The runtime and its shared state, created on first use in a process.
struct Pool {
    pid: u32,
    runtime: Runtime,
    shared: Arc<Shared>,
}

/// The pool of this process. Locked only from the thread that submits and collects (Prosody's main thread).
static POOL: Mutex<Option<Arc<Pool>>> = Mutex::new(None);

/// The wake-up descriptor; it survives a fork, so it is created once.
static WAKEUP: OnceLock<Result<Wakeup, Error>> = OnceLock::new();

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

tokio::task_local! {
    /// The shared state of the pool a job runs in, for [`blocking`].
    static CURRENT: Arc<Shared>;
}

/// The readable end of the wake-up descriptor, created on first call. It becomes readable whenever a job has
/// finished; [`take_results`] drains it. Lua passes it to `server.watchfd`.
pub fn wakeup_fd() -> Result<RawFd, Error> {
    wakeup().map(|w| w.read_fd)
}

fn wakeup() -> Result<&'static Wakeup, Error> {
    WAKEUP.get_or_init(Wakeup::new).as_ref().map_err(Clone::clone)
}

/// Starts `job` on the pool (creating the pool on first use, or again after a fork) and returns its id at
/// once. Its result arrives through [`take_results`]; a panic in it arrives as `internal-error`.
pub fn submit<F>(job: F) -> Result<JobId, Error>
where
    F: Future<Output = Result<Fields, Error>> + Send + 'static,
{
    let wake = wakeup()?;
    let pool = pool()?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let shared = pool.shared.clone();
    let task = pool.runtime.spawn(CURRENT.scope(shared.clone(), job));
    lock(&shared.running).insert(id, task.abort_handle());
    // The watcher is spawned after the insert, so its remove always comes second.
    pool.runtime.spawn(async move {
        let result = match task.await {
            Ok(result) => Some(result),
            Err(e) if e.is_panic() => Some(Err(Error::Internal(format!(
                "internal error: {}",
                panic_text(e.into_panic())
            )))),
            Err(_) => None, // cancelled: whoever cancelled it has already settled it
        };
        lock(&shared.running).remove(&id);
        if let Some(result) = result {
            lock(&shared.done).push(Completion { id, result });
            wake.signal();
        }
    });
    Ok(id)
}

/// Spawns `task` on the pool (creating it if needed), outside the job table: no id, no result through
/// [`take_results`]. For work that several jobs share (one download awaited by several probes); the caller
/// aborts it through the handle. [`blocking`] works inside it.
pub fn spawn<F>(task: F) -> Result<AbortHandle, Error>
where
    F: Future<Output = ()> + Send + 'static,
{
    let pool = pool()?;
    let shared = pool.shared.clone();
    Ok(pool.runtime.spawn(CURRENT.scope(shared, task)).abort_handle())
}

/// Runs CPU-heavy `work` on a blocking thread, at most [`cpu_slots`] at a time, under [`guard`]. Called
/// from inside a job; outside one it runs `work` in place.
pub async fn blocking<T, W>(work: W) -> Result<T, Error>
where
    T: Send + 'static,
    W: FnOnce() -> Result<T, Error> + Send + 'static,
{
    let Ok(shared) = CURRENT.try_with(Arc::clone) else {
        return guard(work);
    };
    let _slot = shared
        .cpu_slots
        .acquire()
        .await
        .map_err(|_| Error::Internal("worker pool closed".into()))?;
    match tokio::task::spawn_blocking(move || guard(work)).await {
        Ok(result) => result,
        Err(e) => Err(Error::Internal(format!("internal error: {e}"))),
    }
}

/// Takes every finished job, oldest first, after draining the wake-up descriptor. Returns nothing (and
/// creates nothing) before the first job.
pub fn take_results() -> Vec<Completion> {
    if let Some(Ok(wake)) = WAKEUP.get() {
        wake.drain();
    }
    let pool = lock(&POOL).clone();
    match pool {
        // Workers hold this lock only to push a result, and signal the descriptor after letting go. So when a
        // worker has it now (maybe descheduled under SCHED_IDLE), its signal is still to come: take nothing this
        // time rather than wait for it on Prosody's thread.
        Some(pool) if pool.pid == std::process::id() => match pool.shared.done.try_lock() {
            Ok(mut done) => std::mem::take(&mut *done),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => std::mem::take(&mut *poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Aborts a running job; its result will never arrive. Returns whether the job was still running.
pub fn cancel(id: JobId) -> bool {
    let pool = lock(&POOL).clone();
    let Some(pool) = pool.filter(|p| p.pid == std::process::id()) else {
        return false;
    };
    let handle = lock(&pool.shared.running).remove(&id);
    match handle {
        Some(handle) => {
            handle.abort();
            true
        }
        None => {
            // Finished but not yet taken: drop the result so that it never arrives.
            let mut done = lock(&pool.shared.done);
            let before = done.len();
            done.retain(|c| c.id != id);
            before != done.len()
        }
    }
}

/// How many jobs are running (submitted, not finished, not cancelled).
pub fn running() -> usize {
    let pool = lock(&POOL).clone();
    pool.filter(|p| p.pid == std::process::id())
        .map_or(0, |p| lock(&p.shared.running).len())
}

fn pool() -> Result<Arc<Pool>, Error> {
    let mut slot = lock(&POOL);
    let pid = std::process::id();
    if let Some(pool) = slot.as_ref() {
        if pool.pid == pid {
            return Ok(pool.clone());
        }
        // Forked: the old pool's threads are gone and its locks may be held forever. Never touch it again;
        // dropping its runtime would wait for threads that do not exist.
        if let Some(old) = slot.take() {
            std::mem::forget(old);
        }
    }
    let cpus = cpu_slots();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(IO_THREADS)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_name("prosody-native")
        .on_thread_start(worker_thread_setup)
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start worker threads: {e}")))?;
    let shared = Arc::new(Shared {
        done: Mutex::new(Vec::new()),
        running: Mutex::new(HashMap::new()),
        cpu_slots: Semaphore::new(cpus),
    });
    let pool = Arc::new(Pool { pid, runtime, shared });
    *slot = Some(pool.clone());
    Ok(pool)
}

/// How many [`blocking`] steps may run at once: one per core but one, left to Prosody's loop; at least one, at
/// most four.
pub fn cpu_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_sub(1).clamp(1, 4)
}

/// Runs first on every worker thread (I/O and blocking): block asynchronous signals, run only on idle CPU time.
fn worker_thread_setup() {
    // SAFETY: plain libc calls on a local, zero-initialised signal set; errors leave the defaults in place.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for synchronous in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
        ] {
            libc::sigdelset(&mut set, synchronous);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    // Pid 0 is the calling thread. Lowering one's own policy needs no privilege. SCHED_IDLE is Linux's.
    #[cfg(target_os = "linux")]
    // SAFETY: a plain libc call with a local parameter; a failure leaves the normal policy in place.
    unsafe {
        let idle = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle);
    }
}

/// Locks a mutex, recovering it if a panicking thread poisoned it: the data (queues, maps) stays consistent
/// because every critical section is a single push, remove or take.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// The wake-up descriptor: an eventfd (Linux) or a non-blocking pipe, close-on-exec.
#[derive(Debug)]
struct Wakeup {
    read_fd: RawFd,
    write_fd: RawFd,
}

impl Wakeup {
    #[cfg(target_os = "linux")]
    fn new() -> Result<Wakeup, Error> {
        // SAFETY: eventfd takes no pointers; a negative result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Internal(format!(
                "eventfd: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Wakeup {
            read_fd: fd,
            write_fd: fd,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn new() -> Result<Wakeup, Error> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe writes two descriptors into the array it is given; fcntl only takes integers.
        unsafe {
            if libc::pipe(fds.as_mut_ptr()) != 0 {
                return Err(Error::Internal(format!(
                    "pipe: {}",
                    std::io::Error::last_os_error()
                )));
            }
            for fd in fds {
                libc::fcntl(
                    fd,
                    libc::F_SETFL,
                    libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
                );
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        Ok(Wakeup {
            read_fd: fds[0],
            write_fd: fds[1],
        })
    }

    /// Makes the descriptor readable. A full pipe or counter means a wake-up is already pending.
    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local u64 (eventfd wants exactly that; a pipe takes any bytes).
        unsafe {
            libc::write(
                self.write_fd,
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }

    /// Resets the descriptor to not readable.
    fn drain(&self) {
        let mut buf = [0u8; 64];
        // SAFETY: reads into a local buffer of the length passed; the descriptor is non-blocking.
        while unsafe { libc::read(self.read_fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Collects the completions of `ids` (other tests' jobs run in the same pool and are put back).
    pub(crate) fn wait_for(ids: &[JobId]) -> Vec<Completion> {
        let fd = wakeup_fd().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut mine = Vec::new();
        while mine.len() < ids.len() {
            assert!(Instant::now() < deadline, "jobs {ids:?} did not finish");
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
            let all = take_results();
            let (ours, others): (Vec<_>, Vec<_>) = all.into_iter().partition(|c| ids.contains(&c.id));
            mine.extend(ours);
            if !others.is_empty() {
                let pool = lock(&POOL).clone().unwrap();
                lock(&pool.shared.done).extend(others);
                wakeup().unwrap().signal();
            }
        }
        mine.sort_by_key(|c| c.id);
        mine
    }

    #[test]
    fn a_finished_job_wakes_the_descriptor_and_is_taken_once() {
        let id = submit(async { Ok(vec![("answer", Field::Int(42))]) }).unwrap();
        let done = wait_for(&[id]);
        assert_eq!(
            vec![Completion {
                id,
                result: Ok(vec![("answer", Field::Int(42))])
            }],
            done
        );
        assert!(take_results().iter().all(|c| c.id != id));
    }

    #[test]
    fn job_ids_are_unique_and_errors_pass_through() {
        let a = submit(async { Err(Error::bad_request("no")) }).unwrap();
        let b = submit(async { Ok(Vec::new()) }).unwrap();
        assert_ne!(a, b);
        let done = wait_for(&[a, b]);
        assert_eq!(Err(Error::bad_request("no")), done[0].result);
        assert_eq!(Ok(Vec::new()), done[1].result);
    }

    #[test]
    fn a_panicking_job_becomes_internal_error_and_the_pool_lives_on() {
        let bad = submit(async { panic!("worker boom") }).unwrap();
        let blocking_bad =
            submit(async { blocking(|| -> Result<Fields, Error> { panic!("blocking boom") }).await })
                .unwrap();
        let done = wait_for(&[bad, blocking_bad]);
        for c in &done {
            let err = c.result.clone().unwrap_err();
            assert_eq!("internal-error", err.code());
            assert!(err.to_string().contains("boom"), "{err}");
        }
        let good = submit(async { blocking(|| Ok(vec![("ok", Field::Bool(true))])).await }).unwrap();
        assert_eq!(Ok(vec![("ok", Field::Bool(true))]), wait_for(&[good])[0].result);
    }

    #[test]
    fn a_cancelled_job_never_completes() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let slow = submit(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
            Ok(Vec::new())
        })
        .unwrap();
        assert!(cancel(slow));
        // The future was dropped, and with it the sender: the channel closes without the job finishing.
        assert!(rx.recv_timeout(Duration::from_secs(30)).is_err());
        assert!(!cancel(slow), "cancelling twice reports nothing to cancel");
        let marker = submit(async { Ok(Vec::new()) }).unwrap();
        wait_for(&[marker]);
        assert!(take_results().iter().all(|c| c.id != slow));
    }

    /// Whether the calling thread blocks the signals Prosody handles, and whether it runs under SCHED_IDLE.
    #[cfg(target_os = "linux")]
    fn thread_state() -> Fields {
        // SAFETY: reads the calling thread's signal mask into a local set, and its scheduling policy.
        let (blocked, policy) = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
            let blocked = [libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGUSR1]
                .iter()
                .all(|&s| libc::sigismember(&set, s) == 1);
            (blocked, libc::sched_getscheduler(0))
        };
        vec![
            ("blocked", Field::Bool(blocked)),
            ("idle_policy", Field::Bool(policy == libc::SCHED_IDLE)),
        ]
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn worker_threads_block_signals_and_yield_the_cpu() {
        let id = submit(async {
            let io = thread_state();
            let cpu = blocking(|| Ok(thread_state())).await?;
            Ok(io.into_iter().chain(cpu).collect())
        })
        .unwrap();
        let expected = vec![
            ("blocked", Field::Bool(true)),
            ("idle_policy", Field::Bool(true)),
            ("blocked", Field::Bool(true)),
            ("idle_policy", Field::Bool(true)),
        ];
        assert_eq!(Ok(expected), wait_for(&[id])[0].result);
        // SAFETY: reads the calling (test) thread's policy; the pool never changes it.
        let own = unsafe { libc::sched_getscheduler(0) };
        assert_ne!(libc::SCHED_IDLE, own, "only the pool's threads give way");
    }

    #[test]
    fn blocking_outside_a_job_runs_in_place() {
        let result = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(blocking(|| Ok(7)));
        assert_eq!(Ok(7), result);
    }
}
