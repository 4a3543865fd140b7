//! A model test of the fan-out as a whole: random sequences of
//! subscriptions, publishes, write ticks, prompt writes and subscriber
//! tasks, after which every subscriber must have received exactly the
//! events that matched its topics when they were dispatched, each once and
//! in id order (a prefix of them, for one cut off as too slow or gone).
//!
//! Why: each of the fan-out's shortcuts (write coalescing, the tick's and
//! the prompt writer's writes through outlets, lanes with their catch-up,
//! hand-over and spill) has tests of its own, written for the cases its
//! author thought of. Together they make a state machine per subscriber
//! that no one can enumerate by hand; this test walks it at random.
//!
//! Everything runs on the test's thread, so a run is repeatable. What
//! happens while a pass writes (a publish, a topic change, a task woken by
//! something else) is an operation run from inside the pass's first write,
//! as a thread of the hub's would interleave it. A task runs only when its
//! waker was woken, or when it was busy writing and comes back, as an
//! executor would run it: a lost wake-up shows up as missing events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

use super::fanout::{ClientInfo, Fanout, TickScratch};
use super::mailbox::{Mailbox, Queued, Taken};
use super::outlet::{LastChunk, Outlet, Source, Wrote};
use crate::event::{Event, EventId};
use crate::metrics::Metrics;
use crate::topic::TopicFilter;

const TOPICS: [&str; 3] = ["x/a", "x/b", "y/c"];

/// What a subscriber subscribes to: one topic (a lane's reader), two, a
/// pattern, or nothing (a WebSocket session that unsubscribed from all).
#[derive(Debug, Clone)]
enum Topics {
    One(usize),
    Two(usize, usize),
    Pattern(&'static str),
    Nothing,
}

impl Topics {
    fn filter(&self) -> Arc<TopicFilter> {
        let names: Vec<&str> = match self {
            Topics::One(a) => vec![TOPICS[*a]],
            Topics::Two(a, b) => vec![TOPICS[*a], TOPICS[*b]],
            Topics::Pattern(pattern) => vec![pattern],
            Topics::Nothing => return Arc::default(),
        };
        Arc::new(TopicFilter::parse(names, 10).expect("valid topics"))
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A new subscriber; its task waits on its mailbox at once, or first
    /// replays for a while (busy); its connection has an outlet or not
    /// (TLS).
    Subscribe {
        topics: Topics,
        waits: bool,
        outlet: bool,
        buffer: usize,
    },
    /// Sixteen subscribers of one topic that wait, with outlets: enough
    /// for a pass through its lane to catch up with the events published
    /// meanwhile (every 16 readers).
    Crowd(usize),
    /// One dispatch of events on these topics.
    Publish(Vec<usize>),
    Tick,
    Prompt,
    /// The tasks whose wakers were woken run, and the busy ones finish.
    RunTasks,
    /// A subscriber's task is woken by something else (a keep-alive, a
    /// WebSocket command): it takes what it has, and is busy writing it.
    Interrupt(usize),
    /// A WebSocket session changes its topics.
    Refilter(usize, Topics),
    Leave(usize),
    /// A pass (`Tick` or `Prompt`) that runs the second operation from
    /// inside its first write, as another thread of the hub's would
    /// interleave it: a publish, a new subscriber, a task, the other
    /// pass.
    During(Box<Op>, Box<Op>),
    /// The sockets fill up (true), or have room again.
    Clog(bool),
}

/// A waker that notes that it was woken.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What happens inside a pass's first write.
type Hook = Arc<Mutex<Option<Box<dyn FnOnce() + Send>>>>;

/// A connection's socket: notes the events written to it. While the
/// sockets are clogged, a write puts out the first half of its batch
/// only, and leaves the rest for the task ([`Wrote::Part`]), as a full
/// socket does.
struct Socket {
    received: Arc<Mutex<Vec<u64>>>,
    hook: Hook,
    clogged: Arc<AtomicBool>,
    /// What a partial write left, for the task to write first.
    leftover: Mutex<Vec<u64>>,
}

impl Socket {
    /// The task writes what the tick left before anything of its own.
    fn write_leftover(&self) {
        let leftover = std::mem::take(&mut *self.leftover.lock());
        self.received.lock().extend(leftover);
    }
}

impl Outlet for Socket {
    fn write_through(
        &self,
        mailbox: &Mailbox,
        tick: u64,
        mut source: Source<'_>,
        _: &mut LastChunk,
    ) -> Wrote {
        // Held from the take to the write, as a connection's outlet holds
        // its lock: the tick and the prompt writer, on two threads, write
        // one after the other, each what it took.
        let mut received = self.received.lock();
        if !self.leftover.lock().is_empty() {
            return Wrote::Nothing;
        }
        let Some(batch) = source.take(mailbox, tick) else {
            return Wrote::Nothing;
        };
        let mut seqs: Vec<u64> = batch.iter().map(|queued| queued.event.id.seq).collect();
        source.done();
        let wrote = if self.clogged.load(Ordering::SeqCst) {
            *self.leftover.lock() = seqs.split_off(seqs.len() / 2);
            Wrote::Part
        } else {
            Wrote::All
        };
        received.extend(seqs);
        drop(received);
        let hook = self.hook.lock().take();
        if let Some(hook) = hook {
            hook();
        }
        wrote
    }
}

struct Subscriber {
    id: u64,
    mailbox: Arc<Mailbox>,
    filter: Arc<TopicFilter>,
    woken: Arc<Flag>,
    socket: Option<Arc<Socket>>,
    /// Its task took events and writes them: it polls again when done.
    busy: bool,
    /// Unregistered, or its mailbox ended (cut off).
    gone: bool,
    expected: Vec<u64>,
    /// What its task and the outlet wrote, in order.
    received: Arc<Mutex<Vec<u64>>>,
}

impl Subscriber {
    /// Runs its task: takes and "writes" everything, until it waits.
    fn run(&mut self) {
        self.busy = false;
        let waker = Waker::from(self.woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut batch = Vec::new();
        while let Poll::Ready(taken) = self.mailbox.poll_take(&mut cx, &mut batch) {
            if !self.record(taken, &mut batch) {
                return;
            }
        }
    }

    /// Notes what the task took and wrote; false if the mailbox ended.
    fn record(&mut self, taken: Taken, batch: &mut Vec<Queued>) -> bool {
        if let Some(socket) = &self.socket {
            socket.write_leftover();
        }
        let seqs = batch.drain(..).map(|queued| queued.event.id.seq);
        self.received.lock().extend(seqs);
        if let Taken::Ended(_) = taken {
            self.gone = true;
        }
        !self.gone
    }
}

struct World {
    fanout: Arc<Fanout>,
    subscribers: Vec<Subscriber>,
    next_seq: u64,
    hook: Hook,
    clogged: Arc<AtomicBool>,
}

impl World {
    fn new(write_delay: Duration) -> Self {
        World {
            fanout: Arc::new(Fanout::new(
                EventId::ZERO,
                Arc::new(Metrics::new("memory")),
                write_delay,
            )),
            subscribers: Vec::new(),
            next_seq: 1,
            hook: Hook::default(),
            clogged: Arc::default(),
        }
    }

