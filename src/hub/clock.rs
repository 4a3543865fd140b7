//! The hub's shared ticks, one task each instead of a timer per connection:
//! a timer per connection costs memory while idle and timer-wheel work on
//! every event, and ten thousand of them do the same thing at nearly the
//! same moments.
//!
//! - The write tick ends each `write_delay` period: subscribers whose
//!   events waited for it are woken to write them as one batch
//!   ([`Fanout::tick`]).
//! - The keep-alive tick counts quarters of `keepalive` in every
//!   subscriber's mailbox ([`Fanout::keepalive_tick`]); a subscription that
//!   has sent nothing for [`KEEPALIVE_TICKS`] of them sends a keep-alive,
//!   after a silence between `keepalive` and 1.25 times that.
//!
//! At shutdown the task closes every mailbox ([`Fanout::shut_down`]),
//! which ends every subscription.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::fanout::Fanout;

/// Keep-alive ticks per `keepalive`.
const TICKS_PER_KEEPALIVE: u32 = 4;

/// A subscription whose last send was in keep-alive tick `t` sends a
/// keep-alive in tick `t + KEEPALIVE_TICKS`: at least `keepalive` later.
pub const KEEPALIVE_TICKS: u64 = TICKS_PER_KEEPALIVE as u64 + 1;

/// Starts the write tick (unless `write_delay` is zero) and the keep-alive
/// tick on `runtime`, where the subscribers they wake run; both end with
/// `shutdown`, which the task then passes on to every subscription.
pub fn start(
    runtime: &Handle,
    fanout: Arc<Fanout>,
    write_delay: Duration,
    keepalive: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    runtime.spawn(async move {
        let mut write_tick = (!write_delay.is_zero()).then(|| every(write_delay));
        let mut keepalive_tick = every(keepalive / TICKS_PER_KEEPALIVE);
        // The first tick of an interval is immediate: skip it.
        keepalive_tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = async { write_tick.as_mut()?.tick().await; Some(()) }, if write_tick.is_some() => {
                    fanout.tick();
                }
                _ = keepalive_tick.tick() => fanout.keepalive_tick(),
            }
        }
        fanout.shut_down();
    })
}

fn every(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period.max(Duration::from_millis(1)));
    // A late tick is not made up for with a burst.
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}
