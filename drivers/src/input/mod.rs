//! # virtio-input (virtio 1.2 §5.8)
//!
//! An input device (keyboard, mouse, tablet) sends Linux evdev events:
//! `struct virtio_input_event { le16 type; le16 code; le32 value; }`, eight
//! bytes each (§5.8.6). The driver's whole job on the data path is to keep
//! the event queue (queue 0) full of empty 8-byte buffers (§5.8.6.1: "the
//! driver SHOULD keep the eventq populated") and turn each used one back
//! into an event. Unlike a block or network device, the device fills the
//! queue on its own, whenever a key moves: no request precedes an event.
//! The status queue (queue 1) carries LED changes the other way; it is set
//! up and left empty.
//!
//! What the device is comes from its configuration (§5.8.4), a window that
//! answers the question the driver writes into it: write `select` and
//! `subsel`, then read `size` and that many bytes of the union at offset 8.
//! [`InputDevice::new`] asks for the name (VIRTIO_INPUT_CFG_ID_NAME) and
//! the key bitmap (VIRTIO_INPUT_CFG_EV_BITS, subsel EV_KEY): a keyboard is
//! a device with the letter keys ([`InputDevice::is_keyboard`]).
//!
//! [`keymap`] turns key events into the bytes a terminal would send.
//!
//! The device is not trusted: a used length other than 8 is counted and
//! dropped ([`InputDevice::short_events`]), a `size` beyond the 128-byte
//! union is cut, and event types and codes are only compared, never used
//! as indices without a check.

pub mod keymap;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use hal::{DeviceVisible, DmaRegion, Hal, HalError};

use crate::device::{self, DeviceError, QueueSpec};
use crate::features;
use crate::queue::{QueueError, Ring, Segment, Virtqueue};
use crate::transport::{DeviceType, FieldWidth, Transport, TransportError};

/// The event queue's index (§5.8.2).
pub const EVENTQ: u16 = 0;
/// The status queue's index (§5.8.2).
pub const STATUSQ: u16 = 1;
/// Size of one event.
pub const EVENT_LEN: usize = 8;
/// Event buffers kept in the queue (fewer if the queue is smaller).
pub const EVENT_BUFFERS: u16 = 64;

/// Configuration layout and selectors (§5.8.4).
pub mod config {
    /// u8 select.
    pub const SELECT: usize = 0;
    /// u8 subsel.
    pub const SUBSEL: usize = 1;
    /// u8 size: bytes of the answer in the union.
    pub const SIZE: usize = 2;
    /// The union (string, bitmap, absinfo, devids).
    pub const UNION: usize = 8;
    /// The union's size.
    pub const UNION_LEN: usize = 128;
    /// VIRTIO_INPUT_CFG_ID_NAME: the device's name.
    pub const ID_NAME: u8 = 0x01;
    /// VIRTIO_INPUT_CFG_EV_BITS: the codes supported for event type `subsel`.
    pub const EV_BITS: u8 = 0x11;
}

/// evdev event types (Linux `input-event-codes.h`) a driver meets.
pub mod event_type {
    /// EV_SYN: the end of one report.
    pub const SYN: u16 = 0x00;
    /// EV_KEY: a key or button; value 0 release, 1 press, 2 autorepeat.
    pub const KEY: u16 = 0x01;
    /// EV_REL: relative motion.
    pub const REL: u16 = 0x02;
    /// EV_ABS: absolute position.
    pub const ABS: u16 = 0x03;
    /// EV_MSC: miscellaneous (scan codes).
    pub const MSC: u16 = 0x04;
    /// EV_LED: LED state (status queue).
    pub const LED: u16 = 0x11;
    /// EV_REP: autorepeat settings.
    pub const REP: u16 = 0x14;
}

/// One event as the device sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    /// evdev type ([`event_type`]).
    pub kind: u16,
    /// evdev code (a key number for EV_KEY).
    pub code: u16,
    /// Value (for EV_KEY: 0 release, 1 press, 2 repeat).
    pub value: u32,
}

