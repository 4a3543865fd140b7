//! The WebSocket transport: `GET /ws?topics=…` upgrades to RFC 6455.
//!
//! A socket is one ordered stream of events, like an SSE connection: one
//! subscription whose topics the client changes with `subscribe` and
//! `unsubscribe` commands. New topics are live from the moment they are
//! added; `last_event_id` (on the URL, or in a `subscribe` sent while the
//! socket has no topics) replays what was missed first, with the same
//! no-gap seam as SSE. Every event is one text frame, its envelope JSON,
//! the same bytes for every subscriber: the session writes each event's
//! frame as encoded once ([`crate::event::Event::ws_frame`]), a batch of them in one
//! write. A socket that nothing was sent to for `--keepalive` gets a ping,
//! and is closed if it has not answered by the next one.
//! A socket opened with a token is closed with `1008` when the token
//! expires; its commands are allowed what the token grants.
//!
//! On plain-text HTTP/1.1 the hub's write tick may write the session's
//! batches itself while the session waits (`super::outlet`); the session
//! holds the socket whenever it writes anything of its own.

pub(super) mod command;
mod handshake;
mod outgoing;

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::errors::ApiError;
use super::limits;
use super::outlet::{Framing, Given, TickWriter};
use super::subscribe::{Params, SubscribeParts, client_info, resume_from};
use crate::auth::{Caller, Expiry};
use crate::frame::{self, GAP_TYPE};
use crate::http::writev;
use crate::hub::fanout::{ClientInfo, Transport};
use crate::hub::presence::{Presence, Reason};
use crate::hub::subscription::{End, Item, Resume, SubscribeRequest, Subscription};
use crate::log::Appended;
use crate::metrics::Metrics;
use crate::server::Shared;
use crate::topic::TopicFilter;
use command::Command;
use handshake::{Handshake, Socket};
use outgoing::Outgoing;

/// Close codes (RFC 6455, section 7.4.1).
const GOING_AWAY: u16 = 1001;
const UNSUPPORTED_DATA: u16 = 1003;
const POLICY_VIOLATION: u16 = 1008;
const MESSAGE_TOO_BIG: u16 = 1009;
const INTERNAL_ERROR: u16 = 1011;
const TRY_AGAIN_LATER: u16 = 1013;

/// How long a close frame may take to go out before the socket is dropped:
/// a slow peer that is still reading gets its close code; a stalled one is
/// dropped after this.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// The most a socket reads at once, and its read buffer's first size.
/// tungstenite fills the buffer with zeros up to this size before every
/// read, including the ones that find nothing, which a session makes each
/// time it wakes to deliver: at the default of 128 KiB, that zeroing was
/// the biggest single cost of a WebSocket delivery, and it kept 128 KiB of
/// every socket's buffer resident (4 KiB kept 11.5 KiB per idle socket in
/// all, 1 KiB 8.4). Commands are small; a larger message grows the buffer
/// as it comes in, and is read 1 KiB at a time: a 1 MiB message in about
/// a thousand reads.
const READ_BUFFER: usize = 1024;

pub async fn upgrade(
    State(state): State<AppState>,
    handshake: Result<Handshake, ApiError>,
    request: SubscribeParts,
) -> Result<Response, ApiError> {
    let handshake = handshake?;
    // Topics on the URL are checked before the upgrade, so that a bad one
    // is a plain 400 (or 401, 403) like on the other transports; so is a
    // socket without a token where subscribing needs one.
    let caller = request.caller;
    caller.read_access()?;
    let filter = if request.params.topics.is_empty() {
        None
    } else {
        let topics = request.params.topics.iter().map(String::as_str);
        Some(caller.filter(topics, state.config.max_topics)?)
    };
    let max = state.max_body();
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let (response, socket) = handshake.accept(config);
    // The session writes a subscriber's stream: it runs on the delivery
    // runtime.
    let delivery = state.hub.delivery().clone();
    delivery.spawn(async move {
        let Some(socket) = socket.await else { return };
        let session =
            Session::new(state, caller, request.params, request.conn.as_ref(), filter).await;
        // The session gets a task of its own, sized by its loop alone: this
        // one holds the request's parts and the opening's futures (3,888
        // bytes in all), which the socket no longer needs.
        tokio::spawn(session.run(socket));
    });
    Ok(response)
}

