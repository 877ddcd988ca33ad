//! The servers every card runs: TCP echo (RFC 862) on port 7 and a small
//! HTTP/1.1 server on port 80, built so that no client can take them off
//! the network: not a slow one, not a silent one, not a hostile one, not
//! many at once.
//!
//! ## A pool of sockets per service
//!
//! smoltcp has no listen backlog: one TCP socket in LISTEN takes one
//! connection, and a SYN that finds no listening socket is answered with a
//! reset. So each service owns a fixed pool of sockets ([`Pool`]), created
//! once (memory is bounded by construction: nothing here grows with what
//! clients do), of two kinds:
//!
//! - **serving slots** ([`ECHO_CONNECTIONS`], [`HTTP_CONNECTIONS`]) with
//!   full-size buffers, which serve a client;
//! - **refusing slots** ([`REFUSING_SLOTS`] per service) with tiny buffers,
//!   which take a connection only when every serving slot is busy and close
//!   it cleanly: HTTP answers `503 Service Unavailable`, echo closes at once
//!   (a FIN, not a reset).
//!
//! smoltcp offers a segment to its sockets in the order they were added
//! (`SocketSet` is a vector), so the serving slots, added first, take every
//! new connection while one of them listens; the refusing ones only get the
//! overflow. A slot listens again as soon as its connection is over.
//!
//! ## Every connection ends, and its slot comes back
//!
//! Each slot moves through [`Phase`]s:
//!
//! ```text
//!   Listening ──SYN──▶ Open ──(done / refused / error)──▶ Closing ──▶ Listening
//!                       │  └──(peer reset)─────────────────────────────▲
//!                       └──(timeout)──▶ Aborted (RST sent) ────────────┘
//! ```
//!
//! and every path out of `Open` leads back to `Listening`: the client
//! closes, the client resets, the server closes after its answer, a timeout
//! aborts. The timeouts, checked on every polling round (the idle loop runs
//! one at least every 500 ms):
//!
//! - **request timeout** (HTTP, `net.request_ms=`, default 5 s): the whole
//!   request head must arrive within it, else `408 Request Timeout`;
//! - **idle timeout** (`net.idle_ms=`, default 60 s): an open connection
//!   that moves no byte for that long is aborted (a client that neither
//!   sends nor reads);
//! - **close timeout** ([`CLOSE_TIMEOUT`]): after the server's FIN, or on a
//!   refusing slot, a connection that makes no progress for that long is
//!   aborted (a client that never closes its side); the same for a
//!   handshake that never completes (SYN-RECEIVED).
//!
//! An abort resets that one connection; no other client ever sees a reset
//! because of it.
//!
//! ## The services
//!
//! **Echo** returns every byte it receives, in order, as fast as the client
//! takes them: it moves at most as many bytes as the send buffer has room
//! for, so a client that sends without reading is slowed down by TCP's own
//! flow control, never by dropped data. When the client closes its side,
//! the server closes its own once everything is echoed.
//!
//! **HTTP** collects the request head (at most
//! [`http_request::MAX_HEAD`] bytes, in a buffer each slot owns) and hands
//! it to the parser (`http_request.rs`, a pure function); a refused request
//! gets its 4xx/5xx and a close, a valid one is routed (`http::route`,
//! `queue_page::route`) and answered (`http::respond`, which sees every
//! card, so the answer is made between card polls in `stack::poll_all`). Every response says
//! `Connection: close` and the server closes after it; bytes the client
//! still sends meanwhile are read and dropped, so it is never blocked from
//! reading its answer.
//!
//! ## Counters
//!
//! [`ServiceCounters`] per service: slots in use, connections accepted,
//! refused, closed, timed out, reset, requests rejected, and the bytes held
//! in request and response buffers and queued in socket buffers. When no
//! client is connected, `in use`, `held` and `queued` are 0 again: the
//! status page (`/`) and the shell's `sockets` command show them, and the
//! QEMU scenario `net-stress` checks exactly that after its load.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};

