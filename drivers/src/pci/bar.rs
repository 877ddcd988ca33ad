//! Base Address Registers: sizing and address allocation (PCI 3.0 §6.2.5.1).
//!
//! A BAR says where a function's registers are. Its low bits are fixed and say
//! what kind of space it wants:
//!
//! ```text
//! I/O BAR:     [ address 31..2                    ][0][1]
//! memory BAR:  [ address 31..4        ][prefetch][type][0]   type 00 = 32-bit, 10 = 64-bit
//!                                                             (the next BAR holds bits 63..32)
//! ```
//!
//! **Sizing**: write all ones, read back: the bits that stayed 0 (below the
//! fixed ones) are the size, `size = !mask + 1`; then write the old value back.
//! Decoding is switched off meanwhile, so the device never answers at the
//! all-ones address. A device can answer anything, so a size that is not a
//! power of two, is zero, or is absurdly large is an error, not a number to
//! allocate.
//!
//! **Assignment**: firmware such as SeaBIOS places every BAR; qboot places
//! none (a transitional virtio device shows BAR0 = 0x1, I/O at 0). A BAR at 0
//! gets a naturally aligned address (a BAR of size `s` must sit at a multiple
//! of `s`) from the [`BarWindows`] the kernel passes in, avoiding every range
//! already in use. BARs the firmware placed are kept.

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use super::{regs, Command, ConfigAccess, PciAddress, PciError};

/// Largest I/O BAR the PCI spec allows (§6.2.5.1: at most 256 bytes).
pub const MAX_IO_BAR_SIZE: u64 = 256;
/// Largest memory BAR this code believes (1 TiB); anything above is a broken device.
pub const MAX_MEMORY_BAR_SIZE: u64 = 1 << 40;
/// Smallest memory BAR the spec allows (16 bytes).
pub const MIN_MEMORY_BAR_SIZE: u64 = 16;
/// Smallest I/O BAR (4 bytes).
pub const MIN_IO_BAR_SIZE: u64 = 4;

/// Which address space a BAR lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O space (ports).
    Io,
    /// 32-bit memory space.
    Memory32,
    /// 64-bit memory space (uses this BAR and the next).
    Memory64,
}

/// Who placed a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarOrigin {
    /// It had an address when enumeration found it.
    Firmware,
    /// [`super::enumerate`] assigned it (the firmware left it at 0, or it sat
    /// behind a bridge whose windows were unconfigured).
    Enumeration,
}

/// A sized, placed BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// BAR number, 0-5 (the low one for a 64-bit BAR).
    pub index: u8,
    /// Address space.
    pub kind: BarKind,
    /// Memory BARs: reads have no side effects.
    pub prefetchable: bool,
    /// Bus address (port number for I/O).
    pub address: u64,
    /// Size in bytes, a power of two.
    pub size: u64,
    /// Who placed it.
    pub origin: BarOrigin,
}

impl Bar {
    /// `true` for an I/O BAR.
    pub fn is_io(&self) -> bool {
        self.kind == BarKind::Io
    }

    /// `true` if `offset..offset+len` lies inside the BAR.
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.size)
    }
}

/// Address ranges the kernel knows are free for BARs the firmware left unassigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarWindows {
    /// I/O ports (e.g. `0xc000..0x10000`).
    pub io: Range<u32>,
    /// Memory below 4 GiB (e.g. `0xc000_0000..0xfeb0_0000`).
    pub mem32: Range<u64>,
    /// Memory above 4 GiB for 64-bit BARs, if the kernel can map it.
    pub mem64: Option<Range<u64>>,
}

/// Why a BAR is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarError {
    /// A memory BAR with the reserved type 0b11.
    ReservedType {
        /// BAR number.
        index: u8,
        /// What it read.
        raw: u32,
    },
    /// A 64-bit BAR in the last slot, with no room for its upper half.
    SixtyFourBitInLastSlot {
        /// BAR number.
        index: u8,
    },
    /// The all-ones read-back does not describe a plausible size.
    AbsurdSize {
        /// BAR number.
        index: u8,
        /// The mask that was read back (both halves for 64-bit BARs).
        mask: u64,
    },
    /// No room left in the window for a BAR of this size.
    NoSpace {
        /// BAR number.
        index: u8,
        /// Its size.
        size: u64,
    },
    /// The BAR sits behind a bridge whose window could not be set up.
    Unreachable {
        /// BAR number.
        index: u8,
    },
}

