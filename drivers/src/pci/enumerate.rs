//! Enumeration: finding every function, numbering bridges, placing BARs.
//!
//! (PCI 3.0 §6.1-6.2, PCI-to-PCI Bridge Architecture 1.2 §3.2.5 and §3.2.6.)
//!
//! [`enumerate`] works in four passes:
//!
//! 1. **Discover.** Depth-first from bus 0: on each bus try devices 0-31,
//!    function 0, and functions 1-7 when function 0 says it is multi-function.
//!    A *bridge* (header type 1) leads to another bus: its *secondary* bus,
//!    and every bus up to its *subordinate* number is behind it. If the
//!    firmware numbered every bridge consistently the numbers are kept;
//!    otherwise (qboot numbers none) every bridge is renumbered depth-first,
//!    the way firmware would: secondary = next free number, subordinate
//!    temporarily 255 so the scan below can reach everything, then the highest
//!    number actually found.
//! 2. **Size** every BAR (see [`super::bar`]).
//! 3. **Place.** A BAR the firmware left at 0 needs an address. So does every
//!    BAR behind a bridge whose window for that space is unconfigured (it
//!    cannot be reached where it is): such a bridge first gets a window big
//!    enough for everything behind it, computed bottom-up (I/O windows in 4 KiB
//!    units, memory windows in 1 MiB units, as the bridge registers encode
//!    them), then the BARs behind it are placed inside. On bus 0 the space
//!    comes from the kernel's [`BarWindows`]; 64-bit BARs prefer `mem64`.
//!    All memory behind a bridge we configure goes through its 32-bit
//!    (non-prefetchable) window, which suits every BAR kind; its
//!    prefetchable window is switched off.
//! 4. **Program** the addresses and windows, and switch on decoding: I/O and
//!    memory decoding for each function whose BARs of that space are all
//!    placed; for bridges, forwarding for each configured window plus bus
//!    mastering (a device's DMA must pass upstream through every bridge).
//!    Bus mastering for the devices themselves is left to the driver that
//!    claims them ([`PciFunction::enable_bus_mastering`]).

use alloc::vec::Vec;
use core::ops::Range;

use super::bar::{align_up, program_bar, size_bars, AddressAllocator, BarSlot, Space};
use super::{
    capabilities, enable_command_bits, regs, Bar, BarError, BarKind, BarOrigin, BarWindows,
    Capabilities, Command, ConfigAccess, PciAddress, PciError,
};

/// Granularity of a bridge's I/O window (bits 15:12 of the address).
const IO_WINDOW_GRANULARITY: u64 = 0x1000;
/// Granularity of a bridge's memory windows (bits 31:20 of the address).
const MEMORY_WINDOW_GRANULARITY: u64 = 0x10_0000;

/// The layout of a function's configuration header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    /// Type 0: an ordinary function with six BARs.
    Device,
    /// Type 1: a PCI-to-PCI bridge with two BARs and bus numbers and windows.
    PciBridge,
    /// Type 2: a CardBus bridge (not followed).
    CardBusBridge,
    /// Anything else.
    Unknown(u8),
}

/// A bridge's bus numbers and the address windows it forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeInfo {
    /// The bus right behind it.
    pub secondary_bus: u8,
    /// The highest bus behind it.
    pub subordinate_bus: u8,
    /// `true` if enumeration assigned the bus numbers.
    pub renumbered: bool,
    /// I/O window, if enabled.
    pub io_window: Option<Range<u64>>,
    /// Non-prefetchable memory window, if enabled.
    pub memory_window: Option<Range<u64>>,
    /// Prefetchable memory window, if enabled.
    pub prefetchable_window: Option<Range<u64>>,
}

