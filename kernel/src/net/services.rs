//! The servers every card runs: TCP echo (RFC 862) on port 7 and a small
//! HTTP/1.0-style server on port 80.
//!
//! Each service has a few listening sockets, so a handful of clients can be
//! served at once; a socket that finished its connection listens again.
//!
//! **Echo** returns every byte it receives, in order, as fast as the
//! client takes them: it moves at most as many bytes as the send buffer has
//! room for, so a client that sends without reading is slowed down by TCP's
//! own flow control, never by dropped data. When the client closes its
//! side, the server closes its own once everything is echoed.
//!
//! **HTTP** reads a request up to the blank line, answers `GET` with the
//! page `queue_page::route` gives for its path (`/`, the status page of
//! `http.rs`; `/queues` and `/api/queues`, the live queue view), anything
//! else with 404 (or 400 / 405), and
//! closes the connection after the response (`Connection: close`). The
//! response is written as the send buffer drains, so a page larger than the
//! buffer is fine.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

/// The echo port (RFC 862).
pub const ECHO_PORT: u16 = 7;
/// The HTTP port.
pub const HTTP_PORT: u16 = 80;

/// Simultaneous echo connections.
const ECHO_SOCKETS: usize = 2;
/// Simultaneous HTTP connections.
const HTTP_SOCKETS: usize = 4;
/// Echo socket buffers, each way: a large window keeps a bulk transfer moving.
const ECHO_BUFFER: usize = 64 * 1024;
/// HTTP receive buffer (requests are small).
const HTTP_RX_BUFFER: usize = 2048;
/// HTTP send buffer.
const HTTP_TX_BUFFER: usize = 16 * 1024;
/// Bytes the echo server moves at a time.
const ECHO_SCRATCH: usize = 16 * 1024;
/// The longest request head accepted.
const MAX_REQUEST: usize = 4096;

/// One HTTP connection's progress.
struct HttpConnection {
    handle: SocketHandle,
    request: Vec<u8>,
    /// The response being sent, and how much of it has been queued.
    response: Option<(Vec<u8>, usize)>,
}

/// The servers of one interface.
pub struct Services {
    echo: Vec<SocketHandle>,
    http: Vec<HttpConnection>,
    /// Bytes echoed so far.
    pub echoed: u64,
    /// Where echoed bytes pass between a socket's two buffers.
    scratch: Vec<u8>,
}

fn tcp_socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; rx]),
        tcp::SocketBuffer::new(vec![0; tx]),
    )
}

impl Services {
    /// Creates the listening sockets in `sockets`.
    pub fn new(sockets: &mut SocketSet<'static>) -> Self {
        let echo = (0..ECHO_SOCKETS)
            .map(|_| sockets.add(tcp_socket(ECHO_BUFFER, ECHO_BUFFER)))
            .collect();
        let http = (0..HTTP_SOCKETS)
            .map(|_| HttpConnection {
                handle: sockets.add(tcp_socket(HTTP_RX_BUFFER, HTTP_TX_BUFFER)),
                request: Vec::new(),
                response: None,
            })
            .collect();
        let mut services = Services {
            echo,
            http,
            echoed: 0,
            scratch: vec![0; ECHO_SCRATCH],
        };
        services.listen(sockets);
        services
    }

    /// Puts every closed socket back into LISTEN.
    fn listen(&mut self, sockets: &mut SocketSet<'static>) {
        for &handle in &self.echo {
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            if !socket.is_open() {
                let _ = socket.listen(ECHO_PORT);
            }
        }
        for conn in &mut self.http {
            let socket = sockets.get_mut::<tcp::Socket>(conn.handle);
            if !socket.is_open() {
                conn.request.clear();
                conn.response = None;
                let _ = socket.listen(HTTP_PORT);
            }
        }
    }