impl InputEvent {
    /// Decodes the 8 bytes of `struct virtio_input_event`.
    pub fn from_bytes(b: [u8; EVENT_LEN]) -> Self {
        InputEvent {
            kind: u16::from_le_bytes([b[0], b[1]]),
            code: u16::from_le_bytes([b[2], b[3]]),
            value: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// What can go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputError {
    /// Bring-up or queue setup failed.
    Device(DeviceError),
    /// A configuration access failed.
    Transport(TransportError),
    /// No DMA memory.
    Dma(HalError),
    /// The device broke the event queue's rules.
    Queue(QueueError),
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            InputError::Device(e) => write!(f, "{e}"),
            InputError::Transport(e) => write!(f, "transport: {e}"),
            InputError::Dma(e) => write!(f, "{e}"),
            InputError::Queue(e) => write!(f, "event queue: {e}"),
        }
    }
}

impl From<DeviceError> for InputError {
    fn from(e: DeviceError) -> Self {
        InputError::Device(e)
    }
}

impl From<TransportError> for InputError {
    fn from(e: TransportError) -> Self {
        InputError::Transport(e)
    }
}

impl From<HalError> for InputError {
    fn from(e: HalError) -> Self {
        InputError::Dma(e)
    }
}

/// Asks the configuration window one question (§5.8.4): writes `select`
/// and `subsel`, reads `size` (cut to the union's 128 bytes) and the answer.
pub fn query<T: Transport + ?Sized>(
    transport: &mut T,
    select: u8,
    subsel: u8,
) -> Result<Vec<u8>, TransportError> {
    transport.write_config_field(config::SELECT, FieldWidth::U8, u32::from(select))?;
    transport.write_config_field(config::SUBSEL, FieldWidth::U8, u32::from(subsel))?;
    let size = transport.read_config_field(config::SIZE, FieldWidth::U8)? as usize;
    let mut answer = vec![0u8; size.min(config::UNION_LEN)];
    for (i, byte) in answer.iter_mut().enumerate() {
        *byte = transport.read_config_field(config::UNION + i, FieldWidth::U8)? as u8;
    }
    Ok(answer)
}

/// Whether bit `bit` is set in an EV_BITS bitmap.
pub fn bitmap_has(bitmap: &[u8], bit: u16) -> bool {
    bitmap
        .get(usize::from(bit / 8))
        .is_some_and(|byte| byte & (1 << (bit % 8)) != 0)
}

/// A virtio-input device. See the module documentation.
pub struct InputDevice<H: Hal, T: Transport> {
    transport: T,
    /// The queues and the event buffers: kept for ever, not freed, if the
    /// device never acknowledges a reset (`device::reset_or_keep`).
    events: DeviceVisible<Virtqueue<H>>,
    status: DeviceVisible<Virtqueue<H>>,
    /// One 8-byte slot per buffer in the event queue.
    buffers: DeviceVisible<DmaRegion<H>>,
    /// Which slot each token in flight fills (indexed by `Token::index`).
    slot_of_token: Vec<Option<usize>>,
    features: u64,
    name: String,
    key_bits: Vec<u8>,
    short_events: u64,
}

impl<H: Hal, T: Transport> InputDevice<H, T> {
    /// Brings the device up (§3.1.1; no device features exist, §5.8.3),
    /// reads its name and key bitmap, and fills the event queue.
    pub fn new(mut transport: T) -> Result<Self, InputError> {
        device::expect_device_type(&transport, DeviceType::Input)?;
        let ring_features = features::RING_EVENT_IDX;
        let ((events, status, name, key_bits), features) =
            device::bring_up(&mut transport, 0, ring_features, |t, negotiated| {
                let name = query(t, config::ID_NAME, 0)?;
                let key_bits = query(t, config::EV_BITS, event_type::KEY as u8)?;
                let spec = QueueSpec::new(EVENT_BUFFERS).with_indirect_capacity(0);
                let events = device::setup_queue_with::<H, T>(t, EVENTQ, spec, negotiated)?;
                let status = device::setup_queue_with::<H, T>(
                    t,
                    STATUSQ,
                    QueueSpec::new(8).with_indirect_capacity(0),
                    negotiated,
                )?;
                let name: String = name
                    .iter()
                    .take_while(|&&b| b != 0)
                    .map(|&b| {
                        if b.is_ascii_graphic() || b == b' ' {
                            b as char
                        } else {
                            '?'
                        }
                    })
                    .collect();
                Ok::<_, InputError>((events, status, name, key_bits))
            })?;
        let slots = usize::from(events.size());
        let buffers = DmaRegion::new(transport.dma_owner(), slots * EVENT_LEN)?;
        let mut device = InputDevice {
            transport,
            events: DeviceVisible::new(events),
            status: DeviceVisible::new(status),
            buffers: DeviceVisible::new(buffers),
            slot_of_token: vec![None; slots],
            features,
            name,
            key_bits,
            short_events: 0,
        };
        for slot in 0..slots {
            device.post(slot)?;
        }
        device::kick(&mut device.transport, &mut *device.events);
        Ok(device)
    }