/// One PCI function as enumeration left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    /// Where it is.
    pub address: PciAddress,
    /// Vendor id.
    pub vendor_id: u16,
    /// Device id.
    pub device_id: u16,
    /// Revision id.
    pub revision: u8,
    /// Class code.
    pub class: u8,
    /// Subclass code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Header layout.
    pub header: HeaderKind,
    /// Function 0 of a multi-function device (or any function of one).
    pub multifunction: bool,
    /// Subsystem vendor id (type 0 only, else 0).
    pub subsystem_vendor_id: u16,
    /// Subsystem id (type 0 only, else 0): the virtio device type of a transitional device.
    pub subsystem_id: u16,
    /// Interrupt line the firmware routed (0xff or 0 when none).
    pub interrupt_line: u8,
    /// Interrupt pin: 0 none, 1..4 INTA..INTD.
    pub interrupt_pin: u8,
    /// BARs by number; a 64-bit BAR appears at its low index only.
    pub bars: [Option<Bar>; 6],
    /// BARs that exist but cannot be used, and why.
    pub bar_errors: Vec<BarError>,
    /// Bridge details (header type 1 only).
    pub bridge: Option<BridgeInfo>,
    /// The bridge in front of this function's bus (`None` on bus 0).
    pub parent_bridge: Option<PciAddress>,
}

impl PciFunction {
    /// BAR `index`, if it exists and is placed.
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.get(usize::from(index))?.as_ref()
    }

    /// `true` for a PCI-to-PCI bridge.
    pub fn is_bridge(&self) -> bool {
        self.header == HeaderKind::PciBridge
    }

    /// Walks this function's capability list.
    pub fn capabilities<'a, C: ConfigAccess + ?Sized>(&self, access: &'a C) -> Capabilities<'a, C> {
        capabilities(access, self.address)
    }

    /// Lets the function start DMA (and makes sure decoding of its placed
    /// BARs is on). A virtio device needs this to read its rings.
    pub fn enable_bus_mastering<C: ConfigAccess + ?Sized>(
        &self,
        access: &C,
    ) -> Result<(), PciError> {
        let mut bits = Command::BUS_MASTER;
        if self.bars.iter().flatten().any(|b| b.is_io()) {
            bits |= Command::IO_SPACE;
        }
        if self.bars.iter().flatten().any(|b| !b.is_io()) {
            bits |= Command::MEMORY_SPACE;
        }
        enable_command_bits(access, self.address, bits).map(|_| ())
    }
}

/// Enumeration's working record of one function.
struct Node {
    function: PciFunction,
    parent: Option<usize>,
    slots: [BarSlot; 6],
    /// Firmware bridge windows: I/O, memory, prefetchable.
    firmware_io: Option<Range<u64>>,
    firmware_memory: Option<Range<u64>>,
    firmware_prefetchable: Option<Range<u64>>,
    /// Every bridge on the way from bus 0 has a usable window for this space.
    io_reachable: bool,
    memory_reachable: bool,
    /// Window size and alignment needed behind this bridge, when we configure it.
    need: [(u64, u64); 2],
    /// Windows we allocated.
    new_io: Option<Range<u64>>,
    new_memory: Option<Range<u64>>,
}

impl Node {
    fn is_bridge(&self) -> bool {
        self.function.is_bridge()
    }

    fn reachable(&self, space: Space) -> bool {
        match space {
            Space::Io => self.io_reachable,
            Space::Memory => self.memory_reachable,
        }
    }
}

fn space_of(kind: BarKind) -> Space {
    match kind {
        BarKind::Io => Space::Io,
        BarKind::Memory32 | BarKind::Memory64 => Space::Memory,
    }
}

fn space_index(space: Space) -> usize {
    match space {
        Space::Io => 0,
        Space::Memory => 1,
    }
}

fn granularity(space: Space) -> u64 {
    match space {
        Space::Io => IO_WINDOW_GRANULARITY,
        Space::Memory => MEMORY_WINDOW_GRANULARITY,
    }
}

enum DiscoverError {
    Pci(PciError),
    /// The firmware's bus numbering is missing or inconsistent.
    NeedsRenumbering,
}

impl From<PciError> for DiscoverError {
    fn from(e: PciError) -> Self {
        DiscoverError::Pci(e)
    }
}

struct Discovery<'a, C: ?Sized> {
    access: &'a C,
    nodes: Vec<Node>,
    visited: [u64; 4],
    renumber: bool,
    next_bus: u16,
    bus_end: u8,
}