use super::http::{self, Answer};
use super::http_request::{self, Parsed};
use super::now;

/// The echo port (RFC 862).
pub const ECHO_PORT: u16 = 7;
/// The HTTP port.
pub const HTTP_PORT: u16 = 80;

/// Echo connections served at once.
pub const ECHO_CONNECTIONS: usize = 32;
/// HTTP connections served at once.
pub const HTTP_CONNECTIONS: usize = 8;
/// Sockets per service that take the connections beyond those and refuse them.
pub const REFUSING_SLOTS: usize = 8;
/// Serving echo slots with large buffers: the first ones, so a lone bulk
/// transfer gets a large TCP window (smoltcp hands connections to sockets
/// in order; 64 KiB moves about four times as fast as 16 KiB under TCG).
const ECHO_LARGE_SLOTS: usize = 4;
/// Their buffers, each way.
const ECHO_LARGE_BUFFER: usize = 64 * 1024;
/// The other serving echo slots' buffers, each way.
const ECHO_BUFFER: usize = 16 * 1024;
/// HTTP receive buffer: the head is copied out into the slot's own buffer.
const HTTP_RX_BUFFER: usize = 2048;
/// HTTP send buffer: a larger response is queued as it drains.
const HTTP_TX_BUFFER: usize = 16 * 1024;
/// Refusing sockets' buffers, each way: a 503 fits.
const REFUSING_BUFFER: usize = 512;
/// Bytes the echo server moves at a time.
const ECHO_SCRATCH: usize = 16 * 1024;

/// Default for `net.request_ms=`: how long a client has to send its request head.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for `net.idle_ms=`: how long an open connection may move nothing.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a closing (or refused) connection may make no progress.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a slot is in its connection's life (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// In LISTEN, waiting for a SYN.
    Listening,
    /// A client connected at `since` (from SYN-RECEIVED on).
    Open { since: Instant },
    /// The server has closed its side (or refused); waiting for the end.
    Closing,
    /// Aborted: the reset goes out with the next interface poll, then the
    /// slot listens again.
    Aborted,
}

/// How a connection ended, for the counters and the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Both sides closed.
    Closed,
    /// The client reset the connection (or it vanished under smoltcp).
    Reset,
}

/// What a slot's service step asks of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Keep the connection open.
    Continue,
    /// The server is done: close its side.
    Close,
}

/// The counters of one service (see the module docs). `in_use`,
/// `refusing`, `held` and `queued` are levels; the rest count up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    /// The port.
    pub port: u16,
    /// Serving slots with a connection.
    pub in_use: usize,
    /// Serving slots.
    pub capacity: usize,
    /// The most serving slots in use at once so far.
    pub peak: usize,
    /// Refusing slots with a connection.
    pub refusing: usize,
    /// Refusing slots.
    pub refusing_capacity: usize,
    /// Connections a serving slot took.
    pub accepted: u64,
    /// Connections a refusing slot took (503 or an immediate close).
    pub refused: u64,
    /// Connections that ended with both sides closed.
    pub closed: u64,
    /// Connections a timeout aborted (or, for HTTP requests, answered 408).
    pub timed_out: u64,
    /// Connections the client reset.
    pub reset: u64,
    /// HTTP requests refused as malformed or too large (4xx/5xx from the parser).
    pub rejected: u64,
    /// Bytes held in the slots' request and response buffers.
    pub held: usize,
    /// Bytes queued in the sockets' receive and send buffers.
    pub queued: usize,
    /// Bytes of socket buffers the pool owns (fixed).
    pub socket_buffers: usize,
}

impl fmt::Display for ServiceCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "port {}: in use {}/{} (peak {}), refusing {}/{}, accepted {}, refused {}, closed {}, timed out {}, reset {}, rejected {}, held {} B, queued {} B, socket buffers {} KiB",
            self.port,
            self.in_use,
            self.capacity,
            self.peak,
            self.refusing,
            self.refusing_capacity,
            self.accepted,
            self.refused,
            self.closed,
            self.timed_out,
            self.reset,
            self.rejected,
            self.held,
            self.queued,
            self.socket_buffers / 1024
        )
    }
}

