//! A PCI platform at register level: functions, bridges, and the address
//! decoding between them.
//!
//! [`PciPlatform`] holds every function's 4 KiB configuration space. It is
//! reached through two front-ends, [`ConfigPorts`] (mechanism #1 at 0xCF8) and
//! [`EcamWindow`], and it decodes memory and I/O accesses through
//! [`SpaceRouter`]s mapped over the BAR windows. Decoding follows what the
//! driver programmed, as hardware does:
//!
//! - a function behind a bridge answers configuration cycles only while the
//!   bridges in front of it have bus numbers that reach it (an unconfigured
//!   bridge hides everything behind it);
//! - a BAR answers a memory or I/O access only with the matching decode bit
//!   in its command register, and only if every bridge in front forwards that
//!   address (window + decode bit);
//! - two functions answering the same configuration address, or two BARs
//!   decoding the same address, are recorded as violations.
//!
//! BARs behave like hardware: the size bits read back 0 after writing ones,
//! the type bits are fixed.

use std::cell::RefCell;
use std::rc::Rc;

use crate::host_hal::{HostHal, RegisterDevice, SharedDevice};

use super::Dir;

/// What a BAR slot implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarSpec {
    /// Not implemented (reads 0).
    None,
    /// I/O BAR of `size` bytes.
    Io(u32),
    /// 32-bit memory BAR.
    Mem32 {
        /// Size in bytes.
        size: u32,
        /// Prefetchable bit.
        prefetchable: bool,
    },
    /// 64-bit memory BAR (this slot and the next).
    Mem64 {
        /// Size in bytes.
        size: u64,
        /// Prefetchable bit.
        prefetchable: bool,
    },
    /// The upper half of the 64-bit BAR before it.
    Upper,
    /// A BAR that reads back an implausible mask (for hostile tests).
    Raw {
        /// What reads back after writing all ones.
        mask: u32,
    },
}

/// Where a function sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// On bus 0.
    Root,
    /// On the secondary bus of the bridge with this index in `PciPlatform::functions`.
    Behind(usize),
}

/// One function's configuration space and BARs.
pub struct FunctionModel {
    /// A name for messages.
    pub name: String,
    /// Where it sits.
    pub attach: Attach,
    /// Device number.
    pub device: u8,
    /// Function number.
    pub function: u8,
    /// 4 KiB of configuration space.
    pub config: Vec<u8>,
    /// What each BAR slot is.
    pub bars: [BarSpec; 6],
    /// Who answers accesses to each BAR.
    pub handlers: [Option<SharedDevice>; 6],
    last_capability: Option<u16>,
    next_capability: u16,
    msix_capability: Option<u16>,
}

impl FunctionModel {
    fn blank(
        name: &str,
        vendor: u16,
        device_id: u16,
        class: u32,
        revision: u8,
        header: u8,
    ) -> Self {
        let mut config = vec![0u8; 4096];
        config[0..2].copy_from_slice(&vendor.to_le_bytes());
        config[2..4].copy_from_slice(&device_id.to_le_bytes());
        config[8] = revision;
        config[9] = class as u8;
        config[10] = (class >> 8) as u8;
        config[11] = (class >> 16) as u8;
        config[0x0e] = header;
        Self {
            name: name.into(),
            attach: Attach::Root,
            device: 0,
            function: 0,
            config,
            bars: [BarSpec::None; 6],
            handlers: [None, None, None, None, None, None],
            last_capability: None,
            next_capability: 0x40,
            msix_capability: None,
        }
    }

    /// An ordinary (type 0) function.
    pub fn endpoint(name: &str, vendor: u16, device_id: u16, class: u32, revision: u8) -> Self {
        Self::blank(name, vendor, device_id, class, revision, 0)
    }

    /// A PCI-to-PCI bridge (QEMU's `pci-bridge` ids), unconfigured.
    pub fn bridge(name: &str) -> Self {
        let mut f = Self::blank(name, 0x1b36, 0x0001, 0x06_04_00, 0, 1);
        // 64-bit prefetchable window supported; 16-bit I/O.
        f.config[0x24] = 0x01;
        f.config[0x26] = 0x01;
        f
    }