    fn pick(&mut self, index: usize) -> Option<&mut Subscriber> {
        let live = self.subscribers.iter().filter(|s| !s.gone).count();
        if live == 0 {
            return None;
        }
        self.subscribers
            .iter_mut()
            .filter(|s| !s.gone)
            .nth(index % live)
    }
}

/// Runs `op` on the world. Ticks and prompt writes are run without the
/// world's lock, which their writes' hooks take.
fn apply(world: &Arc<Mutex<World>>, op: Op) {
    match op {
        Op::Tick | Op::Prompt => {
            let fanout = world.lock().fanout.clone();
            let scratch = &mut TickScratch::default();
            if matches!(op, Op::Tick) {
                fanout.tick(scratch);
            } else {
                fanout.write_prompt(scratch);
            }
        }
        Op::During(pass, inner) => {
            let hook = world.lock().hook.clone();
            let during = world.clone();
            *hook.lock() = Some(Box::new(move || apply(&during, *inner)));
            apply(world, *pass);
            // Not run if the pass wrote nothing: then it is dropped.
            hook.lock().take();
        }
        op => apply_locked(&mut world.lock(), op),
    }
}

fn apply_locked(world: &mut World, op: Op) {
    match op {
        Op::Subscribe {
            topics,
            waits,
            outlet,
            buffer,
        } => {
            let filter = topics.filter();
            let registration = world.fanout.register(
                filter.clone(),
                ClientInfo::sample(),
                buffer,
                CancellationToken::new(),
            );
            let received = Arc::new(Mutex::new(Vec::new()));
            let socket = outlet.then(|| {
                Arc::new(Socket {
                    received: received.clone(),
                    hook: world.hook.clone(),
                    clogged: world.clogged.clone(),
                    leftover: Mutex::default(),
                })
            });
            if let Some(socket) = &socket {
                registration.mailbox.set_outlet(socket.clone());
            }
            let mut subscriber = Subscriber {
                id: registration.id,
                mailbox: registration.mailbox,
                filter,
                woken: Arc::default(),
                socket,
                busy: !waits,
                gone: false,
                expected: Vec::new(),
                received,
            };
            if waits {
                subscriber.run();
            }
            world.subscribers.push(subscriber);
        }
        Op::Crowd(topic) => {
            for _ in 0..16 {
                let subscribe = Op::Subscribe {
                    topics: Topics::One(topic),
                    waits: true,
                    outlet: true,
                    buffer: 1000,
                };
                apply_locked(world, subscribe);
            }
        }
        Op::Publish(topics) => {
            let events: Vec<Arc<Event>> = topics
                .iter()
                .map(|&topic| {
                    let seq = world.next_seq;
                    world.next_seq += 1;
                    Event::sample_on(seq, TOPICS[topic])
                })
                .collect();
            for subscriber in world.subscribers.iter_mut().filter(|s| !s.gone) {
                let matching = events
                    .iter()
                    .filter(|e| subscriber.filter.matches(&e.topic));
                subscriber
                    .expected
                    .extend(matching.map(|event| event.id.seq));
            }
            world.fanout.dispatch(&events);
        }
        Op::RunTasks => {
            for subscriber in world.subscribers.iter_mut().filter(|s| !s.gone) {
                if subscriber.woken.0.swap(false, Ordering::SeqCst) || subscriber.busy {
                    subscriber.run();
                }
            }
        }
        Op::Interrupt(index) => {
            if let Some(subscriber) = world.pick(index) {
                let waker = Waker::from(subscriber.woken.clone());
                let mut cx = Context::from_waker(&waker);
                let mut batch = Vec::new();
                if let Poll::Ready(taken) = subscriber.mailbox.poll_take(&mut cx, &mut batch) {
                    subscriber.busy = subscriber.record(taken, &mut batch);
                }
            }
        }
        Op::Refilter(index, topics) => {
            let fanout = world.fanout.clone();
            if let Some(subscriber) = world.pick(index) {
                subscriber.filter = topics.filter();
                fanout.set_filter(subscriber.id, subscriber.filter.clone());
            }
        }
        Op::Clog(clogged) => world.clogged.store(clogged, Ordering::SeqCst),
        Op::Leave(index) => {
            let fanout = world.fanout.clone();
            if let Some(subscriber) = world.pick(index) {
                fanout.unregister(subscriber.id);
                subscriber.gone = true;
            }
        }
        Op::Tick | Op::Prompt | Op::During(..) => unreachable!("applied without the lock"),
    }
}

/// Ticks, prompt writes and tasks until everything queued is out.
fn drain(world: &Arc<Mutex<World>>) {
    apply(world, Op::Clog(false));
    for _ in 0..4 {
        apply(world, Op::Prompt);
        apply(world, Op::Tick);
        apply(world, Op::RunTasks);
    }
}

fn topics() -> impl Strategy<Value = Topics> {
    prop_oneof![
        3 => (0..TOPICS.len()).prop_map(Topics::One),
        1 => (0..TOPICS.len(), 0..TOPICS.len()).prop_map(|(a, b)| Topics::Two(a, b)),
        1 => prop_oneof![Just("x/*"), Just("**")].prop_map(Topics::Pattern),
        1 => Just(Topics::Nothing),
    ]
}

fn subscribe() -> impl Strategy<Value = Op> {
    (
        topics(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![2..6usize, Just(1000)],
    )
        .prop_map(|(topics, waits, outlet, buffer)| Op::Subscribe {
            topics,
            waits,
            outlet,
            buffer,
        })
}

/// A tick's or a prompt writer's pass with an operation run inside it.
fn during_a_pass() -> impl Strategy<Value = Op> {
    let pass = prop_oneof![Just(Op::Tick), Just(Op::Prompt)];
    pass.prop_flat_map(|pass| {
        let other = match pass {
            Op::Tick => Op::Prompt,
            _ => Op::Tick,
        };
        let inner = prop_oneof![
            3 => prop::collection::vec(0..TOPICS.len(), 1..4).prop_map(Op::Publish),
            1 => subscribe(),
            1 => (any::<usize>(), topics()).prop_map(|(i, t)| Op::Refilter(i, t)),
            1 => any::<usize>().prop_map(Op::Interrupt),
            1 => any::<usize>().prop_map(Op::Leave),
            1 => Just(Op::RunTasks),
            1 => Just(other),
        ];
        inner.prop_map(move |inner| Op::During(Box::new(pass.clone()), Box::new(inner)))
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => subscribe(),
        1 => (0..TOPICS.len()).prop_map(Op::Crowd),
        8 => prop::collection::vec(0..TOPICS.len(), 1..4).prop_map(Op::Publish),
        3 => Just(Op::Tick),
        2 => Just(Op::Prompt),
        3 => Just(Op::RunTasks),
        1 => any::<usize>().prop_map(Op::Interrupt),
        1 => (any::<usize>(), topics()).prop_map(|(i, t)| Op::Refilter(i, t)),
        1 => any::<usize>().prop_map(Op::Leave),
        3 => during_a_pass(),
        1 => any::<bool>().prop_map(Op::Clog),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_subscriber_gets_what_matched_once_and_in_order(
        ops in prop::collection::vec(op(), 1..80),
        delay in prop_oneof![
            // Ticks far apart: no pass is ever late on the clock.
            Just(Duration::from_secs(60)),
            // Every pass late from its 16th subscriber on: the tick and
            // the prompt writer wake the rest, for their tasks to write.
            Just(Duration::from_nanos(1)),
            // No delay: every event wakes its subscribers (and the tick
            // has nothing to do).
            Just(Duration::ZERO),
        ],
    ) {
        let world = Arc::new(Mutex::new(World::new(delay)));
        for op in ops {
            apply(&world, op);
        }
        drain(&world);
        for subscriber in &world.lock().subscribers {
            let received = subscriber.received.lock().clone();
            if subscriber.gone {
                prop_assert!(
                    subscriber.expected.starts_with(&received),
                    "subscriber {} (gone) received {:?}, expected a prefix of {:?}",
                    subscriber.id, received, subscriber.expected
                );
            } else {
                prop_assert_eq!(
                    &received, &subscriber.expected,
                    "subscriber {} ({:?})", subscriber.id, subscriber.filter.listed().collect::<Vec<_>>()
                );
            }
        }
    }
}

/// Wakes a task that runs on a thread of its own.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A subscriber of the threaded test, as its publisher sees it.
struct Watched {
    id: u64,
    filter: Arc<TopicFilter>,
    /// What its task and its outlet wrote, in order.
    received: Arc<Mutex<Vec<u64>>>,
    /// Its mailbox ended: it was cut off as too slow.
    ended: Arc<AtomicBool>,
    expected: Vec<u64>,
}

/// Starts a subscriber's task on a thread of its own: it takes and
/// "writes" what its mailbox holds, and parks until its waker unparks it,
/// so that a lost wake-up leaves it parked for good.
fn task(
    mailbox: Arc<Mailbox>,
    received: Arc<Mutex<Vec<u64>>>,
    ended: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut batch = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match mailbox.poll_take(&mut cx, &mut batch) {
                Poll::Ready(Taken::Ended(_)) => {
                    ended.store(true, Ordering::SeqCst);
                    return;
                }
                Poll::Ready(_) => {
                    let seqs = batch.drain(..).map(|queued| queued.event.id.seq);
                    received.lock().extend(seqs);
                }
                Poll::Pending => std::thread::park(),
            }
        }
    })
}

/// The same check with the hub's threads for real: a publisher, which
/// also changes subscribers' topics now and then, the write tick, the
/// prompt writer and a thread per subscriber's task, racing as they do in
/// the hub. What the model's hooks interleave at a pass's writes only,
/// this interleaves anywhere; a lost wake-up leaves a task parked for
/// good, and its events missing.
#[test]
fn every_subscriber_gets_what_matched_with_real_threads() {
    use std::thread;
    use std::time::Instant;

    let delay = Duration::from_millis(1);
    let fanout = Arc::new(Fanout::new(
        EventId::ZERO,
        Arc::new(Metrics::new("memory")),
        delay,
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let kinds = [
        Topics::One(0),
        Topics::One(0),
        Topics::One(1),
        Topics::Two(0, 2),
        Topics::Pattern("x/*"),
        Topics::Pattern("**"),
    ];
    let mut tasks = Vec::new();
    let mut subscribers = Vec::new();
    for (n, topics) in kinds.iter().cycle().take(24).enumerate() {
        let filter = topics.filter();
        // A third with a small buffer: their lanes spill when the tick is
        // late, and a busy one may be cut off.
        let buffer = if n % 3 == 0 { 64 } else { 1_000_000 };
        let registration = fanout.register(
            filter.clone(),
            ClientInfo::sample(),
            buffer,
            CancellationToken::new(),
        );
        let received = Arc::new(Mutex::new(Vec::new()));
        // Every other one has an outlet, which the tick and the prompt
        // writer write through.
        if n % 2 == 0 {
            registration.mailbox.set_outlet(Arc::new(Socket {
                received: received.clone(),
                hook: Hook::default(),
                clogged: Arc::default(),
                leftover: Mutex::default(),
            }));
        }
        let ended = Arc::new(AtomicBool::new(false));
        tasks.push(task(
            registration.mailbox,
            received.clone(),
            ended.clone(),
            stop.clone(),
        ));
        subscribers.push(Watched {
            id: registration.id,
            filter,
            received,
            ended,
            expected: Vec::new(),
        });
    }
    let ticking = {
        let (fanout, stop) = (fanout.clone(), stop.clone());
        thread::spawn(move || {
            let mut scratch = TickScratch::default();
            while !stop.load(Ordering::SeqCst) {
                thread::sleep(delay);
                fanout.tick(&mut scratch);
            }
        })
    };
    let prompting = {
        let (fanout, stop) = (fanout.clone(), stop.clone());
        thread::spawn(move || {
            let mut scratch = TickScratch::default();
            while !stop.load(Ordering::SeqCst) {
                if !fanout.write_prompt(&mut scratch) {
                    thread::park();
                }
            }
        })
    };
    fanout.set_prompt_writer(prompting.thread().clone());

    let mut seq = 0;
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..4_000 {
        if rng.usize(0..40) == 0 {
            // A WebSocket session changes its topics: from the next event
            // dispatched on, what it gets follows the new ones.
            let changing = &mut subscribers[rng.usize(0..24)];
            changing.filter = kinds[rng.usize(0..kinds.len())].filter();
            fanout.set_filter(changing.id, changing.filter.clone());
        }
        let events: Vec<Arc<Event>> = (0..rng.usize(1..4))
            .map(|_| {
                seq += 1;
                Event::sample_on(seq, TOPICS[rng.usize(0..TOPICS.len())])
            })
            .collect();
        for watched in &mut subscribers {
            let matching = events.iter().filter(|e| watched.filter.matches(&e.topic));
            watched.expected.extend(matching.map(|event| event.id.seq));
        }
        fanout.dispatch(&events);
        if rng.usize(0..20) == 0 {
            thread::sleep(Duration::from_micros(300));
        }
    }
    // Every event reaches its subscribers within a few ticks, unless a
    // wake-up was lost.
    let deadline = Instant::now() + Duration::from_secs(10);
    let all_there = || {
        subscribers.iter().all(|watched| {
            watched.ended.load(Ordering::SeqCst)
                || watched.received.lock().len() >= watched.expected.len()
        })
    };
    while !all_there() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    prompting.thread().unpark();
    for task in &tasks {
        task.thread().unpark();
    }
    for thread in tasks.into_iter().chain([ticking, prompting]) {
        thread.join().expect("no thread panicked");
    }
    for (n, watched) in subscribers.iter().enumerate() {
        let received = watched.received.lock();
        let expected = &watched.expected;
        if watched.ended.load(Ordering::SeqCst) {
            // Cut off as too slow: what it got, it got in order.
            assert!(
                expected.starts_with(&received),
                "subscriber {n}, cut off: not a prefix"
            );
            continue;
        }
        assert_eq!(received.len(), expected.len(), "subscriber {n}: count");
        if let Some(at) = received.iter().zip(expected).position(|(r, e)| r != e) {
            let around = at.saturating_sub(3)..(at + 5).min(received.len());
            panic!(
                "subscriber {n}: order or content, from {at}: received {:?}, expected {:?}",
                &received[around.clone()],
                &expected[around]
            );
        }
    }
}