/// One socket of a pool and what the pool knows about its connection.
struct Slot<S> {
    handle: SocketHandle,
    /// A refusing slot (see the module docs).
    refuses: bool,
    phase: Phase,
    /// The last time the connection made progress (see [`Pool::progress`]).
    last_progress: Instant,
    /// `(receive queue, send queue, state)` at the last look.
    last_seen: (usize, usize, tcp::State),
    /// The service's own per-connection state.
    state: S,
}

/// The sockets of one service.
struct Pool<S> {
    port: u16,
    slots: Vec<Slot<S>>,
    counters: ServiceCounters,
}

/// An HTTP slot's request and response.
#[derive(Default)]
struct HttpState {
    /// The request head so far (capacity reserved once: a slot's buffer).
    request: Vec<u8>,
    /// A routed request waiting for [`Services::pending_requests`].
    waiting: bool,
    /// The answer being sent, and how much of it has been queued.
    response: Option<(Vec<u8>, usize)>,
}

/// A request ready to be answered: which slot, and what it asks.
pub struct PendingRequest {
    slot: usize,
    /// What to answer.
    pub answer: Answer,
}

/// A page the server can send: its content type and body
/// (`queue_page::route` makes them).
pub struct Page {
    /// The `Content-Type` header's value.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

/// The servers of one interface.
pub struct Services {
    echo: Pool<()>,
    http: Pool<HttpState>,
    /// Where echoed bytes pass between a socket's two buffers.
    scratch: Vec<u8>,
    request_timeout: Duration,
    idle_timeout: Duration,
}

fn tcp_socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; rx]),
        tcp::SocketBuffer::new(vec![0; tx]),
    )
}

