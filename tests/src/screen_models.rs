//! Device models for the screen drivers: a virtio-gpu in 2D mode (virtio
//! 1.2 §5.7) and a virtio-input keyboard (§5.8), for testing `drivers::gpu`
//! and `drivers::input` on the host.
//!
//! Both sit behind [`ModelTransport`], a [`Transport`] implemented on the
//! model (status byte, features, queue registers, configuration), and serve
//! their queues through [`VqModel`] (rust-vmm's `virtio-queue`, independent
//! of the driver's ring code), synchronously inside `notify` as QEMU does.
//!
//! [`GpuModel`] keeps what QEMU's virtio-gpu keeps: resources with their
//! backing scatter lists, which resource each scanout shows, and a host copy
//! of each resource that TRANSFER_TO_HOST_2D fills from guest memory (read
//! through the scatter list, so a wrong list shows as wrong pixels). It
//! records every command and every flushed rectangle, and as violations
//! what a correct driver never does (a response buffer too small, a transfer
//! outside the resource, a command on an unknown resource). Knobs make it
//! hostile: any display size (0 x 0, 100000 x 100000), a response cut to a
//! few bytes, an error answer, silence.
//!
//! [`InputModel`] answers the configuration selectors (name, EV_BITS),
//! holds the buffers the driver posts on the event queue, and sends events
//! into them; knobs send bogus types, short used lengths, an oversized
//! `size`.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use drivers::features;
use drivers::gpu::protocol::{command, response, DISPLAY_INFO_LEN, HEADER_LEN, MAX_SCANOUTS};
use drivers::queue::{QueueAddresses, RingLayout};
use drivers::transport::{
    ConfigConsistency, DeviceStatus, DeviceType, FieldWidth, InterruptStatus, Location, Transport,
    TransportError, TransportKind,
};
use vm_memory::{Bytes, GuestAddress};

use crate::vq_model::{device_memory, Chain, VqModel};

/// What a device model does behind [`ModelTransport`].
pub trait DeviceModel {
    /// Its type.
    fn device_type(&self) -> DeviceType;
    /// Feature bits offered.
    fn offered(&self) -> u64;
    /// How many queues.
    fn queue_count(&self) -> u16;
    /// One byte of configuration.
    fn config_read(&mut self, offset: usize) -> u8;
    /// One byte written to the configuration.
    fn config_write(&mut self, offset: usize, value: u8);
    /// The configuration's size.
    fn config_len(&self) -> usize;
    /// The driver made queue `queue` live.
    fn attach(&mut self, queue: u16, vq: VqModel);
    /// The driver notified queue `queue`.
    fn notified(&mut self, queue: u16);
    /// Reset: forget queues and state.
    fn reset(&mut self);
}

/// The register side shared by the models: status, negotiated features.
pub struct Device<M> {
    /// The device model.
    pub model: M,
    /// The status byte.
    pub status: u8,
    /// Every status write, in order.
    pub status_writes: Vec<u8>,
    /// What the driver accepted.
    pub driver_features: u64,
    /// The device never acknowledges a reset: writing 0 to the status
    /// changes nothing (it keeps its queues and may still use them), and
    /// `reset` times out.
    pub never_resets: bool,
}

/// A device shared between the test and the transport.
pub type Shared<M> = Rc<RefCell<Device<M>>>;

/// Wraps a model for a [`ModelTransport`].
pub fn shared<M>(model: M) -> Shared<M> {
    Rc::new(RefCell::new(Device {
        model,
        status: 0,
        status_writes: Vec::new(),
        driver_features: 0,
        never_resets: false,
    }))
}

/// A [`Transport`] onto a [`DeviceModel`].
pub struct ModelTransport<M> {
    /// The device.
    pub device: Shared<M>,
    /// Which transport it pretends to be.
    pub kind: TransportKind,
}

impl<M: DeviceModel> Transport for ModelTransport<M> {
    fn kind(&self) -> TransportKind {
        self.kind
    }

