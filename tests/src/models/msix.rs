//! An MSI-X table and pending bit array at register level (PCI 3.0 §6.8.2),
//! for the BAR that the presets in [`super::pci`] point their MSI-X
//! capability at (BAR 1: table at 0, PBA at 0x800, as QEMU lays it out).
//!
//! Entries start masked, as after a function reset. Every access is logged;
//! anything but an aligned 32-bit access, a write to the PBA or an access
//! past the table is a violation. The model does not send messages: tests
//! look at the entries and set pending bits themselves.

use std::cell::RefCell;
use std::rc::Rc;

use crate::host_hal::RegisterDevice;

use super::Dir;

/// Offset of the pending bit array in the BAR.
pub const PBA_OFFSET: u64 = 0x800;

/// One entry: address low, address high, data, vector control.
pub type Entry = [u32; 4];

/// The table BAR of one function.
pub struct MsixTableModel {
    /// The entries.
    pub entries: Vec<Entry>,
    /// Pending bits (bit n = entry n).
    pub pending: u64,
    /// Every access: direction, offset, value.
    pub log: Vec<(Dir, u64, u32)>,
    /// Things a correct driver never does.
    pub violations: Vec<String>,
}

/// A shared handle to a table model.
pub type SharedMsixTable = Rc<RefCell<MsixTableModel>>;

impl MsixTableModel {
    /// A table of `size` masked, zeroed entries.
    pub fn new(size: u16) -> SharedMsixTable {
        Rc::new(RefCell::new(MsixTableModel {
            entries: vec![[0, 0, 0, 1]; usize::from(size)],
            pending: 0,
            log: Vec::new(),
            violations: Vec::new(),
        }))
    }

    /// Entry `n`'s message address.
    pub fn address(&self, n: usize) -> u64 {
        u64::from(self.entries[n][1]) << 32 | u64::from(self.entries[n][0])
    }

    /// Entry `n`'s message data.
    pub fn data(&self, n: usize) -> u32 {
        self.entries[n][2]
    }

    /// Whether entry `n` is masked.
    pub fn masked(&self, n: usize) -> bool {
        self.entries[n][3] & 1 != 0
    }

    fn locate(&mut self, offset: u64, width: usize, write: bool) -> Option<(usize, usize)> {
        if width != 4 || !offset.is_multiple_of(4) {
            self.violations.push(format!(
                "{width}-byte access at {offset:#x}: MSI-X wants aligned dwords"
            ));
            return None;
        }
        if offset >= PBA_OFFSET {
            if write {
                self.violations
                    .push(format!("write to the read-only PBA at {offset:#x}"));
            }
            return None;
        }
        let entry = (offset / 16) as usize;
        if entry >= self.entries.len() {
            self.violations
                .push(format!("access past the table at {offset:#x}"));
            return None;
        }
        Some((entry, ((offset % 16) / 4) as usize))
    }
}

impl RegisterDevice for MsixTableModel {
    fn read(&mut self, offset: u64, width: usize) -> u64 {
        let value = if offset >= PBA_OFFSET && width == 4 && offset.is_multiple_of(4) {
            let word = (offset - PBA_OFFSET) / 4;
            if word < 2 {
                (self.pending >> (32 * word)) as u32
            } else {
                0
            }
        } else {
            match self.locate(offset, width, false) {
                Some((entry, field)) => self.entries[entry][field],
                None => u32::MAX,
            }
        };
        self.log.push((Dir::R, offset, value));
        u64::from(value)
    }

    fn write(&mut self, offset: u64, width: usize, value: u64) {
        self.log.push((Dir::W, offset, value as u32));
        if let Some((entry, field)) = self.locate(offset, width, true) {
            self.entries[entry][field] = value as u32;
        }
    }
}