/// A duration in milliseconds from the kernel command line.
fn millis_from_cmdline(key: &str, default: Duration) -> Duration {
    crate::cmdline::get(key)
        .and_then(|text| text.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(default, Duration::from_millis)
}

impl Services {
    /// Creates both pools in `sockets`, serving slots first (see the module
    /// docs for why the order matters), and starts them listening.
    pub fn new(sockets: &mut SocketSet<'static>) -> Self {
        let mut echo: Pool<()> = Pool::new(ECHO_PORT);
        let mut http: Pool<HttpState> = Pool::new(HTTP_PORT);
        echo.add(
            sockets,
            ECHO_LARGE_SLOTS,
            false,
            ECHO_LARGE_BUFFER,
            ECHO_LARGE_BUFFER,
        );
        echo.add(
            sockets,
            ECHO_CONNECTIONS - ECHO_LARGE_SLOTS,
            false,
            ECHO_BUFFER,
            ECHO_BUFFER,
        );
        http.add(
            sockets,
            HTTP_CONNECTIONS,
            false,
            HTTP_RX_BUFFER,
            HTTP_TX_BUFFER,
        );
        echo.add(
            sockets,
            REFUSING_SLOTS,
            true,
            REFUSING_BUFFER,
            REFUSING_BUFFER,
        );
        http.add(
            sockets,
            REFUSING_SLOTS,
            true,
            REFUSING_BUFFER,
            REFUSING_BUFFER,
        );
        for slot in http.slots.iter_mut().filter(|s| !s.refuses) {
            slot.state.request.reserve_exact(http_request::MAX_HEAD + 1);
        }
        Services {
            echo,
            http,
            scratch: vec![0; ECHO_SCRATCH],
            request_timeout: millis_from_cmdline("net.request_ms", DEFAULT_REQUEST_TIMEOUT),
            idle_timeout: millis_from_cmdline("net.idle_ms", DEFAULT_IDLE_TIMEOUT),
        }
    }

    /// One round of both services: echo what arrived, read and answer HTTP
    /// requests, enforce the timeouts, and put finished slots back into
    /// LISTEN. Returns `true` if anything was queued for sending (the caller
    /// polls the interface again so that it goes out in this round).
    pub fn poll(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let now = now();
        let idle = self.idle_timeout;
        let request_timeout = self.request_timeout;
        let scratch = &mut self.scratch;
        let mut queued = self
            .echo
            .round(sockets, now, |socket, slot_refuses, _state, _since| {
                if slot_refuses {
                    return (refuse(socket, None), false, CLOSE_TIMEOUT);
                }
                let (step, moved) = echo(socket, scratch);
                (step, moved, idle)
            });
        let mut rejected = 0u64;
        let mut timed_out = 0u64;
        queued |= self
            .http
            .round(sockets, now, |socket, slot_refuses, state, since| {
                if slot_refuses {
                    return (
                        refuse(socket, Some(http::UNAVAILABLE)),
                        false,
                        CLOSE_TIMEOUT,
                    );
                }
                let outcome = serve_http(socket, state, now - since >= request_timeout);
                match outcome.1 {
                    HttpEvent::Rejected => rejected += 1,
                    HttpEvent::RequestTimedOut => timed_out += 1,
                    HttpEvent::None => {}
                }
                // While the request is still arriving, the request timeout
                // (a 408) comes first, whatever the idle timeout.
                let reading = state.response.is_none() && !state.waiting;
                let patience = if reading {
                    request_timeout + CLOSE_TIMEOUT
                } else {
                    idle
                };
                (outcome.0, outcome.2, patience)
            });
        self.http.counters.rejected += rejected;
        self.http.counters.timed_out += timed_out;
        queued
    }

    /// The requests waiting for an answer; the caller makes each answer
    /// ([`http::respond`], with every card in view) and hands them back to
    /// [`Services::deliver`].
    pub fn pending_requests(&self) -> Vec<PendingRequest> {
        self.http
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state.waiting)
            .filter_map(|(slot, s)| {
                match http_request::parse(&s.state.request) {
                    Parsed::Complete(request) => Some(PendingRequest {
                        slot,
                        answer: http::route(&request),
                    }),
                    // Only complete requests are marked waiting.
                    _ => None,
                }
            })
            .collect()
    }

    /// Takes the answers to [`Services::pending_requests`]; they are sent
    /// from the next round on.
    pub fn deliver(&mut self, answers: Vec<(PendingRequest, Vec<u8>)>) {
        for (pending, bytes) in answers {
            if let Some(slot) = self.http.slots.get_mut(pending.slot) {
                if slot.state.waiting {
                    slot.state.waiting = false;
                    slot.state.response = Some((bytes, 0));
                }
            }
        }
    }

    /// The counters of echo and HTTP, levels measured now.
    pub fn counters(&self, sockets: &SocketSet<'static>) -> [ServiceCounters; 2] {
        let mut echo = self.echo.counters_now(sockets);
        echo.held = 0;
        let mut http = self.http.counters_now(sockets);
        http.held = self
            .http
            .slots
            .iter()
            .map(|s| s.state.request.len() + s.state.response.as_ref().map_or(0, |(r, _)| r.len()))
            .sum();
        [echo, http]
    }
}

/// What happened on an HTTP connection this round, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpEvent {
    None,
    Rejected,
    RequestTimedOut,
}

/// A slot's service state goes back to empty when its connection ends.
trait Reset {
    fn reset(&mut self);
}

impl Reset for () {
    fn reset(&mut self) {}
}

impl Reset for HttpState {
    fn reset(&mut self) {
        // Keeps the request buffer's capacity: it is the slot's.
        self.request.clear();
        self.waiting = false;
        self.response = None;
    }
}

impl<S: Default + Reset> Pool<S> {
    fn new(port: u16) -> Self {
        Pool {
            port,
            slots: Vec::new(),
            counters: ServiceCounters {
                port,
                ..ServiceCounters::default()
            },
        }
    }

