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
            interrupts::wait_for_interrupt();
        }
    }
    loop {
        interrupts::disable();
        let next = {
            let mut nics = nic::nics();
            let next = stack::poll_all(&mut nics);
            if next.is_some_and(|d| d == Duration::ZERO) {
                None
            } else {
                let sleep = stack::sleep_limit(&nics, next);
                // Ask for receive interrupts, and look once more: packets that
                // arrived before the request will not interrupt (§2.7.7).
                let pending = nics.iter_mut().any(|n| n.device.rx().enable_interrupts());
                if pending {
                    // No sleep after all: off again while the stack polls.
                    for nic in nics.iter_mut() {
                        nic.device.rx().disable_interrupts();
                    }
                }
                (!pending).then_some(sleep)
            }
        };
        match next {
            None => interrupts::enable(),
            Some(sleep) => {
                timer::arm(sleep);
                interrupts::wait_for_interrupt();
                timer::disarm();
                for nic in nic::nics().iter_mut() {
                    nic.device.rx().disable_interrupts();
                }
            }
        }
    }
}