impl<C: ConfigAccess + ?Sized> Discovery<'_, C> {
    fn address(&self, bus: u8, device: u8, function: u8) -> PciAddress {
        PciAddress {
            segment: self.access.segment(),
            bus,
            device,
            function,
        }
    }

    fn mark_visited(&mut self, bus: u8) -> bool {
        let (word, bit) = (usize::from(bus / 64), bus % 64);
        let fresh = self.visited[word] & (1 << bit) == 0;
        self.visited[word] |= 1 << bit;
        fresh
    }

    fn is_visited(&self, bus: u8) -> bool {
        self.visited[usize::from(bus / 64)] & (1 << (bus % 64)) != 0
    }

    /// Scans `bus` and everything behind its bridges; returns the highest bus number used.
    fn scan_bus(&mut self, bus: u8, parent: Option<usize>, limit: u8) -> Result<u8, DiscoverError> {
        if !self.mark_visited(bus) {
            // Two bridges claim the same bus: only renumbering can fix that.
            return Err(DiscoverError::NeedsRenumbering);
        }
        let mut bridges = Vec::new();
        for device in 0..32 {
            let first = self.address(bus, device, 0);
            let ids = self.access.read32(first, regs::VENDOR_ID)?;
            if !present(ids) {
                continue;
            }
            let header = self.access.read8(first, regs::HEADER_TYPE)?;
            let functions = if header & 0x80 != 0 { 8 } else { 1 };
            for function in 0..functions {
                let address = self.address(bus, device, function);
                let (ids, header) = if function == 0 {
                    (ids, header)
                } else {
                    let ids = self.access.read32(address, regs::VENDOR_ID)?;
                    if !present(ids) {
                        continue;
                    }
                    (ids, self.access.read8(address, regs::HEADER_TYPE)?)
                };
                let node = self.read_function(address, ids, header, parent)?;
                if node.is_bridge() {
                    bridges.push(self.nodes.len());
                }
                self.nodes.push(node);
            }
        }

        let mut highest = bus;
        if self.renumber {
            // Switch every bridge on this bus off first, so a stale firmware
            // number cannot make two bridges answer for the same bus.
            for &b in &bridges {
                let address = self.nodes[b].function.address;
                self.access.write8(address, regs::SECONDARY_BUS, 0)?;
                self.access.write8(address, regs::SUBORDINATE_BUS, 0)?;
            }
            for b in bridges {
                let address = self.nodes[b].function.address;
                if self.next_bus > u16::from(limit) {
                    log::warn!("pci: {address}: no bus number left for this bridge");
                    continue;
                }
                let secondary = self.next_bus as u8;
                self.next_bus += 1;
                self.access.write8(address, regs::PRIMARY_BUS, bus)?;
                self.access
                    .write8(address, regs::SECONDARY_BUS, secondary)?;
                self.access.write8(address, regs::SUBORDINATE_BUS, limit)?;
                let subordinate = self.scan_bus(secondary, Some(b), limit)?;
                self.access
                    .write8(address, regs::SUBORDINATE_BUS, subordinate)?;
                log::debug!(
                    "pci: {address}: bridge numbered: buses {secondary:#04x}..={subordinate:#04x}"
                );
                self.set_bus_numbers(b, secondary, subordinate, true);
                highest = highest.max(subordinate);
            }
        } else {
            for b in bridges {
                let address = self.nodes[b].function.address;
                let secondary = self.access.read8(address, regs::SECONDARY_BUS)?;
                let subordinate = self.access.read8(address, regs::SUBORDINATE_BUS)?;
                let consistent = secondary > bus
                    && subordinate >= secondary
                    && subordinate <= limit
                    && !self.is_visited(secondary);
                if !consistent {
                    log::debug!(
                        "pci: {address}: bridge buses {secondary:#04x}..={subordinate:#04x} unusable; renumbering all bridges"
                    );
                    return Err(DiscoverError::NeedsRenumbering);
                }
                self.scan_bus(secondary, Some(b), subordinate)?;
                self.set_bus_numbers(b, secondary, subordinate, false);
                highest = highest.max(subordinate);
            }
        }
        Ok(highest)
    }

    fn set_bus_numbers(&mut self, node: usize, secondary: u8, subordinate: u8, renumbered: bool) {
        if let Some(info) = self.nodes[node].function.bridge.as_mut() {
            info.secondary_bus = secondary;
            info.subordinate_bus = subordinate;
            info.renumbered = renumbered;
        }
    }

    fn read_function(
        &self,
        address: PciAddress,
        ids: u32,
        header: u8,
        parent: Option<usize>,
    ) -> Result<Node, PciError> {
        let class = self.access.read32(address, regs::REVISION_ID)?;
        let kind = match header & 0x7f {
            0 => HeaderKind::Device,
            1 => HeaderKind::PciBridge,
            2 => HeaderKind::CardBusBridge,
            other => HeaderKind::Unknown(other),
        };
        let subsystem = if kind == HeaderKind::Device {
            self.access.read32(address, regs::SUBSYSTEM_VENDOR_ID)?
        } else {
            0
        };
        let interrupt = self.access.read16(address, regs::INTERRUPT_LINE)?;
        let bridge = (kind == HeaderKind::PciBridge).then_some(BridgeInfo {
            secondary_bus: 0,
            subordinate_bus: 0,
            renumbered: false,
            io_window: None,
            memory_window: None,
            prefetchable_window: None,
        });
        let function = PciFunction {
            address,
            vendor_id: ids as u16,
            device_id: (ids >> 16) as u16,
            revision: class as u8,
            prog_if: (class >> 8) as u8,
            subclass: (class >> 16) as u8,
            class: (class >> 24) as u8,
            header: kind,
            multifunction: header & 0x80 != 0,
            subsystem_vendor_id: subsystem as u16,
            subsystem_id: (subsystem >> 16) as u16,
            interrupt_line: interrupt as u8,
            interrupt_pin: (interrupt >> 8) as u8,
            bars: [None; 6],
            bar_errors: Vec::new(),
            bridge,
            parent_bridge: parent.map(|p| self.nodes[p].function.address),
        };
        log::debug!(
            "pci: {address}: {:04x}:{:04x} class {:02x}.{:02x}.{:02x} rev {} {:?}",
            function.vendor_id,
            function.device_id,
            function.class,
            function.subclass,
            function.prog_if,
            function.revision,
            kind
        );
        Ok(Node {
            function,
            parent,
            slots: [BarSlot::Absent; 6],
            firmware_io: None,
            firmware_memory: None,
            firmware_prefetchable: None,
            io_reachable: true,
            memory_reachable: true,
            need: [(0, 0); 2],
            new_io: None,
            new_memory: None,
        })
    }
}