    /// Adds `count` listening sockets with the given buffer sizes.
    fn add(
        &mut self,
        sockets: &mut SocketSet<'static>,
        count: usize,
        refuses: bool,
        rx: usize,
        tx: usize,
    ) {
        let start = now();
        for _ in 0..count {
            let mut socket = tcp_socket(rx, tx);
            // Cannot fail: the socket is closed and the port is not zero.
            let _ = socket.listen(self.port);
            let last_seen = (0, 0, socket.state());
            self.slots.push(Slot {
                handle: sockets.add(socket),
                refuses,
                phase: Phase::Listening,
                last_progress: start,
                last_seen,
                state: S::default(),
            });
            if refuses {
                self.counters.refusing_capacity += 1;
            } else {
                self.counters.capacity += 1;
            }
            self.counters.socket_buffers += rx + tx;
        }
    }

    /// One round over every slot. `serve(socket, refuses, state, since)`
    /// runs the service on an open connection and returns what to do, whether
    /// it moved anything, and how long the connection may go without
    /// progress. Returns `true` if anything changed that the interface
    /// should send.
    fn round(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now: Instant,
        mut serve: impl FnMut(
            &mut tcp::Socket<'static>,
            bool,
            &mut S,
            Instant,
        ) -> (Step, bool, Duration),
    ) -> bool {
        let mut queued = false;
        let port = self.port;
        for slot in &mut self.slots {
            let socket = sockets.get_mut::<tcp::Socket>(slot.handle);
            let seen = (socket.recv_queue(), socket.send_queue(), socket.state());
            // The state at the end of the last round, after what the
            // server did then (a close moves CLOSE-WAIT to LAST-ACK).
            let previous_state = slot.last_seen.2;
            if seen != slot.last_seen {
                slot.last_seen = seen;
                slot.last_progress = now;
            }
            'slot: {
                match slot.phase {
                    Phase::Listening => {
                        if socket.is_active() {
                            slot.phase = Phase::Open { since: now };
                            slot.last_progress = now;
                            if slot.refuses {
                                self.counters.refused += 1;
                            } else {
                                self.counters.accepted += 1;
                            }
                        } else if !socket.is_open() {
                            // A SYN-RECEIVED that was reset returns to LISTEN by
                            // itself; anything else closed listens again here.
                            let _ = socket.listen(port);
                            break 'slot;
                        } else {
                            break 'slot;
                        }
                    }
                    Phase::Aborted => {
                        finish(slot, socket, port);
                        break 'slot;
                    }
                    _ => {}
                }
                match slot.phase {
                    Phase::Open { since } => {
                        if !socket.is_open() {
                            end(&mut self.counters, slot, socket, port, Ending::Reset);
                            break 'slot;
                        }
                        let (step, moved, mut patience) =
                            serve(socket, slot.refuses, &mut slot.state, since);
                        if socket.state() == tcp::State::SynReceived {
                            // A handshake that does not complete (a SYN
                            // flood) holds its slot only briefly.
                            patience = patience.min(CLOSE_TIMEOUT);
                        }
                        if moved {
                            slot.last_progress = now;
                            queued = true;
                        }
                        if step == Step::Close {
                            socket.close();
                            slot.phase = Phase::Closing;
                            slot.last_progress = now;
                            queued = true;
                        } else if now - slot.last_progress >= patience {
                            abort(&mut self.counters, slot, socket);
                            queued = true;
                        }
                    }
                    Phase::Closing => {
                        if !socket.is_open() {
                            // CLOSED, or TIME-WAIT (which smoltcp lets a socket
                            // leave for LISTEN at once).
                            // A reset can end any state; the clean ends are
                            // TIME-WAIT and the ACK of our FIN in LAST-ACK.
                            let ending = if socket.state() == tcp::State::TimeWait
                                || previous_state == tcp::State::LastAck
                                || previous_state == tcp::State::TimeWait
                            {
                                Ending::Closed
                            } else {
                                Ending::Reset
                            };
                            end(&mut self.counters, slot, socket, port, ending);
                            break 'slot;
                        }
                        // Whatever the client still sends is dropped, so that it
                        // can read its answer and close.
                        if discard_input(socket) {
                            slot.last_progress = now;
                        }
                        if now - slot.last_progress >= CLOSE_TIMEOUT {
                            abort(&mut self.counters, slot, socket);
                            queued = true;
                        }
                    }
                    Phase::Listening | Phase::Aborted => {}
                }
            }
            // What the next round compares with: the socket after this
            // round's own actions, so only the client's changes count there.
            slot.last_seen = (socket.recv_queue(), socket.send_queue(), socket.state());
        }
        let in_use = self
            .slots
            .iter()
            .filter(|s| !s.refuses && s.phase != Phase::Listening)
            .count();
        self.counters.peak = self.counters.peak.max(in_use);
        queued
    }

    /// The counters with the levels (`in_use`, `refusing`, `queued`) measured now.
    fn counters_now(&self, sockets: &SocketSet<'static>) -> ServiceCounters {
        let mut counters = self.counters;
        counters.in_use = 0;
        counters.refusing = 0;
        counters.queued = 0;
        for slot in &self.slots {
            if slot.phase != Phase::Listening {
                if slot.refuses {
                    counters.refusing += 1;
                } else {
                    counters.in_use += 1;
                }
            }
            let socket = sockets.get::<tcp::Socket>(slot.handle);
            counters.queued += socket.recv_queue() + socket.send_queue();
        }
        counters
    }
}