/// What the loop does next.
enum Step {
    Send(Message),
    /// A batch of events' frames, written together.
    Deliver(Outgoing),
    /// Only what the write tick left of a write, and tungstenite's queue
    /// (the answer to a ping).
    Flush,
    Close(u16, &'static str),
    /// The peer closed: send the queued reply, then stop.
    Echo,
    Nothing,
    Stop(Reason),
}

struct Session {
    state: AppState,
    info: Arc<ClientInfo>,
    /// The connection, and the topics as the client listed them, in order.
    presence: Presence,
    /// The socket's subscription, with no topics while the client has
    /// none: its mailbox also brings the keep-alive tick, which paces the
    /// pings, and the shutdown, so the session waits on no timer or token
    /// of its own for them.
    subscription: Subscription,
    /// Cancelled by the fan-out when this socket falls behind its buffer,
    /// after it closed the subscription's mailbox.
    cut_off: CancellationToken,
    /// Who opened the socket: what its commands may do.
    caller: Caller,
    /// When the caller's token expires, closing the socket.
    expiry: Expiry,
    /// The connection's socket, on plain-text HTTP/1.1: the write tick may
    /// write the session's events to it.
    tcp: Option<Shared>,
    /// The write tick's way onto `tcp`, given with the first events (an
    /// idle socket never needs one), and to each subscription after.
    outlet: Given<Shared>,
}

impl Session {
    async fn new(
        state: AppState,
        caller: Caller,
        params: Params,
        conn: Option<&crate::server::ConnInfo>,
        filter: Option<TopicFilter>,
    ) -> Session {
        let info = client_info(&params, conn, Transport::Ws);
        let cut_off = CancellationToken::new();
        let topics = filter
            .as_ref()
            .map_or_else(Vec::new, |f| f.listed().map(String::from).collect());
        let (filter, resume) = match filter {
            Some(filter) => (filter, params.resume),
            None => (TopicFilter::default(), Resume::Live),
        };
        let subscription = open(&state, &info, &cut_off, filter, resume).await;
        let presence = state.hub.connect(info.clone(), topics, cut_off.clone());
        Session {
            state,
            info,
            presence,
            subscription,
            cut_off,
            expiry: caller.expiry(),
            caller,
            tcp: conn.and_then(|conn| conn.socket.clone()),
            outlet: Given::none(),
        }
    }

