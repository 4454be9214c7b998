//! A spinning team of the current rayon pool's threads, for batch-1 inference.
//!
//! One image through MobileNetV2 is some twenty parallel steps of 50–300 µs each, with serial
//! glue between them. Under plain rayon, the helper threads fall asleep in the gaps and every
//! step pays a futex wake-up (about a tenth of the run on two cores, measured with `perf`).
//! Inside [`team`], the pool's other threads are borrowed for the whole call and spin between
//! steps, so [`par_for`] hands out work in well under a microsecond.
//!
//! Work is claimed dynamically: the calling thread takes tasks too, so a step completes even if
//! a helper has not arrived yet (its pool may be busy with the host's work); helpers that
//! arrive late find nothing to do. Nothing here blocks on a helper.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

/// One step's work: `task(i)` for `i < n`.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Team {
    /// `epoch << 32 | next task index`: claiming a task is a compare-exchange on both, so a
    /// task index is only ever claimed within its own step.
    state: AtomicU64,
    /// The step being published or run: its epoch, job and task count. Written before the
    /// epoch appears in `state`, so a helper that reads a slot newer than `state` cannot claim.
    slot: Mutex<Slot>,
    /// Tasks of the current step finished.
    done: AtomicUsize,
    /// A task panicked on a helper.
    panicked: AtomicBool,
    stop: AtomicBool,
}

#[derive(Clone, Copy)]
struct Slot {
    epoch: u64,
    job: Option<JobPtr>,
    tasks: usize,
}

#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize) + Sync));
// SAFETY: the job is `Sync`, and it outlives its epoch: `par_for` waits for every claimed task
// before it returns.
unsafe impl Send for JobPtr {}
unsafe impl Sync for JobPtr {}

thread_local! {
    /// The team this thread leads, while inside [`team`].
    static LEADING: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

impl Team {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims and runs tasks of `step` until none is left or another step is current.
    fn work(&self, step: Slot) {
        let Some(job) = step.job else { return };
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if s >> 32 != step.epoch || (s & 0xffff_ffff) as usize >= step.tasks {
                return;
            }
            match self
                .state
                .compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    // SAFETY: the claim succeeded in this job's epoch, so the job is alive until
                    // `done` counts this task.
                    let f = unsafe { &*job.0 };
                    let i = (s & 0xffff_ffff) as usize;
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))).is_err() {
                        self.panicked.store(true, Ordering::Release);
                    }
                    self.done.fetch_add(1, Ordering::AcqRel);
                    s += 1;
                }
                Err(now) => s = now,
            }
        }
    }

    /// A helper: spin on the state word, join each new step, leave on `stop`.
    fn help(&self) {
        let mut seen = 0u64;
        let mut idle = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            let epoch = self.state.load(Ordering::Acquire) >> 32;
            if epoch != seen {
                let step = *self.slot();
                if step.epoch == epoch {
                    self.work(step);
                    seen = epoch;
                }
                idle = 0;
            } else {
                idle = idle.saturating_add(1);
                if idle < 1 << 16 {
                    std::hint::spin_loop();
                } else {
                    // A long serial stretch: stop burning the core at full speed.
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// Runs `f` with the other threads of the current rayon pool spinning as its team: inside,
/// [`par_for`] on this thread dispatches to them without waking anyone. Outside a pool of more
/// than one thread, or inside [`crate::serial`], it is just `f()`.
pub fn team<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let n = crate::current_threads();
    if n < 2 || !LEADING.with(|l| l.get().is_null()) {
        return f();
    }
    let team = Team {
        state: AtomicU64::new(0),
        slot: Mutex::new(Slot {
            epoch: 0,
            job: None,
            tasks: 0,
        }),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    };
    rayon::scope(|s| {
        for _ in 1..n {
            s.spawn(|_| team.help());
        }
        struct Lead<'a>(&'a Team);
        impl Drop for Lead<'_> {
            fn drop(&mut self) {
                LEADING.with(|l| l.set(std::ptr::null()));
                self.0.stop.store(true, Ordering::Release);
            }
        }
        LEADING.with(|l| l.set(&team));
        let _lead = Lead(&team);
        f()
    })
}

/// `task(i)` for every `i < n`, in parallel: on the team when this thread leads one, else on
/// the current rayon pool, or serially inside [`crate::serial`] or for a single task.
pub fn par_for(n: usize, task: impl Fn(usize) + Sync) {
    if n == 0 {
        return;
    }
    if n == 1 || crate::current_threads() == 1 {
        (0..n).for_each(task);
        return;
    }
    let lead = LEADING.with(|l| l.get());
    if lead.is_null() {
        (0..n).into_par_iter().with_max_len(1).for_each(&task);
        return;
    }
    // SAFETY: `LEADING` is set only while `team` holds the team alive on this thread.
    let team = unsafe { &*lead };
    let job: Job = &task;
    // SAFETY: erases the lifetime; the pointer is used only while this epoch is current, and
    // this function does not return before every claimed task is done.
    let ptr = JobPtr(unsafe {
        std::mem::transmute::<Job<'_>, Job<'static>>(job) as *const (dyn Fn(usize) + Sync)
    });
    let step = {
        let mut slot = team.slot();
        *slot = Slot {
            epoch: slot.epoch + 1,
            job: Some(ptr),
            tasks: n,
        };
        *slot
    };
    team.done.store(0, Ordering::Release);
    team.state.store(step.epoch << 32, Ordering::Release);
    team.work(step);
    while team.done.load(Ordering::Acquire) < n {
        std::hint::spin_loop();
    }
    team.slot().job = None;
    if team.panicked.swap(false, Ordering::AcqRel) {
        panic!("a kernel task panicked on a helper thread");
    }
}

/// `f(i, chunk)` for the `chunk`-sized pieces of `data` (the last may be shorter), in parallel
/// as [`par_for`].
pub fn par_chunks_mut<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    assert!(chunk > 0);
    let len = data.len();
    struct Ptr<T>(*mut T);
    // SAFETY: each task makes a slice of its own disjoint chunk.
    unsafe impl<T: Send> Sync for Ptr<T> {}
    let p = Ptr(data.as_mut_ptr());
    par_for(len.div_ceil(chunk), |i| {
        let p = &p;
        let (a, b) = (i * chunk, ((i + 1) * chunk).min(len));
        // SAFETY: chunks are disjoint and inside `data`, which is borrowed mutably for the call.
        f(i, unsafe {
            std::slice::from_raw_parts_mut(p.0.add(a), b - a)
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_per_step() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            team(|| {
                for step in 0..2000 {
                    let n = 1 + step % 7;
                    let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                    par_for(n, |i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(
                        hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                        "step {step}"
                    );
                }
            })
        });
    }

    #[test]
    fn works_without_helpers_and_nested() {
        // One thread: no team, plain loop.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let sum = AtomicUsize::new(0);
        pool.install(|| {
            team(|| {
                par_for(10, |i| {
                    sum.fetch_add(i, Ordering::Relaxed);
                })
            })
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
        // A team inside a team is the outer one.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let sum = AtomicUsize::new(0);
        pool.install(|| {
            team(|| {
                team(|| {
                    par_for(100, |i| {
                        sum.fetch_add(i, Ordering::Relaxed);
                    })
                })
            })
        });
        assert_eq!(sum.load(Ordering::Relaxed), 4950);
    }
}
