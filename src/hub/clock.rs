//! The hub's shared ticks, one task each instead of a timer per connection:
//! a timer per connection costs memory while idle and timer-wheel work on
//! every event, and ten thousand of them do the same thing at nearly the
//! same moments.
//!
//! - The write tick ends each `write_delay` period: the events that waited
//!   for it go out, each subscriber's as one batch ([`Fanout::tick`]). It
//!   runs on a thread of its own, for it writes to the sockets of the
//!   subscribers that wait (see `hub::outlet`): a few milliseconds of
//!   system calls per tick with thousands of busy subscribers, which
//!   would hold up every task queued behind it on a runtime's worker.
//!   The prompt writer, on a thread of its own too, writes the first
//!   events of a tick as they come ([`Fanout::write_prompt`]).
//! - The keep-alive tick counts quarters of `keepalive` in every
//!   subscriber's mailbox ([`Fanout::keepalive_tick`]); a subscription that
//!   has sent nothing for [`KEEPALIVE_TICKS`] of them sends a keep-alive,
//!   after a silence between `keepalive` and 1.25 times that.
//!
//! At shutdown the task closes every mailbox ([`Fanout::shut_down`]),
//! which ends every subscription.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::fanout::{Fanout, TickScratch};

/// Keep-alive ticks per `keepalive`.
const TICKS_PER_KEEPALIVE: u32 = 4;

/// A subscription whose last send was in keep-alive tick `t` sends a
/// keep-alive in tick `t + KEEPALIVE_TICKS`: at least `keepalive` later.
pub const KEEPALIVE_TICKS: u64 = TICKS_PER_KEEPALIVE as u64 + 1;

/// Starts the write tick (unless `write_delay` is zero), on its thread,
/// and the keep-alive tick, on `runtime`, where the subscribers they wake
/// run; both end with `shutdown`, which the task then passes on to every
/// subscription.
pub fn start(
    runtime: &Handle,
    fanout: Arc<Fanout>,
    write_delay: Duration,
    keepalive: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    if !write_delay.is_zero() {
        write_ticks(Arc::downgrade(&fanout), write_delay, shutdown.clone());
        write_prompt(&fanout, shutdown.clone());
    }
    runtime.spawn(async move {
        let mut keepalive_tick = every(keepalive / TICKS_PER_KEEPALIVE);
        // The first tick of an interval is immediate: skip it.
        keepalive_tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = keepalive_tick.tick() => fanout.keepalive_tick(),
            }
        }
        fanout.shut_down();
    })
}

/// Calls [`Fanout::tick`] every `period` on a thread of its own, until
/// `shutdown`, or until the fan-out is gone (a hub dropped without a
/// shutdown, in tests).
fn write_ticks(fanout: Weak<Fanout>, period: Duration, shutdown: CancellationToken) {
    let ticking = move || {
        let mut scratch = TickScratch::default();
        let mut next = Instant::now() + period;
        while !shutdown.is_cancelled() {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            let Some(fanout) = fanout.upgrade() else {
                return;
            };
            fanout.tick(&mut scratch);
            // A late tick is not made up for with a burst.
            next = (next + period).max(Instant::now());
        }
    };
    std::thread::Builder::new()
        .name("sluice-tick".into())
        .spawn(ticking)
        .expect("the write tick's thread starts");
}

/// Writes the fan-out's prompt list whenever dispatch adds to it, on a
/// thread of its own (the write tick's may be in the middle of a pass
/// through thousands of sockets), until `shutdown` or until the fan-out is
/// gone.
fn write_prompt(fanout: &Arc<Fanout>, shutdown: CancellationToken) {
    let weak = Arc::downgrade(fanout);
    let writing = move || {
        let mut scratch = TickScratch::default();
        while !shutdown.is_cancelled() {
            let Some(fanout) = weak.upgrade() else {
                return;
            };
            if !fanout.write_prompt(&mut scratch) {
                drop(fanout);
                // Unparked by dispatch, or by the shutdown; the timeout
                // only notices a fan-out dropped without one (in tests).
                std::thread::park_timeout(Duration::from_secs(1));
            }
        }
    };
    let thread = std::thread::Builder::new()
        .name("sluice-prompt".into())
        .spawn(writing)
        .expect("the prompt writer's thread starts");
    fanout.set_prompt_writer(thread.thread().clone());
}

fn every(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period.max(Duration::from_millis(1)));
    // A late tick is not made up for with a burst.
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}
