//! The control queue (virtio 1.2 §5.1.6.5 "Control Virtqueue").
//!
//! With VIRTIO_NET_F_CTRL_VQ the device has a third queue through which the
//! driver changes how the device filters and addresses packets. Each
//! command is one chain:
//!
//! ```text
//!  device-readable   u8 class, u8 command        (one descriptor)
//!  device-readable   command-specific data       (one descriptor, if any)
//!  device-writable   u8 ack                      VIRTIO_NET_OK 0 / VIRTIO_NET_ERR 1
//! ```
//!
//! (One descriptor per part: legacy devices without ANY_LAYOUT require that
//! split, §5.1.6.5 "Legacy Interface", and modern ones accept any split. A
//! command without data has two.)
//!
//! The commands this driver sends:
//!
//! | class      | command          | data          | needs          |
//! |------------|------------------|---------------|----------------|
//! | RX (0)     | PROMISC (0)      | u8 on/off     | CTRL_RX        |
//! | RX (0)     | ALLMULTI (1)     | u8 on/off     | CTRL_RX        |
//! | MAC (1)    | ADDR_SET (1)     | `u8 mac[6]`   | CTRL_MAC_ADDR  |
//! | MQ (4)     | VQ_PAIRS_SET (0) | le16 pairs    | MQ             |
//!
//! Without VIRTIO_NET_F_MQ the control queue is queue 2; with it, it is
//! queue `2 * max_virtqueue_pairs`, after *all* the pairs the device has
//! (§5.1.2), however many of them the driver uses.
//!
//! Commands are rare and the caller wants the answer, so [`CtrlQueue::command`]
//! blocks through the caller's [`Wait`]. The command and its ack live in
//! one DMA page owned by the queue; if the wait gives up, the command stays
//! in flight (the device may still answer into the driver's own page, which
//! is harmless), and the next command first collects that late answer.

use core::fmt;

use hal::{DmaOwner, DmaRegion, Hal};
use log::{debug, trace};

use crate::device::{self, Wait};
use crate::irq;
use crate::queue::{QueueCounters, QueueError, Ring, Segment, Token, Used, Virtqueue};
use crate::transport::Transport;

use super::NetError;

/// Command classes and commands (§5.1.6.5.1, §5.1.6.5.2).
pub mod command {
    /// Class: receive filtering.
    pub const CLASS_RX: u8 = 0;
    /// RX: promiscuous mode on/off.
    pub const RX_PROMISC: u8 = 0;
    /// RX: receive all multicast on/off.
    pub const RX_ALLMULTI: u8 = 1;
    /// Class: MAC addresses.
    pub const CLASS_MAC: u8 = 1;
    /// MAC: replace the unicast/multicast filter tables.
    pub const MAC_TABLE_SET: u8 = 0;
    /// MAC: set the device's own address.
    pub const MAC_ADDR_SET: u8 = 1;
    /// Class: multiqueue (§5.1.6.5.5).
    pub const CLASS_MQ: u8 = 4;
    /// MQ: how many queue pairs the device spreads received packets over
    /// (`le16 virtqueue_pairs`, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET).
    pub const MQ_VQ_PAIRS_SET: u8 = 0;
    /// The ack for success.
    pub const OK: u8 = 0;
    /// The ack for failure.
    pub const ERR: u8 = 1;
}

/// Where the parts of a command live in the queue's page.
const HEADER_OFFSET: usize = 0;
const DATA_OFFSET: usize = 64;
/// The most command-specific data bytes one command may carry.
pub const MAX_DATA: usize = 1024;
const ACK_OFFSET: usize = DATA_OFFSET + MAX_DATA;
/// What the ack byte holds before the device writes it: neither OK nor ERR.
const ACK_NOT_WRITTEN: u8 = 0xff;

/// Control-queue counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtrlStats {
    /// Commands sent.
    pub commands: u64,
    /// Acked with VIRTIO_NET_OK.
    pub ok: u64,
    /// Acked with VIRTIO_NET_ERR.
    pub rejected: u64,
    /// Answered with anything else (no ack written, a bad length, a bad value).
    pub bad_replies: u64,
    /// Waits that gave up.
    pub timeouts: u64,
}

/// The control queue and its command page.
pub struct CtrlQueue<H: Hal> {
    ring: Virtqueue<H>,
    page: DmaRegion<H>,
    /// A command whose answer has not been collected (after a timeout).
    in_flight: Option<Token>,
    /// The device sits on a legacy transport, whose used lengths are
    /// unreliable (see `collect_one`).
    legacy_lengths: bool,
    stats: CtrlStats,
}

impl<H: Hal> CtrlQueue<H> {
    pub(crate) fn new(
        ring: Virtqueue<H>,
        legacy_lengths: bool,
        owner: DmaOwner,
    ) -> Result<Self, NetError> {
        let page = DmaRegion::new(owner, ACK_OFFSET + 1).map_err(|e| NetError::Queue {
            queue: ring.index(),
            error: QueueError::Dma(e),
        })?;
        Ok(Self {
            ring,
            page,
            in_flight: None,
            legacy_lengths,
            stats: CtrlStats::default(),
        })
    }