    /// Sets the subsystem vendor and id (type 0).
    pub fn with_subsystem(mut self, vendor: u16, id: u16) -> Self {
        self.config[0x2c..0x2e].copy_from_slice(&vendor.to_le_bytes());
        self.config[0x2e..0x30].copy_from_slice(&id.to_le_bytes());
        self
    }

    /// Marks function 0 as part of a multi-function device.
    pub fn multifunction(mut self) -> Self {
        self.config[0x0e] |= 0x80;
        self
    }

    /// Declares BAR `index` with an optional device model behind it. The BAR
    /// starts unassigned (address 0), as qboot leaves it.
    pub fn with_bar(mut self, index: usize, spec: BarSpec, handler: Option<SharedDevice>) -> Self {
        self.bars[index] = spec;
        self.handlers[index] = handler;
        if let BarSpec::Mem64 { .. } = spec {
            self.bars[index + 1] = BarSpec::Upper;
        }
        self.store_bar(index, 0);
        if let BarSpec::Mem64 { .. } = spec {
            self.store_bar(index + 1, 0);
        }
        self
    }

    /// Gives BAR `index` an address, as firmware would have.
    pub fn with_bar_address(mut self, index: usize, address: u64) -> Self {
        self.store_bar(index, address as u32);
        if let BarSpec::Mem64 { .. } = self.bars[index] {
            self.store_bar(index + 1, (address >> 32) as u32);
        }
        self
    }

    /// Sets the command register.
    pub fn with_command(mut self, command: u16) -> Self {
        self.config[4..6].copy_from_slice(&command.to_le_bytes());
        self
    }

    /// Sets a bridge's bus numbers, as firmware would have.
    pub fn with_bus_numbers(mut self, primary: u8, secondary: u8, subordinate: u8) -> Self {
        self.config[0x18] = primary;
        self.config[0x19] = secondary;
        self.config[0x1a] = subordinate;
        self
    }

    /// Sets a bridge's memory window, as firmware would have.
    pub fn with_memory_window(mut self, base: u32, limit_inclusive: u32) -> Self {
        let b = ((base >> 16) & 0xfff0) as u16;
        let l = ((limit_inclusive >> 16) & 0xfff0) as u16;
        self.config[0x20..0x22].copy_from_slice(&b.to_le_bytes());
        self.config[0x22..0x24].copy_from_slice(&l.to_le_bytes());
        self
    }