/// A vendor/device dword that names a function (0xFFFF: nothing answered;
/// 0x0000 is not a valid vendor either).
fn present(ids: u32) -> bool {
    let vendor = ids as u16;
    vendor != 0xffff && vendor != 0
}

/// Enumerates every function reachable from bus 0, places unassigned BARs
/// from `windows` and switches decoding on. See the module documentation.
///
/// Problems with single BARs do not stop enumeration: they are listed in
/// [`PciFunction::bar_errors`] and that BAR is `None`. Only a failing
/// configuration access is an error.
pub fn enumerate<C: ConfigAccess + ?Sized>(
    access: &C,
    windows: &BarWindows,
) -> Result<Vec<PciFunction>, PciError> {
    let bus_range = access.bus_range();
    let (bus_start, bus_end) = (*bus_range.start(), *bus_range.end());
    let mut discovery = Discovery {
        access,
        nodes: Vec::new(),
        visited: [0; 4],
        renumber: false,
        next_bus: u16::from(bus_start) + 1,
        bus_end,
    };
    match discovery.scan_bus(bus_start, None, bus_end) {
        Ok(_) => {}
        Err(DiscoverError::Pci(e)) => return Err(e),
        Err(DiscoverError::NeedsRenumbering) => {
            discovery.nodes.clear();
            discovery.visited = [0; 4];
            discovery.renumber = true;
            let end = discovery.bus_end;
            match discovery.scan_bus(bus_start, None, end) {
                Ok(_) => {}
                Err(DiscoverError::Pci(e)) => return Err(e),
                Err(DiscoverError::NeedsRenumbering) => {
                    // Renumbering visits each bus once by construction; a
                    // repeat means the hardware ignored our bus numbers.
                    log::warn!("pci: bridges ignore their bus numbers; some buses skipped");
                }
            }
        }
    }
    let mut nodes = discovery.nodes;

    size_all(access, &mut nodes)?;
    read_firmware_windows(access, &mut nodes)?;
    compute_window_needs(&mut nodes);
    place_all(&mut nodes, windows);
    program_all(access, &mut nodes)?;

    Ok(nodes.into_iter().map(|n| n.function).collect())
}