impl fmt::Display for BarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BarError::ReservedType { index, raw } => {
                write!(f, "BAR{index} has the reserved memory type ({raw:#x})")
            }
            BarError::SixtyFourBitInLastSlot { index } => {
                write!(
                    f,
                    "BAR{index} is 64-bit but has no next BAR for its upper half"
                )
            }
            BarError::AbsurdSize { index, mask } => {
                write!(
                    f,
                    "BAR{index} reads back an implausible size mask {mask:#x}"
                )
            }
            BarError::NoSpace { index, size } => {
                write!(f, "BAR{index}: no room for {size:#x} bytes in the window")
            }
            BarError::Unreachable { index } => {
                write!(f, "BAR{index} is behind a bridge without a usable window")
            }
        }
    }
}

/// What sizing found in one BAR slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BarSlot {
    /// Not implemented (reads back 0).
    Absent,
    /// The upper half of the 64-bit BAR in the previous slot.
    UpperHalf,
    /// A BAR: kind, prefetchable, firmware address (0 = unassigned), size.
    Sized {
        kind: BarKind,
        prefetchable: bool,
        address: u64,
        size: u64,
    },
    /// Unusable.
    Invalid(BarError),
}

/// Reads `offset`, writes all ones, reads back, restores. Returns (original, read-back).
fn probe_register<C: ConfigAccess + ?Sized>(
    access: &C,
    address: PciAddress,
    offset: u16,
) -> Result<(u32, u32), PciError> {
    let original = access.read32(address, offset)?;
    access.write32(address, offset, u32::MAX)?;
    let mask = access.read32(address, offset)?;
    access.write32(address, offset, original)?;
    Ok((original, mask))
}

/// Sizes the first `count` BARs of a function (6 for a device, 2 for a bridge),
/// with I/O and memory decoding off meanwhile unless `keep_decoding` (host
/// bridges: switching their decoding off could cut the CPU off from memory
/// or from the legacy ports behind them, as Linux also avoids).
pub(crate) fn size_bars<C: ConfigAccess + ?Sized>(
    access: &C,
    address: PciAddress,
    count: u8,
    keep_decoding: bool,
) -> Result<[BarSlot; 6], PciError> {
    let mut slots = [BarSlot::Absent; 6];
    if count == 0 {
        return Ok(slots);
    }
    let command = access.read16(address, regs::COMMAND)?;
    let decoding = Command::IO_SPACE | Command::MEMORY_SPACE;
    let quiet = if keep_decoding {
        command
    } else {
        command & !decoding.bits()
    };
    if quiet != command {
        access.write16(address, regs::COMMAND, quiet)?;
    }
    let mut index = 0u8;
    let result = (|| {
        while index < count.min(6) {
            let offset = regs::BAR0 + 4 * u16::from(index);
            let (original, mask) = probe_register(access, address, offset)?;
            let slot = classify(access, address, index, count, original, mask)?;
            slots[usize::from(index)] = slot;
            if let BarSlot::Sized {
                kind: BarKind::Memory64,
                ..
            } = slot
            {
                slots[usize::from(index) + 1] = BarSlot::UpperHalf;
                index += 1;
            }
            index += 1;
        }
        Ok(())
    })();
    if quiet != command {
        access.write16(address, regs::COMMAND, command)?;
    }
    result.map(|()| slots)
}

