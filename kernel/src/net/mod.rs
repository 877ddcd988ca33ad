//! # The network stack: smoltcp on the virtio-net driver
//!
//! ```text
//!   TCP echo :7   HTTP :80   DHCP client   ICMP (self-test)
//!        └────────────┴─────────┬──┴────────────┘
//!                     smoltcp Interface + SocketSet        (stack.rs)
//!                               │ phy::Device tokens
//!                     nic::Phy: RxPacket in place, TxSlot in place  (nic.rs)
//!                               │
//!                     drivers::net::NetDevice (rx / tx / ctrl queues)
//!                               │ virtqueues, notifications
//!                     QEMU's virtio-net device, user network (slirp)
//! ```
//!
//! - **Bring-up** ([`claim_devices`]): every network device the virtio probe
//!   found is claimed from its registry and brought up by the virtio-net
//!   driver; the cards are `net0`, `net1`, ...
//! - **Start** ([`start`], normal boot): every card gets a smoltcp interface
//!   with a DHCP client, a TCP echo server on port 7 and an HTTP server on
//!   port 80 ([`services`]). When QEMU's user network answers DHCP, the
//!   lease is printed at any log level (the stable line tests look for):
//!
//!   ```text
//!   net0: dhcp: address 10.0.2.15/24 gateway 10.0.2.2 dns 10.0.2.3
//!   ```
//!
//! - **Running** ([`run`], the kernel's idle loop from then on): poll every
//!   interface, publish what the polls queued (one notification per queue
//!   per round at most), then sleep until the next interrupt or until
//!   smoltcp's next timer (a one-shot local APIC timer, [`timer`]). Cards
//!   whose interrupts are wired (MSI-X or a line, `virtio::irq`) wake the
//!   CPU when packets arrive; a polled card is looked at every millisecond.
//!   While the loop is busy, receive interrupts are off (the loop finds the
//!   packets itself); they are asked for again, with the race-free re-check
//!   of virtio 1.2 §2.7.7, just before the CPU halts.
//! - **Self-tests** ([`selftests`], `mode=selftest`): DHCP, ARP and ping to
//!   the gateway, and frames between two cards on one QEMU hub.

#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "bench")]
pub mod bench_scale;
mod http;
mod http_request;
pub mod nic;
mod queue_page;
#[cfg(feature = "selftest")]
mod selftests;
mod services;
mod stack;
pub mod timer;

#[cfg(feature = "selftest")]
pub use selftests::selftests;

/// Brings every network device up with the virtio-net driver (after
/// `virtio::probe`, in every mode).
pub fn claim_devices() {
    nic::claim_all();
}

use alloc::string::String;
use alloc::vec::Vec;

use smoltcp::time::{Duration, Instant};

pub use services::ServiceCounters;

use crate::interrupts;

/// The longest the idle loop sleeps when every card can interrupt (smoltcp
/// timers are usually sooner; this bounds the damage of a lost interrupt).
const MAX_SLEEP_INTERRUPT: Duration = Duration::from_millis(500);
/// The longest it sleeps when a card is polled (nothing else would wake it).
const MAX_SLEEP_POLLED: Duration = Duration::from_millis(1);

/// smoltcp's clock: microseconds since boot, from the TSC.
pub fn now() -> Instant {
    Instant::from_micros((crate::clock::uptime_ns() / 1000) as i64)
}

/// Gives every card its interface, DHCP client and servers (normal boot).
pub fn start() {
    let mut nics = nic::nics();
    if nics.is_empty() {
        return;
    }
    timer::init();
    for nic in nics.iter_mut() {
        stack::attach(nic, stack::Role::Services);
    }
    log::info!(
        "net: {} card(s); services: tcp echo on port {}, http on port {}",
        nics.len(),
        services::ECHO_PORT,
        services::HTTP_PORT
    );
}

/// The servers' counters of every card that runs them: `(card name, [echo, http])`
/// (the shell's `sockets` command).
pub fn service_counters() -> Vec<(String, [ServiceCounters; 2])> {
    nic::nics()
        .iter()
        .filter_map(|nic| {
            let counters = nic.stack.as_ref()?.service_counters()?;
            Some((nic.name.clone(), counters))
        })
        .collect()
}