    /// The session's loop. It uses the socket whole, not split into a sink
    /// and a stream: it reads or writes, never both at once, and a split
    /// would take a lock on every read, write and flush.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would keep its arguments twice (below)"
    )]
    fn run(mut self, mut socket: Socket) -> impl Future<Output = ()> {
        // An async block, not an async fn: an async fn keeps its arguments
        // twice in its future, once as passed and once as moved into its
        // body (rust-lang/rust#62958), and the session and its socket are
        // 856 bytes that every socket's task carries, idle or not.
        async move {
            let mut awaiting_pong = false;
            loop {
                // The socket learns of shutdown from its subscription
                // (`End::Closed`), and of being cut off (`End::CutOff`, once it
                // has sent what its mailbox held), which it polls anyway:
                // polling the shutdown token on every wake-up as well would
                // lock the one mutex that every session shares, and the cut-off
                // token's would be taken as often. Only a send that waits for
                // room watches the cut-off token, below.
                let step = tokio::select! {
                    biased;
                    _ = self.expiry.wait() => Step::Close(POLICY_VIOLATION, TOKEN_EXPIRED),
                    // Read under the outlet's lock: a read may send the
                    // answer to a ping read before, which must not land
                    // in a write of the tick's.
                    message = poll_fn(|cx| match self.outlet.get() {
                        Some(outlet) => outlet.poll_held(|| socket.poll_next_unpin(cx)),
                        None => socket.poll_next_unpin(cx),
                    }) => match message {
                        None => Step::Stop(Reason::Closed),
                        // The library queued the reply to the peer's close
                        // frame: flush it, so the close is clean on both sides.
                        Some(Ok(Message::Close(_))) => Step::Echo,
                        // Boxed, as the close and the echo below: a socket's
                        // task is as large as the largest state of this loop,
                        // idle or not, and a command's (a publish, a subscribe
                        // and its replay's first page) was the largest by far
                        // (the loop's future: 3,056 bytes, 2,336 with the three
                        // boxed). They are rare; a delivery allocates nothing.
                        Some(Ok(Message::Text(text))) => Step::Send(Box::pin(self.answer(&text)).await),
                        Some(Ok(Message::Binary(_))) => {
                            Step::Close(UNSUPPORTED_DATA, "binary frames are not accepted: send JSON text")
                        }
                        Some(Ok(Message::Pong(_))) => {
                            awaiting_pong = false;
                            Step::Nothing
                        }
                        // Pings are answered by the WebSocket library itself,
                        // which queued the answer: flush it.
                        Some(Ok(Message::Ping(_))) => Step::Flush,
                        // Never read, only sent.
                        Some(Ok(Message::Frame(_))) => Step::Nothing,
                        Some(Err(tungstenite::Error::Capacity(_))) => {
                            Step::Close(MESSAGE_TOO_BIG, "message larger than the limit (--max-body)")
                        }
                        Some(Err(_)) => Step::Stop(Reason::Error),
                    },
                    item = self.subscription.next() => match item {
                        Ok(Item::Events(batch)) => {
                            self.presence.delivered(batch);
                            let frames = batch.iter().map(|q| q.event.ws_frame());
                            Step::Deliver(Outgoing::new(frame::coalesce(frames)))
                        }
                        Ok(Item::Gap { requested, oldest }) => Step::Send(Message::Text(
                            frame::control_json(
                                GAP_TYPE,
                                Some(frame::gap_payload(&requested.to_string(), oldest)),
                            )
                            .into(),
                        )),
                        // Nothing was sent for `keepalive`: a ping instead of a
                        // keep-alive frame, which the peer must answer by the
                        // next one.
                        Ok(Item::KeepAlive) if awaiting_pong => {
                            Step::Close(POLICY_VIOLATION, "no answer to ping")
                        }
                        // The tick left part of a write: it goes out first.
                        Ok(Item::Flush) => Step::Flush,
                        Ok(Item::KeepAlive) => {
                            awaiting_pong = true;
                            Step::Send(Message::Ping(Bytes::new()))
                        }
                        Err(End::Closed) => Step::Close(GOING_AWAY, "the hub is shutting down"),
                        Err(End::Failed) => Step::Close(INTERNAL_ERROR, "history unavailable; reconnect"),
                        Err(End::CutOff) => Step::Close(TRY_AGAIN_LATER, TOO_SLOW),
                    },
                };
                // The session writes next, if anything: the tick waits.
                if let Some(outlet) = self.outlet.get() {
                    outlet.hold();
                }
                let (message, mut outgoing) = match step {
                    Step::Nothing => {
                        self.release();
                        continue;
                    }
                    Step::Stop(reason) => {
                        self.presence.end(reason);
                        break;
                    }
                    Step::Echo => {
                        self.presence.end(Reason::Closed);
                        let echo = async {
                            self.write_leftover().await?;
                            socket.flush().await
                        };
                        let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, echo)).await;
                        break;
                    }
                    Step::Close(code, reason) => {
                        Box::pin(self.close(&mut socket, None, code, reason)).await;
                        break;
                    }
                    Step::Send(message) => (Some(message), None),
                    Step::Deliver(outgoing) => (None, Some(outgoing)),
                    Step::Flush => (None, None),
                };
                // Bytes on the wire, frame headers included.
                let bytes = match (&message, &outgoing) {
                    (Some(Message::Text(text)), _) => {
                        frame::ws_text_header(text.len()).as_bytes().len() + text.len()
                    }
                    (_, Some(outgoing)) => outgoing.len(),
                    _ => 0,
                };
                // Counted before the send, as the write tick and the SSE and
                // NDJSON writers count theirs: a client that received the
                // frame, then reads `/metrics`, finds it counted.
                self.presence.sent(bytes);
                // A stalled peer blocks the send; being cut off ends it, and the
                // close frame goes out once the peer reads again.
                let sent = {
                    let send = pin!(async {
                        // The rest of a frame the tick began, first.
                        self.write_leftover().await?;
                        match (message, &mut outgoing) {
                            (Some(message), _) => socket.send(message).await,
                            (None, Some(outgoing)) => outgoing.write(&mut socket).await,
                            (None, None) => socket.flush().await,
                        }
                    });
                    writev::unless_cut_off(send, &self.cut_off).await
                };
                match sent {
                    Some(Ok(())) => {
                        if outgoing.is_some() {
                            self.give_outlet();
                        }
                        // All of it is out, tungstenite's queue too.
                        self.release();
                    }
                    Some(Err(_)) => {
                        self.presence.end(Reason::Error);
                        break;
                    }
                    None => {
                        let unfinished = outgoing.map(|mut outgoing| {
                            outgoing.cut_short();
                            outgoing
                        });
                        Box::pin(self.close(&mut socket, unfinished, TRY_AGAIN_LATER, TOO_SLOW))
                            .await;
                        break;
                    }
                }
            }
        }
    }

    /// What the write tick left of a frame, written before anything of the
    /// session's (see `crate::http::outlet`).
    async fn write_leftover(&self) -> std::io::Result<()> {
        match (self.outlet.get(), &self.tcp) {
            (Some(outlet), Some(tcp)) => {
                poll_fn(|cx| outlet.poll_write_leftover(cx, tcp.as_ref())).await
            }
            _ => Ok(()),
        }
    }

    /// The session's writes are all out, and tungstenite's queue: the
    /// write tick may write while it waits.
    fn release(&self) {
        if let Some(outlet) = self.outlet.get() {
            outlet.release();
        }
    }

    /// Sends a close frame, after the rest of a frame cut short, with up
    /// to `CLOSE_GRACE` for them to go out.
    async fn close(
        &mut self,
        socket: &mut Socket,
        unfinished: Option<Outgoing>,
        code: u16,
        reason: &'static str,
    ) {
        self.presence.end(match code {
            GOING_AWAY => Reason::Shutdown,
            TRY_AGAIN_LATER => Reason::Slow,
            POLICY_VIOLATION => Reason::Expired,
            _ => Reason::Error,
        });
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let closing = async {
            // The rest of a frame the tick began, before anything else.
            self.write_leftover().await?;
            if let Some(mut unfinished) = unfinished {
                unfinished.write(socket).await?;
            }
            socket.send(Message::Close(Some(frame))).await
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, closing).await;
    }

    /// Lets the write tick write the session's events from now on, once
    /// it has events and if its socket allows (see `crate::http::outlet`).
    fn give_outlet(&mut self) {
        let Some(tcp) = &self.tcp else { return };
        if self.outlet.get().is_some() {
            return;
        }
        let writer = TickWriter {
            framing: Framing::WebSocket,
            meter: self.presence.meter(),
            info: self.info.clone(),
            expires: self.expiry.deadline().map(Into::into),
        };
        let outlet = self.outlet.give(tcp.clone(), writer);
        self.subscription.mailbox().set_outlet(outlet);
    }

    /// Carries out one command and returns the reply frame.
    async fn answer(&mut self, text: &str) -> Message {
        let received = Instant::now();
        let hub = self.state.hub.clone();
        let refuse = |op: Option<&str>, error: ApiError| refusal(hub.metrics(), op, error);
        let parsed = command::parse(text).and_then(|command| self.allowed(command));
        let reply = match parsed {
            Err(refused) => refuse(refused.op.as_deref(), refused.error),
            Ok(Command::Ping) => json!({ "ok": true, "op": "pong" }),
            Ok(Command::Publish(event))
                if let Err(error) = self.caller.may_publish_to([event.topic.as_str()]) =>
            {
                refuse(Some("publish"), error)
            }
            Ok(Command::Publish(event)) => match hub.publish(vec![event]).await {
                Ok(outcomes) => {
                    hub.metrics().published_in(received);
                    match &outcomes[0] {
                        Appended::New(event) => {
                            json!({ "ok": true, "op": "publish", "id": event.id })
                        }
                        Appended::Duplicate(id) => {
                            json!({ "ok": true, "op": "publish", "id": id, "duplicate": true })
                        }
                    }
                }
                Err(error) => refuse(Some("publish"), error.into()),
            },
            Ok(Command::Subscribe {
                topics,
                last_event_id,
            }) => match self.subscribe(topics, last_event_id.as_deref()).await {
                Ok(()) => {
                    json!({ "ok": true, "op": "subscribe", "topics": self.presence.topics() })
                }
                Err(error) => refuse(Some("subscribe"), error),
            },
            Ok(Command::Unsubscribe { topics }) => match self.unsubscribe(&topics).await {
                Ok(()) => {
                    json!({ "ok": true, "op": "unsubscribe", "topics": self.presence.topics() })
                }
                Err(error) => refuse(Some("unsubscribe"), error),
            },
        };
        Message::Text(reply.to_string().into())
    }

    /// A `publish` counts against the socket's `publish_rate` allowance.
    fn allowed(&self, command: Command) -> Result<Command, command::Refused> {
        if let Command::Publish(_) = command {
            let publisher = limits::publisher(self.caller.subject(), self.info.remote_addr);
            limits::take_publish(&self.state, publisher).map_err(|error| command::Refused {
                op: Some("publish".into()),
                error,
            })?;
        }
        Ok(command)
    }

    async fn subscribe(
        &mut self,
        topics: Vec<String>,
        last_event_id: Option<&str>,
    ) -> Result<(), ApiError> {
        let max = self.state.config.max_topics;
        TopicFilter::parse(topics.iter().map(String::as_str), max)?;
        let resume = last_event_id.map(resume_from).transpose()?;
        if resume.is_some() && !self.presence.topics().is_empty() {
            return Err(ApiError::bad_request(
                "already_subscribed",
                "last_event_id is accepted only while the socket has no topics: a socket is \
                 one ordered stream; unsubscribe from everything, or open a new socket, to resume",
            ));
        }
        let mut listed = self.presence.topics().to_vec();
        for topic in topics {
            if !listed.contains(&topic) {
                listed.push(topic);
            }
        }
        let filter = self.caller.filter(listed.iter().map(String::as_str), max)?;
        match resume {
            // The socket had no topics: its new subscription replays first.
            Some(resume) => self.reopen(filter, resume).await,
            None => self.subscription.set_filter(filter),
        }
        self.presence.set_topics(listed);
        Ok(())
    }

    /// Replaces the socket's subscription, whose mailbox gets the outlet
    /// if the session has given one.
    async fn reopen(&mut self, filter: TopicFilter, resume: Resume) {
        self.subscription = open(&self.state, &self.info, &self.cut_off, filter, resume).await;
        if let Some(outlet) = self.outlet.shared() {
            self.subscription.mailbox().set_outlet(outlet);
        }
    }

    async fn unsubscribe(&mut self, topics: &[String]) -> Result<(), ApiError> {
        TopicFilter::parse(topics.iter().map(String::as_str), usize::MAX)?;
        let remaining: Vec<String> = self
            .presence
            .topics()
            .iter()
            .filter(|t| !topics.contains(t))
            .cloned()
            .collect();
        if remaining.is_empty() {
            // A new subscription, with no topics: what the old one had
            // queued is dropped, and a `subscribe` may resume again.
            self.reopen(TopicFilter::default(), Resume::Live).await;
        } else {
            let filter = self
                .caller
                .filter(remaining.iter().map(String::as_str), usize::MAX)?;
            self.subscription.set_filter(filter);
        }
        self.presence.set_topics(remaining);
        Ok(())
    }
}

/// Opens the socket's subscription.
async fn open(
    state: &AppState,
    info: &Arc<ClientInfo>,
    cut_off: &CancellationToken,
    filter: TopicFilter,
    resume: Resume,
) -> Subscription {
    state
        .hub
        .subscribe(SubscribeRequest {
            filter,
            resume,
            info: info.clone(),
            on_cut_off: cut_off.clone(),
        })
        .await
}

const TOO_SLOW: &str = "too slow: fell behind its buffer; reconnect with last_event_id";
const TOKEN_EXPIRED: &str = "the token expired: reconnect with a fresh one";

/// An error frame: `{"ok": false, "op"?, "error": {"code", "message"}}`,
/// counted as a rejection.
fn refusal(metrics: &Metrics, op: Option<&str>, error: ApiError) -> Value {
    metrics.rejected(error.code);
    let mut reply = json!({
        "ok": false,
        "error": { "code": error.code, "message": error.message },
    });
    if let Some(op) = op {
        reply["op"] = json!(op);
    }
    if let Some(seconds) = error.retry_after {
        reply["error"]["retry_after"] = json!(seconds);
    }
    reply
}