    /// Appends a capability with `body` after the id and next bytes; returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> u16 {
        let at = self.next_capability;
        self.config[usize::from(at)] = id;
        self.config[usize::from(at) + 1] = 0;
        self.config[usize::from(at) + 2..usize::from(at) + 2 + body.len()].copy_from_slice(body);
        match self.last_capability {
            Some(previous) => self.config[usize::from(previous) + 1] = at as u8,
            None => {
                self.config[0x34] = at as u8;
                self.config[6] |= 0x10;
            }
        }
        self.last_capability = Some(at);
        self.next_capability = (at + 2 + body.len() as u16 + 3) & !3;
        if id == 0x11 {
            self.msix_capability = Some(at);
        }
        at
    }

    /// Appends a virtio vendor capability (`struct virtio_pci_cap`, §4.1.4);
    /// `multiplier` makes it the 20-byte notify variant.
    pub fn add_virtio_cap(
        &mut self,
        cfg_type: u8,
        bar: u8,
        offset: u32,
        length: u32,
        multiplier: Option<u32>,
    ) -> u16 {
        let cap_len: u8 = if multiplier.is_some() || cfg_type == 5 {
            20
        } else {
            16
        };
        let mut body = vec![cap_len, cfg_type, bar, 0, 0, 0];
        body.extend_from_slice(&offset.to_le_bytes());
        body.extend_from_slice(&length.to_le_bytes());
        if let Some(m) = multiplier {
            body.extend_from_slice(&m.to_le_bytes());
        } else if cfg_type == 5 {
            body.extend_from_slice(&[0; 4]);
        }
        self.add_capability(0x09, &body)
    }

    /// Appends an MSI-X capability with `entries` table entries in BAR `bar`.
    pub fn add_msix(&mut self, entries: u16, bar: u8) -> u16 {
        let control = entries - 1;
        let mut body = control.to_le_bytes().to_vec();
        body.extend_from_slice(&u32::from(bar).to_le_bytes());
        body.extend_from_slice(&(0x800 | u32::from(bar)).to_le_bytes());
        self.add_capability(0x11, &body)
    }

    fn store_bar(&mut self, index: usize, value: u32) {
        let stored = self.bar_value(index, value);
        let at = 0x10 + 4 * index;
        self.config[at..at + 4].copy_from_slice(&stored.to_le_bytes());
    }

    /// What a BAR register holds after `written` is written to it.
    fn bar_value(&self, index: usize, written: u32) -> u32 {
        match self.bars[index] {
            BarSpec::None => 0,
            BarSpec::Io(size) => (written & !(size - 1) & 0xffff_fffc) | 1,
            BarSpec::Mem32 { size, prefetchable } => {
                (written & !(size - 1) & !0xf) | (u32::from(prefetchable) << 3)
            }
            BarSpec::Mem64 { size, prefetchable } => {
                (written & (!(size - 1)) as u32 & !0xf) | 0x4 | (u32::from(prefetchable) << 3)
            }
            BarSpec::Upper => match self.bars[index - 1] {
                BarSpec::Mem64 { size, .. } => written & ((!(size - 1)) >> 32) as u32,
                _ => 0,
            },
            BarSpec::Raw { mask } => written & mask,
        }
    }

    fn cfg8(&self, at: usize) -> u8 {
        self.config[at]
    }

    fn cfg16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.config[at], self.config[at + 1]])
    }

    fn cfg32(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.config[at],
            self.config[at + 1],
            self.config[at + 2],
            self.config[at + 3],
        ])
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.cfg16(4)
    }

    /// `true` for a bridge.
    pub fn is_bridge(&self) -> bool {
        self.config[0x0e] & 0x7f == 1
    }

    /// Secondary bus number (bridges).
    pub fn secondary(&self) -> u8 {
        self.cfg8(0x19)
    }

    /// Subordinate bus number (bridges).
    pub fn subordinate(&self) -> u8 {
        self.cfg8(0x1a)
    }

    /// The address BAR `index` currently holds (both halves for 64-bit).
    pub fn bar_address(&self, index: usize) -> u64 {
        let low = self.cfg32(0x10 + 4 * index);
        match self.bars[index] {
            BarSpec::Io(_) => u64::from(low & !0x3),
            BarSpec::Mem32 { .. } => u64::from(low & !0xf),
            BarSpec::Mem64 { .. } => {
                u64::from(low & !0xf) | u64::from(self.cfg32(0x10 + 4 * (index + 1))) << 32
            }
            _ => 0,
        }
    }

    fn bar_size(&self, index: usize) -> u64 {
        match self.bars[index] {
            BarSpec::Io(size) => u64::from(size),
            BarSpec::Mem32 { size, .. } => u64::from(size),
            BarSpec::Mem64 { size, .. } => size,
            _ => 0,
        }
    }

    /// The bridge's I/O window (inclusive limit), if base <= limit.
    pub fn io_window(&self) -> Option<(u64, u64)> {
        let base = u64::from(self.cfg8(0x1c) & 0xf0) << 8 | u64::from(self.cfg16(0x30)) << 16;
        let limit =
            u64::from(self.cfg8(0x1d) & 0xf0) << 8 | 0xfff | u64::from(self.cfg16(0x32)) << 16;
        (base <= limit).then_some((base, limit))
    }

    /// The bridge's memory window (inclusive limit).
    pub fn memory_window(&self) -> Option<(u64, u64)> {
        let base = u64::from(self.cfg16(0x20) & 0xfff0) << 16;
        let limit = u64::from(self.cfg16(0x22) & 0xfff0) << 16 | 0xf_ffff;
        (base <= limit).then_some((base, limit))
    }

    /// The bridge's prefetchable window (inclusive limit).
    pub fn prefetchable_window(&self) -> Option<(u64, u64)> {
        let base = u64::from(self.cfg16(0x24) & 0xfff0) << 16 | u64::from(self.cfg32(0x28)) << 32;
        let limit = u64::from(self.cfg16(0x26) & 0xfff0) << 16
            | 0xf_ffff
            | u64::from(self.cfg32(0x2c)) << 32;
        (base <= limit).then_some((base, limit))
    }

    /// Which bits of configuration byte `at` software may write.
    fn writable(&self, at: usize) -> u8 {
        let bridge = self.is_bridge();
        match at {
            0x04 => 0xff,
            0x05 => 0x07,
            0x0c | 0x0d | 0x3c => 0xff,
            0x18..=0x1b if bridge => 0xff,
            0x1c | 0x1d if bridge => 0xf0,
            0x20 | 0x22 | 0x24 | 0x26 if bridge => 0xf0,
            0x21 | 0x23 | 0x25 | 0x27 if bridge => 0xff,
            0x28..=0x33 if bridge => 0xff,
            0x3e | 0x3f if bridge => 0xff,
            _ => match self.msix_capability {
                // MSI-X message control: enable (15) and function mask (14).
                Some(cap) if at == usize::from(cap) + 3 => 0xc0,
                _ => 0,
            },
        }
    }

    fn config_write(&mut self, offset: usize, width: usize, value: u32) -> Option<String> {
        if (0x10..0x28).contains(&offset) && !self.is_bridge() || (0x10..0x18).contains(&offset) {
            if width != 4 {
                return Some(format!(
                    "{}: {width}-byte write to BAR at {offset:#x}",
                    self.name
                ));
            }
            let index = (offset - 0x10) / 4;
            self.store_bar(index, value);
            return None;
        }
        for i in 0..width {
            let at = offset + i;
            let mask = self.writable(at);
            let byte = (value >> (8 * i)) as u8;
            self.config[at] = (self.config[at] & !mask) | (byte & mask);
        }
        None
    }

    fn config_read(&self, offset: usize, width: usize) -> u32 {
        let mut value = 0u32;
        for i in 0..width {
            value |= u32::from(self.config[offset + i]) << (8 * i);
        }
        value
    }
}

