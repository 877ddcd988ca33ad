//! What the HTTP server answers: the method check ([`route`]), the answers
//! themselves ([`respond`], which asks `queue_page::route`, the one table
//! from paths to pages), the error responses the server sends on its own
//! (400 and friends from the parser, 408, 503), and the status page for
//! `GET /`: a link to the live queue view (`/queues`, `queue_page.rs`),
//! every virtio device the kernel found (type, location, transport, state,
//! and the features its driver negotiated, from the registry), per network
//! card its queues' counters (packets, bytes, drops, buffers, notifications
//! sent and suppressed, interrupts) and its services' counters (connections
//! in use, refused, timed out; bytes held). Devices no driver brought up
//! have no queues.
//!
//! The connection handling (reading the request, timeouts, closing) is in
//! `services.rs`; parsing the request head is in `http_request.rs`.
//!
//! Plain HTML, no scripts; every value is the kernel's own text, so nothing
//! needs escaping beyond what [`escape`] does for safety.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use drivers::net::NetStats;
use drivers::queue::QueueCounters;
use drivers::transport::{DeviceType, Transport};

use super::http_request::{Rejection, Request};
use super::nic::Nic;
use crate::virtio::{self, DeviceState, FeatureList};

/// What a valid request is answered with, kept once the request's bytes
/// are gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// GET or HEAD of `path`: its page from `queue_page::route`, or 404.
    Page {
        /// The path (without the query).
        path: String,
        /// HEAD: the same status and fields, no body.
        head_only: bool,
    },
    /// Another method: 405.
    MethodNotAllowed,
}

/// GET and HEAD are served, any other method gets 405; which page a path
/// names is `queue_page::route`'s (the one table of paths).
pub fn route(request: &Request<'_>) -> Answer {
    match request.method {
        "GET" | "HEAD" => Answer::Page {
            path: String::from(request.path),
            head_only: request.method == "HEAD",
        },
        _ => Answer::MethodNotAllowed,
    }
}

/// The whole response (status line, fields, body) for `answer`, made with
/// every card in view.
pub fn respond(answer: &Answer, nics: &[Nic]) -> Vec<u8> {
    match answer {
        Answer::Page { path, head_only } => match super::queue_page::route(path.as_bytes(), nics) {
            Some(page) => response(200, page.content_type, &[], &page.body, *head_only),
            None => response(404, TEXT, &[], b"no such page\n", *head_only),
        },
        Answer::MethodNotAllowed => response(
            405,
            TEXT,
            &[("Allow", "GET, HEAD")],
            b"only GET and HEAD\n",
            false,
        ),
    }
}

/// The answer to a request the parser refused (400, 413, 414, 431, 501, 505).
pub fn refusal(rejection: Rejection) -> Vec<u8> {
    let body = format!("{}\n", rejection.detail());
    response(rejection.status(), TEXT, &[], body.as_bytes(), false)
}

/// The answer to a client that closed its side before its request ended.
pub fn incomplete() -> Vec<u8> {
    response(400, TEXT, &[], b"incomplete request\n", false)
}

/// The answer to a client that did not finish its request in time.
pub fn request_timeout() -> Vec<u8> {
    response(408, TEXT, &[], b"request not received in time\n", false)
}

/// What a refusing slot sends when every connection slot is busy (RFC 9110
/// §15.6.4). A constant, so that refusing costs no allocation.
pub const UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nServer: virtio-teaching-kernel\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\nRetry-After: 1\r\nCache-Control: no-store\r\nConnection: close\r\n\r\nall slots are busy\n";

const TEXT: &str = "text/plain; charset=utf-8";