    /// Sends one command and waits for its ack.
    ///
    /// Errors: [`NetError::ControlRejected`] (the device answered ERR),
    /// [`NetError::ControlBadReply`], [`NetError::Timeout`] (the wait gave
    /// up), [`NetError::ControlBusy`] (an earlier command that timed out is
    /// still unanswered), [`NetError::Queue`].
    pub fn command<T: Transport + ?Sized, W: Wait + ?Sized>(
        &mut self,
        transport: &mut T,
        class: u8,
        command: u8,
        data: &[u8],
        wait: &mut W,
    ) -> Result<(), NetError> {
        if data.len() > MAX_DATA {
            return Err(NetError::FrameTooLong {
                len: data.len(),
                max: MAX_DATA,
            });
        }
        if self.in_flight.is_some() {
            self.collect()?;
            if self.in_flight.is_some() {
                return Err(NetError::ControlBusy);
            }
        }
        let page = &self.page;
        let written = page.write_bytes(HEADER_OFFSET, &[class, command])
            && page.write_bytes(DATA_OFFSET, data)
            && page.write(ACK_OFFSET, ACK_NOT_WRITTEN);
        if !written {
            return Err(NetError::FrameTooLong {
                len: data.len(),
                max: MAX_DATA,
            });
        }
        let base = page.device_addr();
        let header = Segment::readable(base + HEADER_OFFSET as u64, 2);
        let payload = Segment::readable(base + DATA_OFFSET as u64, data.len() as u32);
        let ack = Segment::writable(base + ACK_OFFSET as u64, 1);
        let with_data = [header, payload, ack];
        let without_data = [header, ack];
        let segments: &[Segment] = if data.is_empty() {
            &without_data
        } else {
            &with_data
        };
        let index = self.ring.index();
        let token = self.ring.add(segments).map_err(|error| NetError::Queue {
            queue: index,
            error,
        })?;
        self.in_flight = Some(token);
        self.stats.commands += 1;
        trace!(
            "ctrl: class {class} command {command} with {} data byte(s) as request {token}",
            data.len()
        );
        device::kick(transport, &mut self.ring);
        loop {
            match self.collect_one(token)? {
                Some(result) => return result,
                None => {
                    // Interrupts on, a second look (the answer may have come
                    // before the request was seen), the wait, interrupts
                    // off again (§2.7.7).
                    let waited = irq::wait_until_used(
                        wait,
                        &mut self.ring,
                        |ring| ring.enable_interrupts(),
                        |ring| ring.disable_interrupts(),
                    );
                    if let Err(timeout) = waited {
                        self.stats.timeouts += 1;
                        debug!("ctrl: class {class} command {command}: no answer ({timeout})");
                        return Err(NetError::Timeout {
                            waits: timeout.waits,
                        });
                    }
                }
            }
        }
    }

    /// Collects a late answer to a command that timed out.
    fn collect(&mut self) -> Result<(), NetError> {
        if let Some(token) = self.in_flight {
            if let Some(late) = self.collect_one(token)? {
                debug!("ctrl: late answer to an abandoned command: {late:?}");
            }
        }
        Ok(())
    }

    /// Looks at the used ring once; `Some` when `token`'s answer is there.
    fn collect_one(&mut self, token: Token) -> Result<Option<Result<(), NetError>>, NetError> {
        loop {
            let used = match self.ring.pop_used() {
                Ok(Some(used)) => used,
                Ok(None) => return Ok(None),
                // A legacy device may report the whole chain (§2.7.8,
                // "Legacy Interface: The Virtqueue Used Ring": "it is
                // generally a good idea to ignore the len value"): the ack
                // byte is at its fixed place, so the answer is still
                // readable without trusting the length.
                Err(QueueError::UsedLengthTooLong { token: t, len, .. })
                    if t == token && self.legacy_lengths =>
                {
                    trace!("ctrl: legacy device reported used length {len}; ignored");
                    Used { token: t, len: 1 }
                }
                Err(QueueError::UsedLengthTooLong { token: t, len, .. }) if t == token => {
                    self.in_flight = None;
                    self.stats.bad_replies += 1;
                    return Ok(Some(Err(NetError::ControlBadReply { ack: None, len })));
                }
                Err(error) if self.ring.is_broken() => {
                    return Err(NetError::Queue {
                        queue: self.ring.index(),
                        error,
                    })
                }
                // A rejected entry for no command of ours: skip it.
                Err(_) => continue,
            };
            if used.token != token {
                continue;
            }
            self.in_flight = None;
            // The ack byte, preset to a value that is neither OK nor ERR,
            // decides. The used length is not judged (§2.7.8 lets a device
            // write more than it reports, so 0 is allowed); one above the
            // single writable byte never gets here from a modern device.
            let ack = self.page.read::<u8>(ACK_OFFSET);
            let reply = match ack {
                Some(command::OK) => {
                    self.stats.ok += 1;
                    Ok(())
                }
                Some(command::ERR) => {
                    self.stats.rejected += 1;
                    Err(NetError::ControlRejected)
                }
                ack => {
                    self.stats.bad_replies += 1;
                    Err(NetError::ControlBadReply { ack, len: used.len })
                }
            };
            trace!("ctrl: request {token} answered: {reply:?}");
            return Ok(Some(reply));
        }
    }

    /// Forgets any command in flight after the device was reset.
    pub(crate) fn reset(&mut self) {
        self.ring.reset(|_| {});
        self.in_flight = None;
    }

    pub(crate) fn ring(&self) -> &Virtqueue<H> {
        &self.ring
    }

    /// Counters.
    pub fn stats(&self) -> CtrlStats {
        self.stats
    }

    /// The ring's own counters.
    pub fn ring_counters(&self) -> QueueCounters {
        self.ring.counters()
    }

    /// Descriptors in the ring.
    pub fn size(&self) -> u16 {
        self.ring.size()
    }
}

impl<H: Hal> fmt::Debug for CtrlQueue<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CtrlQueue")
            .field("ring", &self.ring)
            .field("in_flight", &self.in_flight)
            .field("stats", &self.stats)
            .finish()
    }
}