/// One configuration access as the platform saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigRecord {
    /// Bus.
    pub bus: u8,
    /// Device.
    pub device: u8,
    /// Function.
    pub function: u8,
    /// Register offset.
    pub offset: u16,
    /// Width in bytes.
    pub width: usize,
    /// Read or write.
    pub dir: Dir,
    /// Value read or written.
    pub value: u32,
    /// Index of the function that answered, if any.
    pub answered_by: Option<usize>,
}

/// Memory or I/O space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceKind {
    /// Memory.
    Memory,
    /// I/O.
    Io,
}

/// One memory/I/O access routed (or not) to a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceRecord {
    /// Which space.
    pub space: SpaceKind,
    /// Absolute address.
    pub address: u64,
    /// Width in bytes.
    pub width: usize,
    /// Read or write.
    pub dir: Dir,
    /// The value.
    pub value: u64,
    /// (function index, BAR index) that decoded it.
    pub decoded_by: Option<(usize, usize)>,
}

/// The platform: functions plus the decoding between them.
#[derive(Default)]
pub struct PciPlatform {
    /// All functions, bridges included.
    pub functions: Vec<FunctionModel>,
    /// Every configuration access, in order.
    pub config_log: Vec<ConfigRecord>,
    /// Every memory / I/O access through the routers, in order.
    pub space_log: Vec<SpaceRecord>,
    /// Things that must not happen (overlapping decoders, bad widths, ...).
    pub violations: Vec<String>,
    address_latch: u32,
}

/// A shared handle to a platform.
pub type SharedPlatform = Rc<RefCell<PciPlatform>>;

impl PciPlatform {
    /// An empty platform.
    pub fn new() -> SharedPlatform {
        Rc::new(RefCell::new(Self::default()))
    }