    fn device_type(&self) -> DeviceType {
        self.device.borrow().model.device_type()
    }

    fn location(&self) -> Location {
        Location::Mmio { base: 0xfeb0_0400 }
    }

    fn status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(self.device.borrow().status)
    }

    fn set_status(&mut self, status: DeviceStatus) {
        let mut d = self.device.borrow_mut();
        d.status_writes.push(status.bits());
        if status.bits() == 0 && d.never_resets {
            return;
        }
        d.status = status.bits();
        if status.bits() == 0 {
            d.driver_features = 0;
            d.model.reset();
        }
    }

    fn reset(&mut self) -> Result<(), TransportError> {
        self.set_status(DeviceStatus::empty());
        let last_status = self.device.borrow().status;
        if last_status != 0 {
            return Err(TransportError::ResetTimeout {
                polls: 1,
                waited_us: 0,
                last_status,
            });
        }
        Ok(())
    }

    fn device_features(&mut self) -> u64 {
        let offered = self.device.borrow().model.offered();
        if self.kind.is_legacy() {
            offered & 0xffff_ffff
        } else {
            offered | features::VERSION_1
        }
    }

    fn set_driver_features(&mut self, features: u64) {
        self.device.borrow_mut().driver_features = features;
    }

    fn ring_layout(&self) -> RingLayout {
        if self.kind.is_legacy() {
            RingLayout::Contiguous { align: 4096 }
        } else {
            RingLayout::Separate
        }
    }

    fn max_queue_size(&mut self, queue: u16) -> Result<u16, TransportError> {
        Ok(if queue < self.device.borrow().model.queue_count() {
            64
        } else {
            0
        })
    }

    fn queue_size_is_fixed(&self) -> bool {
        false
    }

    fn setup_queue(&mut self, queue: u16, addrs: &QueueAddresses) -> Result<(), TransportError> {
        if self.max_queue_size(queue)? == 0 {
            return Err(TransportError::NoSuchQueue(queue));
        }
        let mut d = self.device.borrow_mut();
        let event_idx = d.driver_features & features::RING_EVENT_IDX != 0;
        d.model.attach(queue, VqModel::new(*addrs, event_idx));
        Ok(())
    }

    fn notify(&self, queue: u16) {
        self.device.borrow_mut().model.notified(queue);
    }

    fn config_generation(&mut self) -> u32 {
        0
    }

    fn config_consistency(&self) -> ConfigConsistency {
        ConfigConsistency::Generation
    }

    fn config_space_size(&self) -> usize {
        self.device.borrow().model.config_len()
    }

    fn read_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
    ) -> Result<u32, TransportError> {
        let mut d = self.device.borrow_mut();
        let mut value = 0u32;
        for i in 0..width.bytes() {
            value |= u32::from(d.model.config_read(offset + i)) << (8 * i);
        }
        Ok(value)
    }

    fn write_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
        value: u32,
    ) -> Result<(), TransportError> {
        let mut d = self.device.borrow_mut();
        for i in 0..width.bytes() {
            d.model.config_write(offset + i, (value >> (8 * i)) as u8);
        }
        Ok(())
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }

    fn set_config_msix_vector(&mut self, _vector: u16) -> Result<(), TransportError> {
        Err(TransportError::Unsupported("MSI-X on the model transport"))
    }

    fn set_queue_msix_vector(&mut self, _queue: u16, _vector: u16) -> Result<(), TransportError> {
        Err(TransportError::Unsupported("MSI-X on the model transport"))
    }
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    u64::from(le32(bytes, at)) | u64::from(le32(bytes, at + 4)) << 32
}

/// A host-side 2D resource.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The guest pages behind it: (device address, length).
    pub backing: Vec<(u64, u32)>,
    /// The host's copy, 4 bytes a pixel, filled by TRANSFER_TO_HOST_2D.
    pub pixels: Vec<u8>,
}