/// Aborts the connection (one RST to this client); the slot listens again
/// on the next round, after the interface has sent the reset.
fn abort<S>(counters: &mut ServiceCounters, slot: &mut Slot<S>, socket: &mut tcp::Socket<'static>) {
    log::debug!(
        "net: port {}: connection from {:?} timed out in {}, aborted",
        counters.port,
        socket.remote_endpoint(),
        socket.state()
    );
    socket.abort();
    counters.timed_out += 1;
    slot.phase = Phase::Aborted;
}

/// Counts how a connection ended and puts its slot back into LISTEN.
fn end<S: Reset>(
    counters: &mut ServiceCounters,
    slot: &mut Slot<S>,
    socket: &mut tcp::Socket<'static>,
    port: u16,
    ending: Ending,
) {
    match ending {
        Ending::Closed => counters.closed += 1,
        Ending::Reset => counters.reset += 1,
    }
    log::debug!("net: port {port}: connection ended ({ending:?})");
    finish(slot, socket, port);
}

/// Empties the slot and listens again.
fn finish<S: Reset>(slot: &mut Slot<S>, socket: &mut tcp::Socket<'static>, port: u16) {
    slot.state.reset();
    // A socket in CLOSED or TIME-WAIT listens at once; anything still open
    // is aborted first (it cannot be: callers come here only when it is not).
    if socket.is_open() {
        socket.abort();
    }
    let _ = socket.listen(port);
    slot.phase = Phase::Listening;
    slot.last_seen = (0, 0, socket.state());
}

/// Reads and drops whatever has arrived; `true` if there was anything.
fn discard_input(socket: &mut tcp::Socket<'static>) -> bool {
    let mut any = false;
    while socket.can_recv() {
        match socket.recv(|data| (data.len(), data.len())) {
            Ok(n) if n > 0 => any = true,
            _ => break,
        }
    }
    any
}

/// A refusing slot: once the connection is established, queue `answer`
/// (if any) and close. Input is dropped.
fn refuse(socket: &mut tcp::Socket<'static>, answer: Option<&[u8]>) -> Step {
    discard_input(socket);
    if !socket.may_send() {
        return Step::Continue;
    }
    if let Some(answer) = answer {
        // Fits: the send buffer is empty and larger than the answer.
        let _ = socket.send_slice(answer);
    }
    Step::Close
}