    /// Adds `function` at `attach`, device `device`, function `function`;
    /// returns its index.
    pub fn add(
        &mut self,
        attach: Attach,
        device: u8,
        function: u8,
        mut model: FunctionModel,
    ) -> usize {
        model.attach = attach;
        model.device = device;
        model.function = function;
        self.functions.push(model);
        self.functions.len() - 1
    }

    /// The function at index `i`.
    pub fn function(&self, i: usize) -> &FunctionModel {
        &self.functions[i]
    }

    /// Does bridge `b` pass configuration cycles for `bus` downstream?
    fn forwards_bus(&self, b: usize, bus: u8) -> bool {
        let bridge = &self.functions[b];
        let Some(own) = self.bus_of(b) else {
            return false;
        };
        let (sec, sub) = (bridge.secondary(), bridge.subordinate());
        let in_range = sec != 0 && sec > own && sec <= bus && bus <= sub;
        in_range
            && match bridge.attach {
                Attach::Root => true,
                Attach::Behind(a) => self.forwards_bus(a, bus),
            }
    }

    /// The bus number function `i` is reachable at right now.
    pub fn bus_of(&self, i: usize) -> Option<u8> {
        match self.functions[i].attach {
            Attach::Root => Some(0),
            Attach::Behind(b) => {
                let sec = self.functions[b].secondary();
                self.forwards_bus(b, sec).then_some(sec)
            }
        }
    }

    fn find(&mut self, bus: u8, device: u8, function: u8) -> Option<usize> {
        let matches: Vec<usize> = (0..self.functions.len())
            .filter(|&i| {
                let f = &self.functions[i];
                f.device == device && f.function == function && self.bus_of(i) == Some(bus)
            })
            .collect();
        if matches.len() > 1 {
            self.violations.push(format!(
                "{} functions answer at {bus:02x}:{device:02x}.{function}",
                matches.len()
            ));
        }
        // Functions 1-7 answer only if function 0 exists (a real device has it).
        matches.first().copied()
    }

    fn config_access(
        &mut self,
        bus: u8,
        device: u8,
        function: u8,
        offset: u16,
        width: usize,
        write: Option<u32>,
    ) -> u32 {
        let found = self.find(bus, device, function);
        let value = match (found, write) {
            (Some(i), Some(v)) => {
                if let Some(problem) = self.functions[i].config_write(usize::from(offset), width, v)
                {
                    self.violations.push(problem);
                }
                v
            }
            (Some(i), None) => self.functions[i].config_read(usize::from(offset), width),
            (None, Some(v)) => v,
            (None, None) => match width {
                1 => 0xff,
                2 => 0xffff,
                _ => 0xffff_ffff,
            },
        };
        self.config_log.push(ConfigRecord {
            bus,
            device,
            function,
            offset,
            width,
            dir: if write.is_some() { Dir::W } else { Dir::R },
            value,
            answered_by: found,
        });
        value
    }

    /// Does every bridge in front of function `i` forward `address` in `space`?
    fn path_forwards(&self, i: usize, space: SpaceKind, address: u64) -> bool {
        match self.functions[i].attach {
            Attach::Root => true,
            Attach::Behind(b) => {
                let bridge = &self.functions[b];
                let inside = |w: Option<(u64, u64)>| {
                    w.is_some_and(|(lo, hi)| lo <= address && address <= hi)
                };
                let (window_ok, bit) = match space {
                    SpaceKind::Io => (inside(bridge.io_window()), 0x1),
                    SpaceKind::Memory => (
                        inside(bridge.memory_window()) || inside(bridge.prefetchable_window()),
                        0x2,
                    ),
                };
                window_ok && bridge.command() & bit != 0 && self.path_forwards(b, space, address)
            }
        }
    }