/// Pass 2: size the BARs of every function.
fn size_all<C: ConfigAccess + ?Sized>(access: &C, nodes: &mut [Node]) -> Result<(), PciError> {
    for node in nodes.iter_mut() {
        let count = match node.function.header {
            HeaderKind::Device => 6,
            HeaderKind::PciBridge => 2,
            _ => 0,
        };
        let host_bridge = node.function.class == 0x06 && node.function.subclass == 0x00;
        node.slots = size_bars(access, node.function.address, count, host_bridge)?;
        for slot in node.slots {
            if let BarSlot::Invalid(e) = slot {
                log::warn!("pci: {}: {e}", node.function.address);
                node.function.bar_errors.push(e);
            }
        }
    }
    Ok(())
}

/// Decodes a bridge's firmware windows and works out, for every node, whether
/// the path from bus 0 forwards each space (parents come before children).
fn read_firmware_windows<C: ConfigAccess + ?Sized>(
    access: &C,
    nodes: &mut [Node],
) -> Result<(), PciError> {
    for i in 0..nodes.len() {
        let (parent_io, parent_memory) = match nodes[i].parent {
            Some(p) => (
                nodes[p].io_reachable && nodes[p].firmware_io.is_some(),
                nodes[p].memory_reachable
                    && (nodes[p].firmware_memory.is_some()
                        || nodes[p].firmware_prefetchable.is_some()),
            ),
            None => (true, true),
        };
        nodes[i].io_reachable = parent_io;
        nodes[i].memory_reachable = parent_memory;
        if nodes[i].is_bridge() {
            let address = nodes[i].function.address;
            let (io, memory, prefetchable) = bridge_windows(access, address)?;
            nodes[i].firmware_io = io;
            nodes[i].firmware_memory = memory;
            nodes[i].firmware_prefetchable = prefetchable;
        }
    }
    Ok(())
}

/// A bridge node's own windows are usable for `space` (firmware-configured
/// and reachable itself).
fn bridge_forwards(node: &Node, space: Space) -> bool {
    node.reachable(space)
        && match space {
            Space::Io => node.firmware_io.is_some(),
            Space::Memory => node.firmware_memory.is_some() || node.firmware_prefetchable.is_some(),
        }
}

/// A bridge's I/O, memory and prefetchable windows (`None`: off).
type BridgeWindows = (Option<Range<u64>>, Option<Range<u64>>, Option<Range<u64>>);

/// Reads a bridge's I/O, memory and prefetchable windows; a window whose base
/// is above its limit, or at 0 (the reset value), is off.
fn bridge_windows<C: ConfigAccess + ?Sized>(
    access: &C,
    address: PciAddress,
) -> Result<BridgeWindows, PciError> {
    let io_base = access.read8(address, regs::IO_BASE)?;
    let io_limit = access.read8(address, regs::IO_LIMIT)?;
    let (io_base_upper, io_limit_upper) = if io_base & 0xf == 1 {
        (
            access.read16(address, regs::IO_BASE_UPPER)?,
            access.read16(address, regs::IO_LIMIT_UPPER)?,
        )
    } else {
        (0, 0)
    };
    let io = window(
        u64::from(io_base_upper) << 16 | u64::from(io_base & 0xf0) << 8,
        u64::from(io_limit_upper) << 16 | u64::from(io_limit & 0xf0) << 8 | 0xfff,
    );

    let memory_base = access.read16(address, regs::MEMORY_BASE)?;
    let memory_limit = access.read16(address, regs::MEMORY_LIMIT)?;
    let memory = window(
        u64::from(memory_base & 0xfff0) << 16,
        u64::from(memory_limit & 0xfff0) << 16 | 0xf_ffff,
    );

    let prefetch_base = access.read16(address, regs::PREFETCH_BASE)?;
    let prefetch_limit = access.read16(address, regs::PREFETCH_LIMIT)?;
    let (prefetch_base_upper, prefetch_limit_upper) = if prefetch_base & 0xf == 1 {
        (
            access.read32(address, regs::PREFETCH_BASE_UPPER)?,
            access.read32(address, regs::PREFETCH_LIMIT_UPPER)?,
        )
    } else {
        (0, 0)
    };
    let prefetchable = window(
        u64::from(prefetch_base_upper) << 32 | u64::from(prefetch_base & 0xfff0) << 16,
        u64::from(prefetch_limit_upper) << 32 | u64::from(prefetch_limit & 0xfff0) << 16 | 0xf_ffff,
    );
    Ok((io, memory, prefetchable))
}

