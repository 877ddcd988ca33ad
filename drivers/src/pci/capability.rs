//! Walking a function's capability list (PCI 3.0 §6.7).
//!
//! If bit 4 of the status register is set, the byte at 0x34 points to the
//! first capability; each capability starts with its id and a pointer to the
//! next one, 0 ending the list. The pointers come from the device, so the walk
//! trusts none of them: a pointer into the standard header (below 0x40) is an
//! error, a pointer seen before is a loop (an error, not a hang), and at most
//! [`MAX_CAPABILITIES`] entries are followed whatever happens.

use alloc::vec::Vec;

use super::{regs, ConfigAccess, PciAddress, PciError};

/// More capabilities than fit in the 192 bytes after the header (4 bytes each).
pub const MAX_CAPABILITIES: usize = 48;

/// Status register bit: "this function has a capability list".
const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;

/// One entry of the capability list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// Capability id (see [`super::capability_id`]).
    pub id: u8,
    /// Its offset in configuration space.
    pub offset: u8,
}

/// An iterator over a function's capabilities; yields an error (and then
/// stops) on a bad pointer or a loop.
pub struct Capabilities<'a, C: ?Sized> {
    access: &'a C,
    address: PciAddress,
    next: Option<u8>,
    seen: [u64; 4],
    count: usize,
    failed: bool,
}

/// Walks the capability list of `address`.
pub fn capabilities<C: ConfigAccess + ?Sized>(
    access: &C,
    address: PciAddress,
) -> Capabilities<'_, C> {
    Capabilities {
        access,
        address,
        next: None,
        seen: [0; 4],
        count: 0,
        failed: false,
    }
}

/// The whole capability list, or the first error found walking it.
pub fn capability_list<C: ConfigAccess + ?Sized>(
    access: &C,
    address: PciAddress,
) -> Result<Vec<Capability>, PciError> {
    capabilities(access, address).collect()
}

impl<C: ConfigAccess + ?Sized> Capabilities<'_, C> {
    fn first_pointer(&self) -> Result<u8, PciError> {
        let status = self.access.read16(self.address, regs::STATUS)?;
        if status == 0xffff || status & STATUS_CAPABILITIES_LIST == 0 {
            return Ok(0);
        }
        self.access.read8(self.address, regs::CAPABILITIES_POINTER)
    }

    fn step(&mut self) -> Result<Option<Capability>, PciError> {
        let raw = match self.next {
            None => self.first_pointer()?,
            Some(pointer) => pointer,
        };
        // The bottom two bits are reserved (PCI 3.0 §6.7: "the bottom two bits
        // ... must be masked").
        let pointer = raw & 0xfc;
        if pointer == 0 {
            self.next = Some(0);
            return Ok(None);
        }
        if pointer < 0x40 {
            return Err(PciError::CapabilityPointerInvalid {
                address: self.address,
                pointer: raw,
            });
        }
        let (word, bit) = (usize::from(pointer / 64), pointer % 64);
        if self.seen[word] & (1 << bit) != 0 || self.count >= MAX_CAPABILITIES {
            return Err(PciError::CapabilityLoop {
                address: self.address,
                offset: pointer,
            });
        }
        self.seen[word] |= 1 << bit;
        self.count += 1;
        let header = self.access.read16(self.address, u16::from(pointer))?;
        let id = header as u8;
        self.next = Some((header >> 8) as u8);
        Ok(Some(Capability {
            id,
            offset: pointer,
        }))
    }
}

impl<C: ConfigAccess + ?Sized> Iterator for Capabilities<'_, C> {
    type Item = Result<Capability, PciError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(found) => found.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