    /// Which (function, BAR, offset) decodes `address`.
    fn decode(&mut self, space: SpaceKind, address: u64) -> Option<(usize, usize, u64)> {
        let mut hits = Vec::new();
        for (i, f) in self.functions.iter().enumerate() {
            let bit = match space {
                SpaceKind::Io => 0x1,
                SpaceKind::Memory => 0x2,
            };
            if f.command() & bit == 0 {
                continue;
            }
            for (k, spec) in f.bars.iter().enumerate() {
                let matches_space = match spec {
                    BarSpec::Io(_) => space == SpaceKind::Io,
                    BarSpec::Mem32 { .. } | BarSpec::Mem64 { .. } => space == SpaceKind::Memory,
                    _ => false,
                };
                if !matches_space {
                    continue;
                }
                let (base, size) = (f.bar_address(k), f.bar_size(k));
                if base != 0 && address >= base && address < base + size {
                    hits.push((i, k, address - base));
                }
            }
        }
        let hits: Vec<_> = hits
            .into_iter()
            .filter(|&(i, _, _)| self.bus_of(i).is_some() && self.path_forwards(i, space, address))
            .collect();
        if hits.len() > 1 {
            self.violations.push(format!(
                "{space:?} address {address:#x} decoded by {hits:?}"
            ));
        }
        hits.first().copied()
    }

    /// Overlaps between any two placed BARs of the same space (should be none).
    pub fn overlapping_bars(&self) -> Vec<String> {
        let mut ranges = Vec::new();
        for (i, f) in self.functions.iter().enumerate() {
            for k in 0..6 {
                let space = match f.bars[k] {
                    BarSpec::Io(_) => SpaceKind::Io,
                    BarSpec::Mem32 { .. } | BarSpec::Mem64 { .. } => SpaceKind::Memory,
                    _ => continue,
                };
                let base = f.bar_address(k);
                if base != 0 {
                    ranges.push((space, base, base + f.bar_size(k), i, k));
                }
            }
        }
        let mut problems = Vec::new();
        for (n, a) in ranges.iter().enumerate() {
            for b in &ranges[n + 1..] {
                if a.0 == b.0 && a.1 < b.2 && b.1 < a.2 {
                    problems.push(format!("{a:?} overlaps {b:?}"));
                }
            }
        }
        problems
    }
}

/// Mechanism #1: ports 0xCF8 (address) and 0xCFC-0xCFF (data).
pub struct ConfigPorts {
    platform: SharedPlatform,
}

impl RegisterDevice for ConfigPorts {
    fn read(&mut self, offset: u64, width: usize) -> u64 {
        let mut p = self.platform.borrow_mut();
        if offset < 4 {
            return u64::from(p.address_latch);
        }
        let latch = p.address_latch;
        if latch & 0x8000_0000 == 0 {
            p.violations
                .push("config data read with the enable bit clear".into());
            return u64::MAX;
        }
        let (bus, device, function) = (
            (latch >> 16) as u8,
            ((latch >> 11) & 0x1f) as u8,
            ((latch >> 8) & 7) as u8,
        );
        let register = (latch & 0xfc) as u16 + (offset - 4) as u16;
        u64::from(p.config_access(bus, device, function, register, width, None))
    }

    fn write(&mut self, offset: u64, width: usize, value: u64) {
        let mut p = self.platform.borrow_mut();
        if offset < 4 {
            if width != 4 {
                p.violations.push("non-dword write to 0xCF8".into());
            }
            p.address_latch = value as u32;
            return;
        }
        let latch = p.address_latch;
        let (bus, device, function) = (
            (latch >> 16) as u8,
            ((latch >> 11) & 0x1f) as u8,
            ((latch >> 8) & 7) as u8,
        );
        let register = (latch & 0xfc) as u16 + (offset - 4) as u16;
        p.config_access(bus, device, function, register, width, Some(value as u32));
    }
}

/// ECAM: 4 KiB per function, 1 MiB per bus, from bus 0.
pub struct EcamWindow {
    platform: SharedPlatform,
}

fn ecam_decode(offset: u64) -> (u8, u8, u8, u16) {
    (
        (offset >> 20) as u8,
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 0x7) as u8,
        (offset & 0xfff) as u16,
    )
}