/// How the GPU model misbehaves (all off by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GpuKnob {
    /// Behaves.
    #[default]
    None,
    /// Every response claims only this many bytes.
    ShortResponse(u32),
    /// Every command is answered with this (error) type.
    ErrorResponse(u32),
    /// Takes commands and never answers.
    Silent,
}

/// A virtio-gpu in 2D mode. See the module documentation.
#[derive(Default)]
pub struct GpuModel {
    /// The display sizes GET_DISPLAY_INFO reports: (width, height, enabled).
    pub scanouts: Vec<(u32, u32, bool)>,
    /// `events_read`.
    pub events_read: u32,
    /// Values written to `events_clear`.
    pub events_cleared: Vec<u32>,
    /// Live resources by id.
    pub resources: BTreeMap<u32, Resource>,
    /// Resource shown per scanout.
    pub scanout_resource: BTreeMap<u32, u32>,
    /// Every command type, in order.
    pub commands: Vec<u32>,
    /// Every flushed rectangle: (resource, x, y, width, height).
    pub flushes: Vec<(u32, u32, u32, u32, u32)>,
    /// Rules the driver broke.
    pub violations: Vec<String>,
    /// Misbehaviour.
    pub knob: GpuKnob,
    queues: BTreeMap<u16, VqModel>,
    config_write_buf: [u8; 4],
}

impl GpuModel {
    /// One enabled scanout of `width` x `height`.
    pub fn with_display(width: u32, height: u32) -> Self {
        GpuModel {
            scanouts: vec![(width, height, true)],
            ..Default::default()
        }
    }

    /// The host changes the display: a new size and VIRTIO_GPU_EVENT_DISPLAY.
    pub fn resize(&mut self, width: u32, height: u32) {
        self.scanouts = vec![(width, height, true)];
        self.events_read |= 1;
    }

    /// The pixel (4 bytes) the host shows at `(x, y)` on scanout 0.
    pub fn shown_pixel(&self, x: u32, y: u32) -> Option<[u8; 4]> {
        let resource = self.resources.get(self.scanout_resource.get(&0)?)?;
        let at = ((y * resource.width + x) * 4) as usize;
        resource
            .pixels
            .get(at..at + 4)
            .map(|p| [p[0], p[1], p[2], p[3]])
    }