/// The reason phrase of each status this server sends.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// A response with `Content-Length` (the body's length even for HEAD,
/// RFC 9110 §9.3.2) and `Connection: close`.
fn response(
    status: u16,
    content_type: &str,
    fields: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nServer: virtio-teaching-kernel\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in fields {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    // No cache: every page is the state of the moment (`/queues` refreshes).
    out.push_str("Cache-Control: no-store\r\nConnection: close\r\n\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// Renders the status page.
pub fn render(nics: &[Nic]) -> String {
    let mut page = String::with_capacity(8192);
    // Writing to a String cannot fail.
    let _ = write_page(&mut page, nics);
    page
}

fn write_page(out: &mut String, nics: &[Nic]) -> core::fmt::Result {
    let uptime_ms = crate::clock::uptime_ns() / 1_000_000;
    writeln!(out, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>virtio teaching kernel</title>")?;
    writeln!(out, "<style>body{{font-family:monospace}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:2px 6px;text-align:left}}</style></head><body>")?;
    writeln!(out, "<h1>virtio teaching kernel</h1>")?;
    writeln!(
        out,
        "<p>uptime {}.{:03} s</p>",
        uptime_ms / 1000,
        uptime_ms % 1000
    )?;

    writeln!(
        out,
        "<p><a href=\"/queues\">the queues, live</a> (every ring drawn as it moves; JSON at <a href=\"/api/queues\">/api/queues</a>)</p>"
    )?;
    writeln!(out, "<h2>Devices</h2>\n<table>")?;
    writeln!(
        out,
        "<tr><th>type</th><th>location</th><th>transport</th><th>state</th><th>features</th></tr>"
    )?;
    {
        let devices = virtio::devices();
        for device in devices.iter() {
            let name = virtio::type_name(device.device_type);
            let transport = device.transport_kind.map_or("none", |k| k.name());
            write!(
                out,
                "<tr><td>{name}</td><td>{}</td><td>{transport}</td>",
                device.location
            )?;
            match &device.state {
                DeviceState::Up { driver } => writeln!(
                    out,
                    "<td>driven by {driver}</td><td>{}</td></tr>",
                    features_of(device)
                )?,
                DeviceState::Failed { error } => {
                    writeln!(out, "<td>FAILED: {}</td><td></td></tr>", escape(error))?
                }
                other => writeln!(
                    out,
                    "<td>{}</td><td>{}</td></tr>",
                    other.name(),
                    features_of(device)
                )?,
            }
        }
        writeln!(out, "</table>")?;
    }

    writeln!(out, "<h2>Network cards</h2>")?;
    for nic in nics {
        write_nic(out, nic)?;
    }
    writeln!(out, "</body></html>")
}

/// The features a device's driver negotiated, by name (empty before a
/// driver negotiated any).
fn features_of(device: &virtio::VirtioDevice) -> Features {
    let bits = device.negotiated.map(|up| up.features);
    let device_type = device.device_type;
    Features(bits.map(|bits| FeatureList { device_type, bits }))
}

struct Features(Option<FeatureList>);

impl core::fmt::Display for Features {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match &self.0 {
            Some(list) => list.fmt(f),
            None => Ok(()),
        }
    }
}

fn write_nic(out: &mut String, nic: &Nic) -> core::fmt::Result {
    let device = &nic.device;
    writeln!(out, "<h3>{} at {}</h3>\n<table>", nic.name, nic.location)?;
    row(out, "transport", device.transport().kind().name())?;
    writeln!(out, "<tr><th>mac</th><td>{}</td></tr>", device.mac())?;
    writeln!(out, "<tr><th>mtu</th><td>{}</td></tr>", device.mtu())?;
    row(out, "link", if device.link_up() { "up" } else { "down" })?;
    writeln!(
        out,
        "<tr><th>features</th><td>{}</td></tr>",
        FeatureList {
            device_type: DeviceType::Net,
            bits: device.features()
        }
    )?;
    writeln!(
        out,
        "<tr><th>header</th><td>{} bytes</td></tr>",
        device.header_len()
    )?;
    writeln!(
        out,
        "<tr><th>interrupt line</th><td>{:?}</td></tr>",
        nic.interrupt
    )?;
    row(
        out,
        "interrupts",
        match crate::virtio::irq::of(nic.location) {
            Some(irq) => irq.mode_name(),
            None => "polled",
        },
    )?;
    match nic.stack.as_ref().and_then(|s| s.lease.as_ref()) {
        Some(lease) => writeln!(
            out,
            "<tr><th>address</th><td>{} (gateway {})</td></tr>",
            lease.address,
            lease
                .gateway
                .map_or(String::from("none"), |g| alloc::format!("{g}"))
        )?,
        None => row(out, "address", "none (no DHCP lease)")?,
    }
    writeln!(
        out,
        "<tr><th>bridge</th><td>tx dropped {}, recoveries {}, config events {}</td></tr>",
        nic.counters.tx_dropped, nic.counters.recoveries, nic.counters.config_events
    )?;
    writeln!(out, "</table>")?;

    let stats: NetStats = device.stats();
    let interrupts = crate::virtio::irq::of(nic.location).map(|irq| irq.state());
    writeln!(out, "<table>")?;
    writeln!(out, "<tr><th>queue</th><th>packets</th><th>bytes</th><th>driver detail</th><th>added</th><th>notifications</th><th>suppressed</th><th>completions</th><th>device errors</th><th>interrupts</th></tr>")?;
    let irq_count = |q: u16| interrupts.map_or(0, |s| s.queue_interrupt_count(q));
    // One rx and one tx row per queue pair (MQ), labelled with the queue index.
    for pair in 0..device.queue_pairs() {
        let Some(p) = device.pair_stats(pair) else {
            continue;
        };
        let (rxq, txq) = (2 * pair, 2 * pair + 1);
        let rx = p.rx;
        write!(out, "<tr><td>{rxq} rx</td><td>{}</td><td>{}</td><td>merged {}, buffers posted {}, used {}, dropped {} (length {}, num_buffers {}, header {}, runt {}, too long {})</td>",
            rx.packets, rx.bytes, rx.merged, rx.buffers_posted, rx.buffers_used, rx.dropped(),
            rx.dropped_bad_length, rx.dropped_bad_num_buffers, rx.dropped_bad_header, rx.dropped_runt, rx.dropped_too_long)?;
        ring_cells(out, &p.rx_ring, irq_count(rxq))?;
        let tx = p.tx;
        write!(
            out,
            "<tr><td>{txq} tx</td><td>{}</td><td>{}</td><td>reclaimed {}, full {}, too long {}</td>",
            tx.packets, tx.bytes, tx.reclaimed, tx.full, tx.too_long
        )?;
        ring_cells(out, &p.tx_ring, irq_count(txq))?;
    }
    if let (Some(ctrl), Some(ring)) = (stats.ctrl, stats.ctrl_ring) {
        // Queue 2, or behind all the device's pairs with MQ (§5.1.2).
        let ctrl_index = device.queue_indices().last().unwrap_or(2);
        write!(
            out,
            "<tr><td>{ctrl_index} ctrl</td><td>{}</td><td></td><td>ok {}, rejected {}, bad replies {}, timeouts {}</td>",
            ctrl.commands, ctrl.ok, ctrl.rejected, ctrl.bad_replies, ctrl.timeouts
        )?;
        ring_cells(out, &ring, irq_count(ctrl_index))?;
    }
    writeln!(out, "</table>")?;
    if let Some([echo, http]) = nic.stack.as_ref().and_then(|s| s.service_counters()) {
        writeln!(out, "<p>services</p>\n<ul>")?;
        writeln!(out, "<li class=\"service\">echo {echo}</li>")?;
        writeln!(out, "<li class=\"service\">http {http}</li>\n</ul>")?;
    }
    Ok(())
}

fn row(out: &mut String, name: &str, value: &str) -> core::fmt::Result {
    writeln!(out, "<tr><th>{name}</th><td>{}</td></tr>", escape(value))
}

fn ring_cells(out: &mut String, c: &QueueCounters, interrupts: u64) -> core::fmt::Result {
    writeln!(
        out,
        "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{interrupts}</td></tr>",
        c.added, c.notifications, c.notifications_suppressed, c.completions, c.device_errors
    )
}

/// Escapes the HTML special characters of `text`.
fn escape(text: &str) -> Escaped<'_> {
    Escaped(text)
}

struct Escaped<'a>(&'a str);

impl core::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for c in self.0.chars() {
            match c {
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '&' => f.write_str("&amp;")?,
                '"' => f.write_str("&quot;")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}
