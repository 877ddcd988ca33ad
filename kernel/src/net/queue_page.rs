//! The HTTP routes of the live queue view (virtio 1.2 §2.7, §2.8: what the
//! view shows), and the one place that maps a request path to a page:
//!
//! | path | answer |
//! |------|--------|
//! | `/`, `/index.html` | the status page (`http.rs`) |
//! | `/queues` | `queues.html`: draws every queue as SVG, refreshing from `/api/queues` |
//! | `/api/queues` | JSON of every device and queue ([`drivers::view::json`]; schema in `docs/queue-view.md`) |
//!
//! The server (`services.rs`) asks [`route`] for the page of a request's
//! target (a query string is ignored); `None` is a 404. The two pages of
//! the view are [`QUEUES_HTML`] and [`api_queues`], so a routing table
//! gives each one row. The JSON is taken at the moment of the request, by
//! `crate::virtio::view::collect`.

use alloc::string::String;
use alloc::vec::Vec;

use drivers::view::json;

use super::nic::Nic;
use super::services::Page;

/// The `/queues` page, served as it is (plain HTML, CSS and a small
/// script; no external resources).
pub const QUEUES_HTML: &str = include_str!("queues.html");

/// The page for request target `target`, or `None` (404).
pub fn route(target: &[u8], nics: &[Nic]) -> Option<Page> {
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    match path {
        b"/" | b"/index.html" => Some(Page {
            content_type: "text/html; charset=utf-8",
            body: super::http::render(nics).into_bytes(),
        }),
        b"/queues" => Some(Page {
            content_type: "text/html; charset=utf-8",
            body: QUEUES_HTML.as_bytes().to_vec(),
        }),
        b"/api/queues" => Some(Page {
            content_type: "application/json",
            body: api_queues(nics),
        }),
        _ => None,
    }
}

/// The `/api/queues` document, taken now.
pub fn api_queues(nics: &[Nic]) -> Vec<u8> {
    let devices = crate::virtio::view::collect(nics);
    let queues: usize = devices.iter().map(|d| d.queues.len()).sum();
    // About 900 bytes per queue with its descriptors, 400 per device.
    let mut out = String::with_capacity(512 + 400 * devices.len() + 900 * queues);
    let uptime_ms = crate::clock::uptime_ns() / 1_000_000;
    // Writing to a String cannot fail.
    let _ = json::write_document(&mut out, uptime_ms, &devices);
    out.into_bytes()
}