    /// Echoes what arrived and advances HTTP responses. Returns `true` if
    /// anything was queued for sending (the caller polls the interface again).
    pub fn poll_echo(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let mut queued = false;
        for &handle in &self.echo {
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            // Move received bytes to the send buffer, as many as it has room for.
            while socket.can_recv() && socket.can_send() {
                let room = (socket.send_capacity() - socket.send_queue()).min(self.scratch.len());
                match socket.recv_slice(&mut self.scratch[..room]) {
                    Ok(n) if n > 0 => {
                        // Cannot fall short: `room` bytes of send buffer were free.
                        let sent = socket.send_slice(&self.scratch[..n]).unwrap_or(0);
                        self.echoed += sent as u64;
                        queued = true;
                    }
                    _ => break,
                }
            }
            // The client is done sending and everything went back: close.
            if !socket.may_recv() && socket.may_send() && socket.send_queue() == 0 {
                socket.close();
                queued = true;
            }
        }
        for conn in &mut self.http {
            queued |= conn.read_request(sockets);
            queued |= conn.send_response(sockets);
        }
        self.listen(sockets);
        queued
    }

    /// The target of the first complete request still waiting for its
    /// answer (empty for a malformed request line), if any.
    pub fn pending_target(&self) -> Option<Vec<u8>> {
        self.http
            .iter()
            .find(|c| c.response.is_none() && request_complete(&c.request))
            .map(|c| request_target(&c.request).to_vec())
    }

    /// Answers every complete request for `target`; `page` is its page
    /// (`None`: there is none, 404). See `queue_page::route`.
    pub fn answer_http(
        &mut self,
        sockets: &mut SocketSet<'static>,
        target: &[u8],
        page: Option<&Page>,
    ) {
        for conn in &mut self.http {
            if conn.response.is_none()
                && request_complete(&conn.request)
                && request_target(&conn.request) == target
            {
                conn.response = Some((response_for(&conn.request, page), 0));
                conn.send_response(sockets);
            }
        }
    }
}

/// A page the server can send: its content type and body.
pub struct Page {
    /// The `Content-Type` header's value.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpConnection {
    /// Collects request bytes; an oversized request gets a 400 at once.
    fn read_request(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let socket = sockets.get_mut::<tcp::Socket>(self.handle);
        if self.response.is_some() || request_complete(&self.request) {
            return false;
        }
        while socket.can_recv() {
            let request = &mut self.request;
            let got = socket.recv(|data| {
                let n = data
                    .len()
                    .min(MAX_REQUEST + 1 - request.len().min(MAX_REQUEST));
                request.extend_from_slice(&data[..n]);
                (n, n)
            });
            if !matches!(got, Ok(n) if n > 0) {
                break;
            }
        }
        if self.request.len() > MAX_REQUEST && !request_complete(&self.request) {
            self.response = Some((simple(400, "Bad Request", "request too long\n"), 0));
            return self.send_response(sockets);
        }
        false
    }

    /// Queues as much of the response as fits; closes once all is queued.
    fn send_response(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let Some((response, sent)) = self.response.as_mut() else {
            return false;
        };
        let socket = sockets.get_mut::<tcp::Socket>(self.handle);
        if *sent >= response.len() {
            return false;
        }
        if !socket.can_send() {
            if !socket.is_active() {
                // The client went away.
                *sent = response.len();
            }
            return false;
        }
        let n = socket.send_slice(&response[*sent..]).unwrap_or(0);
        *sent += n;
        if *sent >= response.len() {
            socket.close();
        }
        n > 0
    }
}

/// `true` once the request head ends with the blank line.
fn request_complete(request: &[u8]) -> bool {
    request.windows(4).any(|w| w == b"\r\n\r\n") || request.windows(2).any(|w| w == b"\n\n")
}

/// The request line's words: method and target, if there are two.
fn request_line(request: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    (words.next(), words.next())
}

/// The request's target (empty if the request line has none).
fn request_target(request: &[u8]) -> &[u8] {
    request_line(request).1.unwrap_or_default()
}

/// The response to one request head; `page` is its target's page, if any.
fn response_for(request: &[u8], page: Option<&Page>) -> Vec<u8> {
    match request_line(request) {
        (Some(b"GET"), Some(_)) => match page {
            Some(page) => respond(200, "OK", page.content_type, &page.body),
            None => simple(404, "Not Found", "no such page\n"),
        },
        (Some(_), Some(_)) => simple(405, "Method Not Allowed", "only GET\n"),
        _ => simple(400, "Bad Request", "malformed request line\n"),
    }
}

fn simple(code: u16, reason: &str, body: &str) -> Vec<u8> {
    respond(code, reason, "text/plain; charset=utf-8", body.as_bytes())
}

fn respond(code: u16, reason: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nServer: virtio-teaching-kernel\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}