fn window(base: u64, limit: u64) -> Option<Range<u64>> {
    (base != 0 && base <= limit).then(|| base..limit + 1)
}

/// Does BAR `slot` of `node` need an address from us?
fn needs_placement(node: &Node, kind: BarKind, address: u64) -> bool {
    address == 0 || !node.reachable(space_of(kind))
}

/// One thing to place on a bus: a BAR or a bridge window.
#[derive(Debug, Clone, Copy)]
struct Item {
    node: usize,
    /// `Some(index)` for a BAR, `None` for the node's bridge window.
    bar: Option<u8>,
    space: Space,
    size: u64,
    align: u64,
    sixty_four_bit: bool,
}

/// Everything on the bus behind `owner` (`None`: bus 0) that needs placing in `space`.
fn items_on_bus(nodes: &[Node], owner: Option<usize>, space: Space) -> Vec<Item> {
    let mut items = Vec::new();
    for (j, node) in nodes.iter().enumerate() {
        if node.parent != owner {
            continue;
        }
        for (index, slot) in node.slots.iter().enumerate() {
            if let BarSlot::Sized {
                kind,
                address,
                size,
                ..
            } = *slot
            {
                if space_of(kind) == space && needs_placement(node, kind, address) {
                    items.push(Item {
                        node: j,
                        bar: Some(index as u8),
                        space,
                        size,
                        align: size,
                        sixty_four_bit: kind == BarKind::Memory64,
                    });
                }
            }
        }
        let (size, align) = node.need[space_index(space)];
        if node.is_bridge() && !bridge_forwards(node, space) && size > 0 {
            items.push(Item {
                node: j,
                bar: None,
                space,
                size,
                align,
                sixty_four_bit: false,
            });
        }
    }
    // Largest alignment first: packed in this order nothing needs padding.
    items.sort_by_key(|item| core::cmp::Reverse(item.align));
    items
}

/// Pass 3a: bottom-up, the window each unconfigured bridge needs. Children
/// come after their parents in `nodes`, so walking backwards sees them first.
fn compute_window_needs(nodes: &mut [Node]) {
    for i in (0..nodes.len()).rev() {
        if !nodes[i].is_bridge() {
            continue;
        }
        for space in [Space::Io, Space::Memory] {
            if bridge_forwards(&nodes[i], space) {
                continue;
            }
            let items = items_on_bus(nodes, Some(i), space);
            let unit = granularity(space);
            let mut end = 0u64;
            let mut align = unit;
            for item in &items {
                end = align_up(end, item.align)
                    .unwrap_or(u64::MAX)
                    .saturating_add(item.size);
                align = align.max(item.align);
            }
            let size = if end == 0 {
                0
            } else {
                align_up(end, unit).unwrap_or(u64::MAX)
            };
            nodes[i].need[space_index(space)] = (size, align);
        }
    }
}

/// Pass 3b: top-down placement of BARs and bridge windows.
fn place_all(nodes: &mut [Node], windows: &BarWindows) {
    let mut allocator = AddressAllocator::default();
    // Everything the firmware placed that stays where it is.
    for node in nodes.iter() {
        for slot in node.slots {
            if let BarSlot::Sized {
                kind,
                address,
                size,
                ..
            } = slot
            {
                if !needs_placement(node, kind, address) {
                    allocator.reserve(space_of(kind), address..address.saturating_add(size));
                }
            }
        }
        if node.is_bridge() {
            if bridge_forwards(node, Space::Io) {
                if let Some(w) = node.firmware_io.clone() {
                    allocator.reserve(Space::Io, w);
                }
            }
            if bridge_forwards(node, Space::Memory) {
                for w in [
                    node.firmware_memory.clone(),
                    node.firmware_prefetchable.clone(),
                ]
                .into_iter()
                .flatten()
                {
                    allocator.reserve(Space::Memory, w);
                }
            }
        }
    }

    let root_io: Vec<Range<u64>> =
        core::iter::once(u64::from(windows.io.start)..u64::from(windows.io.end).min(0x1_0000))
            .collect();
    let root_memory: Vec<Range<u64>> =
        core::iter::once(windows.mem32.start..windows.mem32.end.min(1 << 32)).collect();
    let root_memory64: Vec<Range<u64>> = windows.mem64.clone().into_iter().collect();

    // Bus 0 first, then each bridge's bus in discovery order: a bridge's
    // window is always placed (on its parent's bus) before its own bus.
    let owners = core::iter::once(None).chain((0..nodes.len()).map(Some));
    for owner in owners {
        if let Some(b) = owner {
            if !nodes[b].is_bridge() {
                continue;
            }
        }
        for space in [Space::Io, Space::Memory] {
            let (candidates, candidates64): (Vec<Range<u64>>, Vec<Range<u64>>) = match owner {
                None => match space {
                    Space::Io => (root_io.clone(), Vec::new()),
                    Space::Memory => (root_memory.clone(), root_memory64.clone()),
                },
                Some(b) => (bus_space(&nodes[b], space), Vec::new()),
            };
            for item in items_on_bus(nodes, owner, space) {
                place_item(
                    nodes,
                    &mut allocator,
                    &item,
                    &candidates,
                    &candidates64,
                    owner,
                );
            }
        }
    }
}