/// One round of the network for a caller that owns the CPU's loop instead
/// of [`run`] (the shell, `crate::shell`): polls every card's interface and
/// publishes what the round queued. The caller wakes at least every 10 ms
/// (the interrupt code's watchdog), which smoltcp's timers tolerate.
pub fn poll() {
    let mut nics = nic::nics();
    if !nics.is_empty() {
        let _ = stack::poll_all(&mut nics);
    }
}

/// The idle loop with the network running: never returns. Without a card
/// it is the plain halt loop.
pub fn run() -> ! {
    if nic::count() == 0 {
        loop {
            crate::balloon::poll();
            interrupts::wait_for_interrupt();
        }
    }
    loop {
        round(None, || false, || {});
    }
}

/// One round of the network for a caller that waits for it (the shell's
/// `ping`): polls every card, sleeps until a packet arrives, smoltcp's next
/// timer, or `at_most` (whichever comes first), and polls again, so what
/// woke the CPU has reached the sockets when this returns. Unlike a spin
/// between [`poll`]s, a reply is taken as soon as its interrupt arrives.
pub fn poll_and_wait(at_most: Duration) {
    if nic::count() == 0 {
        return;
    }
    timer::init();
    round(Some(at_most), || false, || {});
    poll();
}

/// The idle step of a caller that owns the CPU's loop and has a device of
/// its own to wait for (the shell and its console): one network round,
/// then one halt that ends on whichever comes first: a received packet,
/// the caller's device (`arm_other` asks it for interrupts and returns
/// `true` if it already has work; `disarm_other` turns them off again),
/// smoltcp's next timer, or `at_most`. Before this, the shell halted on
/// its console alone, so the network was served only when a 10 ms
/// watchdog or a key woke it: echo, HTTP and ping all ran at that pace.
pub fn idle_with(at_most: Duration, arm_other: impl FnOnce() -> bool, disarm_other: impl FnOnce()) {
    timer::init();
    round(Some(at_most), arm_other, disarm_other);
}

/// One round of the idle loop: poll every interface with interrupts off;
/// if there is nothing to do at once, ask the cards (and `arm_other`) for
/// interrupts, look once more, and halt until an interrupt or the alarm
/// (smoltcp's next timer, capped by `cap` and by how the cards wake the
/// CPU). Interrupts stay off from before the requests until the `sti; hlt`,
/// so an interrupt that comes in between is held by the CPU and ends the
/// halt at once: no wake-up is lost.
fn round(cap: Option<Duration>, arm_other: impl FnOnce() -> bool, disarm_other: impl FnOnce()) {
    // The balloon follows the host's target between network rounds
    // (`crate::balloon`); cheap when nothing changed.
    crate::balloon::poll();
    interrupts::disable();
    let next = {
        let mut nics = nic::nics();
        let next = stack::poll_all(&mut nics);
        if next.is_some_and(|d| d == Duration::ZERO) {
            None
        } else {
            let mut sleep = stack::sleep_limit(&nics, next);
            if let Some(cap) = cap {
                sleep = sleep.min(cap);
            }
            // Ask for receive interrupts, and look once more: packets that
            // arrived before the request will not interrupt (§2.7.7).
            let mut pending = false;
            for nic in nics.iter_mut() {
                for pair in 0..nic.device.queue_pairs() {
                    if let Some((rx, _)) = nic.device.pair(pair) {
                        pending |= rx.enable_interrupts();
                    }
                }
            }
            (!pending).then_some(sleep)
        }
    };
    // The caller's device, armed (and re-checked) after the cards.
    let next = next.filter(|_| !arm_other());
    match next {
        None => interrupts::enable(),
        Some(sleep) => {
            timer::arm(sleep);
            interrupts::wait_for_interrupt();
            timer::disarm();
        }
    }
    // Interrupts are only wanted while nobody looks (§2.7.7).
    disarm_other();
    for nic in nic::nics().iter_mut() {
        for pair in 0..nic.device.queue_pairs() {
            if let Some((rx, _)) = nic.device.pair(pair) {
                rx.disable_interrupts();
            }
        }
    }
}