impl RegisterDevice for EcamWindow {
    fn read(&mut self, offset: u64, width: usize) -> u64 {
        let (bus, device, function, register) = ecam_decode(offset);
        u64::from(
            self.platform
                .borrow_mut()
                .config_access(bus, device, function, register, width, None),
        )
    }

    fn write(&mut self, offset: u64, width: usize, value: u64) {
        let (bus, device, function, register) = ecam_decode(offset);
        self.platform.borrow_mut().config_access(
            bus,
            device,
            function,
            register,
            width,
            Some(value as u32),
        );
    }
}

/// Memory or I/O space starting at `base`, decoded by the platform's BARs.
pub struct SpaceRouter {
    platform: SharedPlatform,
    space: SpaceKind,
    base: u64,
}

impl SpaceRouter {
    fn route(&mut self, offset: u64, width: usize, write: Option<u64>) -> u64 {
        let address = self.base + offset;
        let (decoded, handler) = {
            let mut p = self.platform.borrow_mut();
            let decoded = p.decode(self.space, address);
            let handler = decoded.and_then(|(i, k, _)| p.functions[i].handlers[k].clone());
            (decoded, handler)
        };
        let value = match (decoded, handler) {
            (Some((_, _, at)), Some(h)) => match write {
                Some(v) => {
                    h.borrow_mut().write(at, width, v);
                    v
                }
                None => h.borrow_mut().read(at, width),
            },
            _ => {
                let mut p = self.platform.borrow_mut();
                p.violations.push(format!(
                    "{:?} {} at {address:#x}: nobody decodes it",
                    self.space,
                    if write.is_some() { "write" } else { "read" }
                ));
                write.unwrap_or(u64::MAX >> (64 - 8 * width))
            }
        };
        self.platform.borrow_mut().space_log.push(SpaceRecord {
            space: self.space,
            address,
            width,
            dir: if write.is_some() { Dir::W } else { Dir::R },
            value,
            decoded_by: decoded.map(|(i, k, _)| (i, k)),
        });
        value
    }
}

impl RegisterDevice for SpaceRouter {
    fn read(&mut self, offset: u64, width: usize) -> u64 {
        self.route(offset, width, None)
    }

    fn write(&mut self, offset: u64, width: usize, value: u64) {
        self.route(offset, width, Some(value));
    }
}

/// Where the platform's address spaces are attached on the host Hal.
#[derive(Debug, Clone)]
pub struct PlatformLayout {
    /// ECAM base (bus 0) and number of buses.
    pub ecam: Option<(u64, u16)>,
    /// I/O space routed to BARs: first port and count.
    pub io: (u16, u16),
    /// Memory space below 4 GiB routed to BARs: base and length.
    pub mem32: (u64, u64),
    /// Memory above 4 GiB.
    pub mem64: Option<(u64, u64)>,
}

impl Default for PlatformLayout {
    fn default() -> Self {
        Self {
            ecam: Some((0xb000_0000, 256)),
            io: (0xc000, 0x4000),
            mem32: (0xc000_0000, 0x3e00_0000),
            mem64: Some((0x80_0000_0000, 0x10_0000_0000)),
        }
    }
}

/// Attaches `platform` to the host Hal on this thread: mechanism #1 ports,
/// ECAM, and the memory / I/O routers.
pub fn attach(platform: &SharedPlatform, layout: &PlatformLayout) {
    HostHal::map_ports(
        0xcf8,
        8,
        Rc::new(RefCell::new(ConfigPorts {
            platform: platform.clone(),
        })),
    );
    if let Some((base, buses)) = layout.ecam {
        HostHal::map_mmio(
            base,
            u64::from(buses) << 20,
            Rc::new(RefCell::new(EcamWindow {
                platform: platform.clone(),
            })),
        );
    }
    HostHal::map_ports(
        layout.io.0,
        layout.io.1,
        Rc::new(RefCell::new(SpaceRouter {
            platform: platform.clone(),
            space: SpaceKind::Io,
            base: u64::from(layout.io.0),
        })),
    );
    let mut memory = vec![layout.mem32];
    memory.extend(layout.mem64);
    for (base, len) in memory {
        HostHal::map_mmio(
            base,
            len,
            Rc::new(RefCell::new(SpaceRouter {
                platform: platform.clone(),
                space: SpaceKind::Memory,
                base,
            })),
        );
    }
}