    /// Puts slot `slot` (empty) in the event queue, unpublished.
    fn post(&mut self, slot: usize) -> Result<(), InputError> {
        let addr = self.buffers.device_addr() + (slot * EVENT_LEN) as u64;
        let token = self
            .events
            .add(&[Segment::writable(addr, EVENT_LEN as u32)])
            .map_err(InputError::Queue)?;
        if let Some(entry) = self.slot_of_token.get_mut(token.index()) {
            *entry = Some(slot);
        }
        Ok(())
    }

    /// The device's name (`ID_NAME`), printable ASCII.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `true` if the device has the letter keys A and Z (a keyboard, not a
    /// mouse or tablet, whose EV_KEY bits are buttons).
    pub fn is_keyboard(&self) -> bool {
        bitmap_has(&self.key_bits, keymap::code::KEY_A)
            && bitmap_has(&self.key_bits, keymap::code::KEY_Z)
    }

    /// Used buffers that were not 8 bytes long (dropped).
    pub fn short_events(&self) -> u64 {
        self.short_events
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably (interrupt routing).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The event and status queues.
    pub fn queues(&self) -> [&Virtqueue<H>; 2] {
        [&self.events, &self.status]
    }

    // ANCHOR: poll
    /// Takes every event the device has sent into `out`, and gives each
    /// buffer straight back to the queue. Returns how many were added.
    pub fn poll(&mut self, out: &mut Vec<InputEvent>) -> Result<usize, InputError> {
        let mut taken = 0;
        while let Some(used) = self.events.pop_used().map_err(InputError::Queue)? {
            let Some(slot) = self
                .slot_of_token
                .get_mut(used.token.index())
                .and_then(Option::take)
            else {
                continue;
            };
            if used.len as usize == EVENT_LEN {
                let mut bytes = [0u8; EVENT_LEN];
                if self.buffers.read_bytes(slot * EVENT_LEN, &mut bytes) {
                    out.push(InputEvent::from_bytes(bytes));
                    taken += 1;
                }
            } else {
                self.short_events += 1;
                log::warn!(
                    "{}: input: event of {} bytes dropped (events are {EVENT_LEN})",
                    self.transport.location(),
                    used.len
                );
            }
            self.post(slot)?;
        }
        if self.events.unpublished() > 0 {
            device::kick(&mut self.transport, &mut *self.events);
        }
        Ok(taken)
    }
    // ANCHOR_END: poll

    /// Asks for an interrupt on the next event; `true` if one is already
    /// there (poll before sleeping; §2.7.7).
    pub fn enable_interrupts(&mut self) -> bool {
        self.events.enable_interrupts()
    }

    /// No interrupts wanted while the driver is looking anyway.
    pub fn disable_interrupts(&mut self) {
        self.events.disable_interrupts();
    }
}

impl<H: Hal, T: Transport> Drop for InputDevice<H, T> {
    /// Resets the device before its buffers are freed, or keeps them for
    /// ever if it never acknowledges (it may still write them).
    fn drop(&mut self) {
        if device::reset_or_keep(&mut self.transport, "virtio-input").is_err() {
            self.events.keep_forever();
            self.status.keep_forever();
            self.buffers.keep_forever();
        }
    }
}
