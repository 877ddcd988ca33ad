//! The shell's `sockets` command: the counters of every card's echo and
//! HTTP servers (`crate::net::services`): connection slots in use out of
//! how many, connections accepted, refused (every slot busy), closed, timed
//! out, reset by the client, requests rejected, and the bytes held in
//! request/response buffers and queued in socket buffers. With no client
//! connected, `in use`, `refusing`, `held` and `queued` are 0.

use core::fmt::Write as _;

use super::{CommandResult, Output};

/// `sockets`: one line per service per card.
pub fn sockets(out: &mut Output) -> CommandResult {
    let cards = crate::net::service_counters();
    if cards.is_empty() {
        return Err("no network card runs the services".into());
    }
    for (name, [echo, http]) in cards {
        let _ = writeln!(out, "{name}: echo {echo}");
        let _ = writeln!(out, "{name}: http {http}");
    }
    Ok(())
}