/// Size of the modern BAR in QEMU's layout (four 4 KiB structures).
pub const MODERN_BAR_SIZE: u64 = 0x4000;
/// Size of the legacy I/O BAR used by the presets.
pub const LEGACY_BAR_SIZE: u32 = 0x40;

fn add_modern_caps(f: &mut FunctionModel, bar: u8, layout: &super::virtio::ModernLayout) {
    let len = layout.structure_len as u32;
    f.add_virtio_cap(1, bar, layout.common as u32, len, None);
    f.add_virtio_cap(3, bar, layout.isr as u32, len, None);
    f.add_virtio_cap(4, bar, layout.device as u32, len, None);
    f.add_virtio_cap(
        2,
        bar,
        layout.notify as u32,
        len,
        Some(layout.notify_multiplier),
    );
    f.add_virtio_cap(5, 0, 0, 0, None);
}

/// A transitional virtio device as QEMU builds it on `pc`: id 0x1000 + n,
/// revision 0, subsystem id = device type, legacy block in I/O BAR 0, MSI-X
/// table in BAR 1, modern structures in 64-bit prefetchable BAR 4.
pub fn virtio_transitional(
    pci_device_id: u16,
    core: &super::virtio::SharedCore,
    layout: super::virtio::ModernLayout,
) -> FunctionModel {
    let device_type = core.borrow().device_id as u16;
    let legacy: SharedDevice = super::virtio::LegacyBlock::new(core.clone());
    let modern: SharedDevice = super::virtio::ModernBar::new(core.clone(), layout);
    let mut f =
        FunctionModel::endpoint("virtio-transitional", 0x1af4, pci_device_id, 0x02_00_00, 0)
            .with_subsystem(0x1af4, device_type)
            .with_bar(0, BarSpec::Io(LEGACY_BAR_SIZE), Some(legacy))
            .with_bar(
                1,
                BarSpec::Mem32 {
                    size: 0x1000,
                    prefetchable: false,
                },
                None,
            )
            .with_bar(
                4,
                BarSpec::Mem64 {
                    size: MODERN_BAR_SIZE,
                    prefetchable: true,
                },
                Some(modern),
            );
    f.add_msix(2, 1);
    add_modern_caps(&mut f, 4, &layout);
    f
}

/// A modern-only virtio device (`disable-legacy=on`): id 0x1040 + type, revision 1.
pub fn virtio_modern(
    core: &super::virtio::SharedCore,
    layout: super::virtio::ModernLayout,
) -> FunctionModel {
    let device_type = core.borrow().device_id as u16;
    let modern: SharedDevice = super::virtio::ModernBar::new(core.clone(), layout);
    let mut f =
        FunctionModel::endpoint("virtio-modern", 0x1af4, 0x1040 + device_type, 0x01_00_00, 1)
            .with_subsystem(0x1af4, device_type)
            .with_bar(
                1,
                BarSpec::Mem32 {
                    size: 0x1000,
                    prefetchable: false,
                },
                None,
            )
            .with_bar(
                4,
                BarSpec::Mem64 {
                    size: MODERN_BAR_SIZE,
                    prefetchable: true,
                },
                Some(modern),
            );
    f.add_msix(2, 1);
    add_modern_caps(&mut f, 4, &layout);
    f
}

/// A legacy-only virtio device (`disable-modern=on`): no vendor capabilities.
pub fn virtio_legacy(pci_device_id: u16, core: &super::virtio::SharedCore) -> FunctionModel {
    let device_type = core.borrow().device_id as u16;
    let legacy: SharedDevice = super::virtio::LegacyBlock::new(core.clone());
    FunctionModel::endpoint("virtio-legacy", 0x1af4, pci_device_id, 0x01_00_00, 0)
        .with_subsystem(0x1af4, device_type)
        .with_bar(0, BarSpec::Io(LEGACY_BAR_SIZE), Some(legacy))
}