/// The address ranges a bridge forwards to its bus for `space`.
fn bus_space(bridge: &Node, space: Space) -> Vec<Range<u64>> {
    let (firmware, ours) = match space {
        Space::Io => ([bridge.firmware_io.clone(), None], bridge.new_io.clone()),
        Space::Memory => (
            [
                bridge.firmware_memory.clone(),
                bridge.firmware_prefetchable.clone(),
            ],
            bridge.new_memory.clone(),
        ),
    };
    if bridge_forwards(bridge, space) {
        firmware.into_iter().flatten().collect()
    } else {
        ours.into_iter().collect()
    }
}

fn place_item(
    nodes: &mut [Node],
    allocator: &mut AddressAllocator,
    item: &Item,
    candidates: &[Range<u64>],
    candidates64: &[Range<u64>],
    owner: Option<usize>,
) {
    // A 32-bit BAR can only take an address below 4 GiB.
    let below_4g: Vec<Range<u64>> = candidates
        .iter()
        .filter(|r| r.start < 1 << 32)
        .map(|r| r.start..r.end.min(1 << 32))
        .collect();
    let address = if item.sixty_four_bit {
        allocator
            .allocate(item.space, candidates64, item.size, item.align)
            .or_else(|| allocator.allocate(item.space, candidates, item.size, item.align))
    } else {
        allocator.allocate(item.space, &below_4g, item.size, item.align)
    };
    let node = &mut nodes[item.node];
    match (item.bar, address) {
        (Some(index), Some(address)) => {
            if let BarSlot::Sized {
                kind, prefetchable, ..
            } = node.slots[usize::from(index)]
            {
                node.function.bars[usize::from(index)] = Some(Bar {
                    index,
                    kind,
                    prefetchable,
                    address,
                    size: item.size,
                    origin: BarOrigin::Enumeration,
                });
                log::debug!(
                    "pci: {}: BAR{index} {kind:?} assigned {address:#x}+{:#x}",
                    node.function.address,
                    item.size
                );
            }
        }
        (Some(index), None) => {
            let error = if owner.is_some() && candidates.is_empty() {
                BarError::Unreachable { index }
            } else {
                BarError::NoSpace {
                    index,
                    size: item.size,
                }
            };
            log::warn!("pci: {}: {error}", node.function.address);
            node.function.bar_errors.push(error);
        }
        (None, Some(address)) => {
            let range = address..address + item.size;
            log::debug!(
                "pci: {}: bridge {:?} window {:#x}..{:#x}",
                node.function.address,
                item.space,
                range.start,
                range.end
            );
            match item.space {
                Space::Io => node.new_io = Some(range),
                Space::Memory => node.new_memory = Some(range),
            }
        }
        (None, None) => log::warn!(
            "pci: {}: no room for a {:#x}-byte {:?} bridge window",
            node.function.address,
            item.size,
            item.space
        ),
    }
}

