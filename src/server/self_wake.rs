//! A connection's task that wakes itself is polled again at once, rather
//! than sent through the scheduler.
//!
//! hyper (1.x) hands a request's body to the handler through a channel of
//! one chunk, and taking the chunk wakes the connection's dispatcher, so
//! that it reads the next. The handler runs inside the connection's task:
//! every request with a body (every publish) wakes that task from within
//! its own poll. tokio's multi-threaded scheduler takes such a wake for a
//! yield: it queues the task behind the worker's others and wakes an idle
//! worker to steal it. On a 2-core host at 1,000 publishes a second that
//! was a thread woken per publish, and a fifth of the publishes' CPU.
//!
//! [`serve`] polls the connection's future with a waker of its own. A wake
//! that comes while the future is being polled, from whichever thread, is
//! noted, and the future is polled again before the poll returns; a wake
//! at any other time goes to the task's waker, as it would without it.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Polls again, at most, within one poll of the task: a future that keeps
/// waking itself (hyper's dispatcher does, after 16 pipelined requests,
/// to let other tasks run) then yields to the scheduler.
const AGAIN: usize = 2;

/// Runs `future`, polling it again at once when it wakes itself.
pub async fn serve<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let wakes = Arc::new(Wakes::default());
    let waker = Waker::from(wakes.clone());
    std::future::poll_fn(|cx| wakes.poll(future.as_mut(), &waker, cx)).await
}

/// The wakes of one future.
#[derive(Default)]
struct Wakes {
    /// The task's own waker, for the wakes that come between polls.
    task: AtomicWaker,
    /// The future is being polled.
    polling: AtomicBool,
    /// A wake came since the last poll began.
    woken: AtomicBool,
}

impl Wakes {
    fn poll<F: Future>(
        &self,
        mut future: Pin<&mut F>,
        waker: &Waker,
        cx: &mut Context<'_>,
    ) -> Poll<F::Output> {
        self.task.register(cx.waker());
        // A wake from before this poll went to the task, which is why it is
        // polled now: it asks for no poll again. (A swap, not a store: it
        // reads the flag its waker set, and so sees what the waker did
        // before waking.)
        self.woken.swap(false, SeqCst);
        for _ in 0..=AGAIN {
            self.polling.store(true, SeqCst);
            let polled = future.as_mut().poll(&mut Context::from_waker(waker));
            self.polling.store(false, SeqCst);
            // A wake that read `polling` as true set `woken` before: it is
            // seen here. One that read it as false went to the task.
            if polled.is_ready() || !self.woken.swap(false, SeqCst) {
                return polled;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, SeqCst);
        if !self.polling.load(SeqCst) {
            self.task.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Poll;

    /// A future that wakes itself during its first `self_wakes` polls, then
    /// is ready; counts its polls.
    struct WakesItself {
        self_wakes: usize,
        polls: Arc<AtomicUsize>,
    }

    impl Future for WakesItself {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let polls = self.polls.fetch_add(1, SeqCst) + 1;
            if polls <= self.self_wakes {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(())
        }
    }

    /// Counts the wakes that reach the task.
    #[derive(Default)]
    struct TaskWakes(AtomicUsize);

    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    fn poll_once(future: Pin<&mut impl Future>, task: &Arc<TaskWakes>) -> bool {
        let waker = Waker::from(task.clone());
        future.poll(&mut Context::from_waker(&waker)).is_ready()
    }

    /// One poll of a future that wakes itself during its first
    /// `self_wakes` polls: whether it was ready, how many times it was
    /// polled, and how many wakes reached the task.
    fn poll_one_that_wakes_itself(self_wakes: usize) -> (bool, usize, usize) {
        let polls = Arc::new(AtomicUsize::new(0));
        let task = Arc::new(TaskWakes::default());
        let future = serve(WakesItself {
            self_wakes,
            polls: polls.clone(),
        });
        let ready = poll_once(pin!(future), &task);
        (ready, polls.load(SeqCst), task.0.load(SeqCst))
    }

    #[test]
    fn a_wake_during_the_poll_is_a_poll_again_not_a_wake_of_the_task() {
        // Ready in one poll of the task, which was not woken.
        assert_eq!(poll_one_that_wakes_itself(1), (true, 2, 0));
    }

    #[test]
    fn a_future_that_keeps_waking_itself_yields_to_the_scheduler() {
        // Woken once, to be polled again later.
        assert_eq!(poll_one_that_wakes_itself(10), (false, AGAIN + 1, 1));
    }

    /// Ready once `ready` is set; keeps the waker of its last poll, counts
    /// its polls, and takes `slow` more to return `Pending`.
    struct Flagged {
        ready: Arc<AtomicBool>,
        waker: Arc<parking_lot::Mutex<Option<Waker>>>,
        polls: Arc<AtomicUsize>,
        slow: std::time::Duration,
    }

    impl Future for Flagged {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, SeqCst);
            *self.waker.lock() = Some(cx.waker().clone());
            if self.ready.load(SeqCst) {
                return Poll::Ready(());
            }
            let begun = std::time::Instant::now();
            while begun.elapsed() < self.slow {
                std::hint::spin_loop();
            }
            Poll::Pending
        }
    }

    #[test]
    fn a_wake_between_polls_reaches_the_task_and_asks_for_one_poll() {
        let (ready, waker, polls) = (Arc::default(), Arc::default(), Arc::default());
        let task = Arc::new(TaskWakes::default());
        let future = serve(Flagged {
            ready: Arc::clone(&ready),
            waker: Arc::clone(&waker),
            polls: Arc::clone(&polls),
            slow: std::time::Duration::ZERO,
        });
        let mut future = pin!(future);
        let wake = || waker.lock().take().unwrap().wake();
        assert!(!poll_once(future.as_mut(), &task));
        wake();
        assert_eq!(task.0.load(SeqCst), 1);
        assert!(!poll_once(future.as_mut(), &task));
        assert_eq!(polls.load(SeqCst), 2, "one poll for the one wake");
        ready.store(true, SeqCst);
        wake();
        assert_eq!(task.0.load(SeqCst), 2);
        assert!(poll_once(future.as_mut(), &task));
    }

    /// A wake from another thread while the task polls is never lost: the
    /// poll either sees what the wake announced, or the task is woken. The
    /// future's polls take 0-3 µs, so that wakes land before, during and
    /// after them.
    #[test]
    fn a_wake_from_another_thread_during_a_poll_is_not_lost() {
        for round in 0..2_000 {
            let (ready, waker) = (Arc::<AtomicBool>::default(), Arc::default());
            let task = Arc::new(TaskWakes::default());
            let future = serve(Flagged {
                ready: Arc::clone(&ready),
                waker: Arc::clone(&waker),
                polls: Arc::default(),
                slow: std::time::Duration::from_nanos(round % 4 * 1_000),
            });
            let mut future = pin!(future);
            assert!(!poll_once(future.as_mut(), &task));
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let other = {
                let (barrier, waker) = (barrier.clone(), waker.lock().clone().unwrap());
                let ready = ready.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    ready.store(true, SeqCst);
                    waker.wake();
                })
            };
            barrier.wait();
            let ready_now = poll_once(future.as_mut(), &task);
            other.join().unwrap();
            assert!(
                ready_now || task.0.load(SeqCst) > 0,
                "the wake was lost: not seen by the poll, not passed to the task"
            );
        }
    }
}