    fn serve(&mut self, chain: &Chain) -> (Vec<u8>, u32) {
        let req = &chain.readable;
        let kind = le32(req, 0);
        self.commands.push(kind);
        let mut ok = response::OK_NODATA;
        let mut answer_len = HEADER_LEN;
        let mut body = Vec::new();
        let need = |len: usize, this: &mut Self| {
            if req.len() < len {
                this.violations.push(format!(
                    "command {kind:#x}: request of {} bytes, needs {len}",
                    req.len()
                ));
                false
            } else {
                true
            }
        };
        match kind {
            command::GET_DISPLAY_INFO => {
                ok = response::OK_DISPLAY_INFO;
                answer_len = DISPLAY_INFO_LEN;
                for i in 0..MAX_SCANOUTS {
                    let (w, h, enabled) = self.scanouts.get(i).copied().unwrap_or((0, 0, false));
                    for v in [0, 0, w, h, u32::from(enabled), 0] {
                        body.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
            command::RESOURCE_CREATE_2D if need(40, self) => {
                let (id, width, height) = (le32(req, 24), le32(req, 32), le32(req, 36));
                if le32(req, 28) != 2 {
                    self.violations
                        .push(format!("format {} (not B8G8R8X8)", le32(req, 28)));
                }
                if id == 0 || self.resources.contains_key(&id) {
                    ok = 0x1203;
                } else {
                    self.resources.insert(
                        id,
                        Resource {
                            width,
                            height,
                            backing: Vec::new(),
                            pixels: vec![0; (width * height * 4) as usize],
                        },
                    );
                }
            }
            command::RESOURCE_ATTACH_BACKING if need(32, self) => {
                let (id, n) = (le32(req, 24), le32(req, 28) as usize);
                if !need(32 + 16 * n, self) {
                    ok = 0x1205;
                } else if let Some(r) = self.resources.get_mut(&id) {
                    r.backing = (0..n)
                        .map(|i| (le64(req, 32 + 16 * i), le32(req, 40 + 16 * i)))
                        .collect();
                    let total: u64 = r.backing.iter().map(|&(_, l)| u64::from(l)).sum();
                    if total < u64::from(r.width * r.height * 4) {
                        self.violations
                            .push(format!("backing of {total} bytes for resource {id}"));
                    }
                } else {
                    ok = 0x1203;
                }
            }
            command::SET_SCANOUT if need(48, self) => {
                let (scanout, id) = (le32(req, 40), le32(req, 44));
                if !self.resources.contains_key(&id) {
                    ok = 0x1203;
                } else {
                    self.scanout_resource.insert(scanout, id);
                }
            }
            command::TRANSFER_TO_HOST_2D if need(56, self) => {
                let (x, y, w, h) = (le32(req, 24), le32(req, 28), le32(req, 32), le32(req, 36));
                let (offset, id) = (le64(req, 40), le32(req, 48));
                ok = self.transfer(id, x, y, w, h, offset);
            }
            command::RESOURCE_FLUSH if need(48, self) => {
                let (x, y, w, h, id) = (
                    le32(req, 24),
                    le32(req, 28),
                    le32(req, 32),
                    le32(req, 36),
                    le32(req, 40),
                );
                self.flushes.push((id, x, y, w, h));
                if !self.resources.contains_key(&id) {
                    ok = 0x1203;
                }
            }
            command::RESOURCE_DETACH_BACKING if need(32, self) => {
                match self.resources.get_mut(&le32(req, 24)) {
                    Some(r) => r.backing.clear(),
                    None => ok = 0x1203,
                }
            }
            command::RESOURCE_UNREF if need(32, self) => {
                let id = le32(req, 24);
                if self.scanout_resource.values().any(|&r| r == id) {
                    self.violations
                        .push(format!("unref of resource {id} while it is shown"));
                }
                if self.resources.remove(&id).is_none() {
                    ok = 0x1203;
                }
            }
            _ => ok = response::ERR_UNSPEC,
        }
        if (chain.writable_len() as usize) < answer_len {
            self.violations.push(format!(
                "command {kind:#x}: response buffer of {} bytes, the answer needs {answer_len}",
                chain.writable_len()
            ));
        }
        if let GpuKnob::ErrorResponse(error) = self.knob {
            ok = error;
            body.clear();
        }
        let mut answer = Vec::new();
        answer.extend_from_slice(&ok.to_le_bytes());
        answer.extend_from_slice(&[0; HEADER_LEN - 4]);
        answer.extend_from_slice(&body);
        answer.truncate(chain.writable_len() as usize);
        let claimed = match self.knob {
            GpuKnob::ShortResponse(n) => n.min(answer.len() as u32),
            _ => answer.len() as u32,
        };
        (answer, claimed)
    }

    /// TRANSFER_TO_HOST_2D: copies the rectangle from the backing, row by
    /// row, through the scatter list.
    fn transfer(&mut self, id: u32, x: u32, y: u32, w: u32, h: u32, offset: u64) -> u32 {
        let Some(r) = self.resources.get_mut(&id) else {
            return 0x1203;
        };
        if x.checked_add(w).is_none_or(|e| e > r.width)
            || y.checked_add(h).is_none_or(|e| e > r.height)
        {
            self.violations.push(format!(
                "transfer {w}x{h}+{x}+{y} outside {}x{}",
                r.width, r.height
            ));
            return 0x1205;
        }
        if offset != u64::from(y * r.width * 4 + x * 4) {
            self.violations
                .push(format!("transfer offset {offset} for ({x}, {y})"));
        }
        let mem = device_memory();
        let stride = u64::from(r.width * 4);
        for row in 0..h {
            let mut at = offset + stride * u64::from(row);
            let mut dst = ((y + row) * r.width * 4 + x * 4) as usize;
            let mut left = (w * 4) as usize;
            for &(addr, len) in &r.backing {
                if left == 0 {
                    break;
                }
                if at >= u64::from(len) {
                    at -= u64::from(len);
                    continue;
                }
                let n = left.min((u64::from(len) - at) as usize);
                mem.read_slice(&mut r.pixels[dst..dst + n], GuestAddress(addr + at))
                    .expect("backing reachable");
                dst += n;
                left -= n;
                at = 0;
            }
        }
        response::OK_NODATA
    }
}

impl DeviceModel for GpuModel {
    fn device_type(&self) -> DeviceType {
        DeviceType::Gpu
    }

    fn offered(&self) -> u64 {
        // EDID: a feature the driver must not accept.
        features::RING_EVENT_IDX | features::RING_INDIRECT_DESC | 1 << 1
    }

    fn queue_count(&self) -> u16 {
        2
    }

    fn config_read(&mut self, offset: usize) -> u8 {
        let config = [self.events_read, 0, self.scanouts.len() as u32, 0];
        config
            .get(offset / 4)
            .map_or(0, |v| v.to_le_bytes()[offset % 4])
    }

    fn config_write(&mut self, offset: usize, value: u8) {
        if (4..8).contains(&offset) {
            self.config_write_buf[offset - 4] = value;
            if offset == 7 {
                let clear = u32::from_le_bytes(self.config_write_buf);
                self.events_cleared.push(clear);
                self.events_read &= !clear;
            }
        } else {
            self.violations.push(format!("config write at {offset}"));
        }
    }

    fn config_len(&self) -> usize {
        16
    }

    fn attach(&mut self, queue: u16, vq: VqModel) {
        self.queues.insert(queue, vq);
    }

    fn notified(&mut self, queue: u16) {
        let Some(mut vq) = self.queues.remove(&queue) else {
            self.violations
                .push(format!("notify of queue {queue}, not set up"));
            return;
        };
        vq.driver_published(true);
        if queue == 0 && self.knob != GpuKnob::Silent {
            loop {
                let chains = vq.take_available();
                if chains.is_empty() {
                    // Notifications back on, unless work arrived meanwhile.
                    if vq.try_sleep() {
                        break;
                    }
                    continue;
                }
                for chain in chains {
                    let (answer, claimed) = self.serve(&chain);
                    // A short response writes (and reports) only its first bytes.
                    vq.complete(&chain, &answer[..claimed as usize]);
                }
                vq.signal_used();
            }
        }
        self.queues.insert(queue, vq);
    }

    fn reset(&mut self) {
        self.queues.clear();
        self.resources.clear();
        self.scanout_resource.clear();
    }
}

/// The key codes an [`InputModel`] keyboard reports in EV_BITS (all of 1..=127).
pub const KEYBOARD_KEYS: std::ops::RangeInclusive<u16> = 1..=127;

/// How the input model misbehaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputKnobs {
    /// Claims a `size` of 255 for every selector (the union is 128 bytes).
    pub oversized_answers: bool,
}

/// A virtio-input device. See the module documentation.
#[derive(Default)]
pub struct InputModel {
    /// ID_NAME.
    pub name: String,
    /// A keyboard (letter keys in EV_BITS) or a mouse (buttons only).
    pub keyboard: bool,
    /// Misbehaviour.
    pub knobs: InputKnobs,
    /// Event buffers the driver posted and the device has not used yet.
    pub posted: VecDeque<Chain>,
    /// Rules the driver broke.
    pub violations: Vec<String>,
    select: u8,
    subsel: u8,
    queues: BTreeMap<u16, VqModel>,
}

impl InputModel {
    /// A keyboard called `name`.
    pub fn keyboard(name: &str) -> Self {
        InputModel {
            name: name.into(),
            keyboard: true,
            ..Default::default()
        }
    }

    /// A mouse (BTN_LEFT etc., no letter keys).
    pub fn mouse(name: &str) -> Self {
        InputModel {
            name: name.into(),
            keyboard: false,
            ..Default::default()
        }
    }

    fn answer(&self) -> Vec<u8> {
        match (self.select, self.subsel) {
            (0x01, _) => self.name.as_bytes().to_vec(),
            (0x11, 1) => {
                let mut bits = vec![0u8; 128];
                let keys: Vec<u16> = if self.keyboard {
                    KEYBOARD_KEYS.collect()
                } else {
                    vec![0x110, 0x111, 0x112]
                };
                for k in keys {
                    bits[usize::from(k / 8)] |= 1 << (k % 8);
                }
                let used = bits.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                bits.truncate(used);
                bits
            }
            _ => Vec::new(),
        }
    }

    /// Sends one event into the next posted buffer; `false` if none is posted.
    pub fn send(&mut self, kind: u16, code: u16, value: u32) -> bool {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&kind.to_le_bytes());
        bytes.extend_from_slice(&code.to_le_bytes());
        bytes.extend_from_slice(&value.to_le_bytes());
        self.send_raw(&bytes)
    }

    /// Completes the next posted buffer with `bytes` (any length up to 8,
    /// reported as is: a short one is hostile).
    pub fn send_raw(&mut self, bytes: &[u8]) -> bool {
        let Some(chain) = self.posted.pop_front() else {
            return false;
        };
        let Some(vq) = self.queues.get_mut(&0) else {
            return false;
        };
        vq.complete(&chain, bytes);
        vq.signal_used();
        true
    }

    /// A key press and release, each followed by EV_SYN.
    pub fn tap(&mut self, code: u16) {
        self.send(1, code, 1);
        self.send(0, 0, 0);
        self.send(1, code, 0);
        self.send(0, 0, 0);
    }
}

impl DeviceModel for InputModel {
    fn device_type(&self) -> DeviceType {
        DeviceType::Input
    }