/// One round of echo on one connection: returns the step and whether any
/// byte moved.
fn echo(socket: &mut tcp::Socket<'static>, scratch: &mut [u8]) -> (Step, bool) {
    let mut moved = false;
    // Move received bytes to the send buffer, as many as it has room for.
    while socket.can_recv() && socket.can_send() {
        let room = (socket.send_capacity() - socket.send_queue()).min(scratch.len());
        match socket.recv_slice(&mut scratch[..room]) {
            Ok(n) if n > 0 => {
                // Cannot fall short: `room` bytes of send buffer were free.
                let _ = socket.send_slice(&scratch[..n]);
                moved = true;
            }
            _ => break,
        }
    }
    // The client is done sending and everything went back: close.
    if !socket.may_recv() && socket.may_send() && socket.send_queue() == 0 {
        return (Step::Close, moved);
    }
    (Step::Continue, moved)
}

/// One round of HTTP on one connection (a serving slot). `late`: the
/// request timeout has passed.
fn serve_http(
    socket: &mut tcp::Socket<'static>,
    state: &mut HttpState,
    late: bool,
) -> (Step, HttpEvent, bool) {
    let mut event = HttpEvent::None;
    let mut moved = false;
    if state.response.is_none() && !state.waiting {
        moved |= read_request(socket, &mut state.request);
        match http_request::parse(&state.request) {
            Parsed::Complete(_) => state.waiting = true,
            Parsed::Rejected(rejection) => {
                state.response = Some((http::refusal(rejection), 0));
                event = HttpEvent::Rejected;
            }
            Parsed::Incomplete if client_closed(socket) => {
                // The client closed its side mid-request: tell it why.
                state.response = Some((http::incomplete(), 0));
                event = HttpEvent::Rejected;
            }
            Parsed::Incomplete if late => {
                state.response = Some((http::request_timeout(), 0));
                event = HttpEvent::RequestTimedOut;
            }
            Parsed::Incomplete => {}
        }
    } else {
        // Whatever follows the head (a pipelined request, a body we
        // refused) is dropped, so the client is never blocked.
        moved |= discard_input(socket);
    }
    let Some((response, sent)) = state.response.as_mut() else {
        return (Step::Continue, event, moved);
    };
    if !socket.may_send() {
        // The client closed both ways (or is still in SYN-RECEIVED, which
        // has nothing to answer yet).
        let step = if socket.state() == tcp::State::SynReceived {
            Step::Continue
        } else {
            Step::Close
        };
        return (step, event, moved);
    }
    if *sent < response.len() {
        let n = socket.send_slice(&response[*sent..]).unwrap_or(0);
        *sent += n;
        moved |= n > 0;
    }
    if *sent >= response.len() {
        // Everything is queued: free the copy now, close after it.
        state.response = Some((Vec::new(), 0));
        return (Step::Close, event, moved);
    }
    (Step::Continue, event, moved)
}

/// The client has closed its side (and everything it sent has been read).
/// Not in SYN-RECEIVED, where `may_recv` is false too.
fn client_closed(socket: &tcp::Socket<'static>) -> bool {
    !socket.may_recv() && socket.state() != tcp::State::SynReceived
}

/// Appends what arrived to the request head, up to one byte past the
/// longest head (enough for the parser to refuse it). `true` if it read
/// anything.
fn read_request(socket: &mut tcp::Socket<'static>, request: &mut Vec<u8>) -> bool {
    let limit = http_request::MAX_HEAD + 1;
    let mut any = false;
    while socket.can_recv() && request.len() < limit {
        let got = socket.recv(|data| {
            let n = data.len().min(limit - request.len());
            request.extend_from_slice(&data[..n]);
            (n, n)
        });
        match got {
            Ok(n) if n > 0 => any = true,
            _ => break,
        }
    }
    any
}