fn classify<C: ConfigAccess + ?Sized>(
    access: &C,
    address: PciAddress,
    index: u8,
    count: u8,
    original: u32,
    mask: u32,
) -> Result<BarSlot, PciError> {
    if mask == 0 {
        return Ok(BarSlot::Absent);
    }
    if mask & 1 == 1 {
        // I/O BAR. Devices may leave bits 31:16 reading 0 (16-bit decoders);
        // those bits are then not part of the size.
        let mut size_mask = mask & !0x3;
        if size_mask & 0xffff_0000 == 0 {
            size_mask |= 0xffff_0000;
        }
        let size = u64::from((!size_mask).wrapping_add(1));
        if size_mask == 0xffff_0000
            || !size.is_power_of_two()
            || !(MIN_IO_BAR_SIZE..=MAX_IO_BAR_SIZE).contains(&size)
        {
            return Ok(BarSlot::Invalid(BarError::AbsurdSize {
                index,
                mask: u64::from(mask),
            }));
        }
        return Ok(BarSlot::Sized {
            kind: BarKind::Io,
            prefetchable: false,
            address: u64::from(original & !0x3),
            size,
        });
    }
    let prefetchable = mask & 0x8 != 0;
    let (kind, full_mask, full_address) = match (mask >> 1) & 0x3 {
        // 0b01 was "below 1 MiB" in PCI 2.x; treat it as 32-bit.
        0b00 | 0b01 => (
            BarKind::Memory32,
            u64::from(mask & !0xf) | 0xffff_ffff_0000_0000,
            u64::from(original & !0xf),
        ),
        0b10 => {
            if index + 1 >= count {
                return Ok(BarSlot::Invalid(BarError::SixtyFourBitInLastSlot { index }));
            }
            let upper_offset = regs::BAR0 + 4 * u16::from(index + 1);
            let (original_high, mask_high) = probe_register(access, address, upper_offset)?;
            (
                BarKind::Memory64,
                u64::from(mask_high) << 32 | u64::from(mask & !0xf),
                u64::from(original_high) << 32 | u64::from(original & !0xf),
            )
        }
        _ => {
            return Ok(BarSlot::Invalid(BarError::ReservedType {
                index,
                raw: mask,
            }))
        }
    };
    let size = (!full_mask).wrapping_add(1);
    if !size.is_power_of_two() || !(MIN_MEMORY_BAR_SIZE..=MAX_MEMORY_BAR_SIZE).contains(&size) {
        return Ok(BarSlot::Invalid(BarError::AbsurdSize {
            index,
            mask: full_mask,
        }));
    }
    Ok(BarSlot::Sized {
        kind,
        prefetchable,
        address: full_address,
        size,
    })
}

/// Writes a BAR's address (both halves for a 64-bit BAR, low first).
pub(crate) fn program_bar<C: ConfigAccess + ?Sized>(
    access: &C,
    address: PciAddress,
    bar: &Bar,
) -> Result<(), PciError> {
    let offset = regs::BAR0 + 4 * u16::from(bar.index);
    access.write32(address, offset, bar.address as u32)?;
    if bar.kind == BarKind::Memory64 {
        access.write32(address, offset + 4, (bar.address >> 32) as u32)?;
    }
    Ok(())
}

/// The two address spaces BARs and bridge windows live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Space {
    Io,
    Memory,
}

/// First-fit allocation of naturally aligned ranges, avoiding every range
/// already in use (firmware BARs, firmware bridge windows, earlier allocations).
#[derive(Debug, Default)]
pub(crate) struct AddressAllocator {
    io_used: Vec<Range<u64>>,
    memory_used: Vec<Range<u64>>,
}

impl AddressAllocator {
    fn used(&self, space: Space) -> &Vec<Range<u64>> {
        match space {
            Space::Io => &self.io_used,
            Space::Memory => &self.memory_used,
        }
    }

    /// Marks `range` as in use.
    pub(crate) fn reserve(&mut self, space: Space, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        match space {
            Space::Io => self.io_used.push(range),
            Space::Memory => self.memory_used.push(range),
        }
    }

    /// Finds `size` bytes aligned to `align` inside one of `candidates`,
    /// reserves and returns the start. A used range that contains a whole
    /// candidate window is that window's own bridge window (an ancestor), not
    /// a conflict.
    pub(crate) fn allocate(
        &mut self,
        space: Space,
        candidates: &[Range<u64>],
        size: u64,
        align: u64,
    ) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        for window in candidates {
            let mut start = align_up(window.start, align)?;
            loop {
                let end = start.checked_add(size)?;
                if end > window.end {
                    break;
                }
                let conflict = self.used(space).iter().find(|used| {
                    let ancestor = used.start <= window.start && used.end >= window.end;
                    !ancestor && used.start < end && start < used.end
                });
                match conflict {
                    Some(used) => start = align_up(used.end, align)?,
                    None => {
                        self.reserve(space, start..end);
                        return Some(start);
                    }
                }
            }
        }
        None
    }
}

/// Rounds `value` up to a multiple of `align` (a power of two); `None` on overflow.
pub(crate) fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}