    fn offered(&self) -> u64 {
        features::RING_EVENT_IDX
    }

    fn queue_count(&self) -> u16 {
        2
    }

    fn config_read(&mut self, offset: usize) -> u8 {
        let answer = self.answer();
        match offset {
            0 => self.select,
            1 => self.subsel,
            2 if self.knobs.oversized_answers => 255,
            2 => answer.len().min(128) as u8,
            8..=135 => answer.get(offset - 8).copied().unwrap_or(0xee),
            _ => 0,
        }
    }

    fn config_write(&mut self, offset: usize, value: u8) {
        match offset {
            0 => self.select = value,
            1 => self.subsel = value,
            _ => self.violations.push(format!("config write at {offset}")),
        }
    }

    fn config_len(&self) -> usize {
        136
    }

    fn attach(&mut self, queue: u16, vq: VqModel) {
        self.queues.insert(queue, vq);
    }

    fn notified(&mut self, queue: u16) {
        let Some(vq) = self.queues.get_mut(&queue) else {
            self.violations
                .push(format!("notify of queue {queue}, not set up"));
            return;
        };
        vq.driver_published(true);
        loop {
            let chains = vq.take_available();
            if chains.is_empty() {
                if vq.try_sleep() {
                    break;
                }
                continue;
            }
            for chain in chains {
                if queue != 0 {
                    self.violations.push(format!("buffer on queue {queue}"));
                    continue;
                }
                if !chain.readable.is_empty() || chain.writable_len() != 8 {
                    self.violations.push(format!(
                        "event buffer of {} writable bytes",
                        chain.writable_len()
                    ));
                }
                self.posted.push_back(chain);
            }
        }
    }

    fn reset(&mut self) {
        self.queues.clear();
        self.posted.clear();
    }
}