/// Pass 4: write addresses and windows, fill in the result, switch decoding on.
fn program_all<C: ConfigAccess + ?Sized>(access: &C, nodes: &mut [Node]) -> Result<(), PciError> {
    for node in nodes.iter_mut() {
        let address = node.function.address;
        // Firmware BARs that stay: record them.
        let slots = node.slots;
        for (index, slot) in slots.into_iter().enumerate() {
            if let BarSlot::Sized {
                kind,
                prefetchable,
                address: bar_address,
                size,
            } = slot
            {
                if !needs_placement(node, kind, bar_address) {
                    node.function.bars[index] = Some(Bar {
                        index: index as u8,
                        kind,
                        prefetchable,
                        address: bar_address,
                        size,
                        origin: BarOrigin::Firmware,
                    });
                }
            }
        }
        for bar in node.function.bars.iter().flatten() {
            if bar.origin == BarOrigin::Enumeration {
                program_bar(access, address, bar)?;
            }
        }

        let mut command = Command::empty();
        if node.is_bridge() {
            program_bridge_windows(access, node)?;
            let (io, memory, prefetchable) = (
                final_window(node, Space::Io),
                final_window(node, Space::Memory),
                if bridge_forwards(node, Space::Memory) {
                    node.firmware_prefetchable.clone()
                } else {
                    None
                },
            );
            if io.is_some() {
                command |= Command::IO_SPACE;
            }
            if memory.is_some() || prefetchable.is_some() {
                command |= Command::MEMORY_SPACE;
            }
            if !command.is_empty() {
                command |= Command::BUS_MASTER;
            }
            if let Some(info) = node.function.bridge.as_mut() {
                info.io_window = io;
                info.memory_window = memory;
                info.prefetchable_window = prefetchable;
            }
        }
        // Decoding for the function's own BARs, per space, only if every BAR
        // of that space has an address.
        for (space, bit) in [
            (Space::Io, Command::IO_SPACE),
            (Space::Memory, Command::MEMORY_SPACE),
        ] {
            let wanted = node.slots.iter().enumerate().filter(
                |(_, s)| matches!(s, BarSlot::Sized { kind, .. } if space_of(*kind) == space),
            );
            let mut any = false;
            let mut all_placed = true;
            for (index, _) in wanted {
                any = true;
                all_placed &= node.function.bars[index].is_some();
            }
            if any && all_placed {
                command |= bit;
            }
        }
        if !command.is_empty() {
            enable_command_bits(access, address, command)?;
        }
    }
    Ok(())
}

/// The window a bridge ends up forwarding for `space` (non-prefetchable for memory).
fn final_window(node: &Node, space: Space) -> Option<Range<u64>> {
    if bridge_forwards(node, space) {
        match space {
            Space::Io => node.firmware_io.clone(),
            Space::Memory => node.firmware_memory.clone(),
        }
    } else {
        match space {
            Space::Io => node.new_io.clone(),
            Space::Memory => node.new_memory.clone(),
        }
    }
}

/// Writes the windows of a bridge we configure (only the spaces the firmware
/// did not set up); an unneeded window is switched off with base > limit.
fn program_bridge_windows<C: ConfigAccess + ?Sized>(
    access: &C,
    node: &Node,
) -> Result<(), PciError> {
    let address = node.function.address;
    if !bridge_forwards(node, Space::Io) {
        let (base, limit) = match &node.new_io {
            Some(w) => (w.start, w.end - 1),
            None => (0xf000, 0x0fff),
        };
        access.write16(address, regs::IO_BASE_UPPER, (base >> 16) as u16)?;
        access.write16(address, regs::IO_LIMIT_UPPER, (limit >> 16) as u16)?;
        access.write8(address, regs::IO_BASE, ((base >> 8) & 0xf0) as u8)?;
        access.write8(address, regs::IO_LIMIT, ((limit >> 8) & 0xf0) as u8)?;
    }
    if !bridge_forwards(node, Space::Memory) {
        let (base, limit) = match &node.new_memory {
            Some(w) => (w.start, w.end - 1),
            None => (0xfff0_0000, 0x000f_ffff),
        };
        access.write16(address, regs::MEMORY_BASE, ((base >> 16) & 0xfff0) as u16)?;
        access.write16(address, regs::MEMORY_LIMIT, ((limit >> 16) & 0xfff0) as u16)?;
        // Everything behind this bridge goes through the window above; the
        // prefetchable one is switched off.
        access.write16(address, regs::PREFETCH_BASE, 0xfff0)?;
        access.write16(address, regs::PREFETCH_LIMIT, 0x0000)?;
        access.write32(address, regs::PREFETCH_BASE_UPPER, 0)?;
        access.write32(address, regs::PREFETCH_LIMIT_UPPER, 0)?;
    }
    Ok(())
}
