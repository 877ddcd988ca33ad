//! # One Intel VT-d DMA-remapping unit: registers, tables, invalidation, faults
//!
//! Section numbers are those of the Intel Virtualization Technology for Directed I/O
//! Architecture Specification, revision 4.1. A remapping unit sits between PCI devices and
//! memory; for every DMA it looks up the requester (bus, device, function) and translates the
//! address, or blocks it and records a fault:
//!
//! ```text
//! RTADDR_REG -> root table (256 entries, one per bus)          §9.1
//!                 -> context table (256 entries, one per devfn) §9.3
//!                      -> domain ID + second-level page table   §9.8 (page_table.rs)
//!                         or pass-through (TT = 10b)
//! ```
//!
//! Changing what the unit caches (context entries, IOTLB entries) takes an explicit
//! invalidation. This driver uses the **invalidation queue** (§6.5.2): a ring of 16-byte
//! descriptors in memory that software appends to, moving the tail register (IQT_REG); an
//! *invalidation wait* descriptor with Status Write makes the unit write a value to memory once
//! everything before it is done, which the CPU polls. Blocked accesses land in the **fault
//! recording registers** (§7.3, §11.4.14) and raise the **fault event** interrupt, an MSI
//! programmed in FEDATA/FEADDR (§7.3.1, §11.4.12-13).
//!
//! Everything here runs with the unit's lock held and interrupts off (see `iommu/mod.rs`).

use core::ptr::NonNull;

use alloc::vec::Vec;

use super::page_table::{new_table, TableError};
use crate::memory;

// Register offsets (§11.4).
const VER_REG: usize = 0x00;
const CAP_REG: usize = 0x08;
const ECAP_REG: usize = 0x10;
const GCMD_REG: usize = 0x18;
const GSTS_REG: usize = 0x1c;
const RTADDR_REG: usize = 0x20;
const FSTS_REG: usize = 0x34;
const FECTL_REG: usize = 0x38;
const FEDATA_REG: usize = 0x3c;
const FEADDR_REG: usize = 0x40;
const FEUADDR_REG: usize = 0x44;
const IQT_REG: usize = 0x88;
const IQA_REG: usize = 0x90;

// Global command / status bits (§11.4.4-5).
const GCMD_TE: u32 = 1 << 31;
const GCMD_SRTP: u32 = 1 << 30;
const GCMD_WBF: u32 = 1 << 27;
const GCMD_QIE: u32 = 1 << 26;
/// GSTS bits that are one-shot commands (SRTP, SFL, WBF, SIRTP, CFI's status is persistent):
/// masked out when GSTS is turned into the next GCMD value, as §11.4.4 asks.
const GSTS_PERSISTENT: u32 = 0x96ff_ffff;

// Capability bits (§11.4.2-3).
const CAP_RWBF: u64 = 1 << 4;
const CAP_CM: u64 = 1 << 7;
const CAP_PSI: u64 = 1 << 39;
const CAP_DWD: u64 = 1 << 54;
const CAP_DRD: u64 = 1 << 55;
const ECAP_C: u64 = 1 << 0;
const ECAP_QI: u64 = 1 << 1;
const ECAP_PT: u64 = 1 << 6;

// Fault status (§11.4.10).
const FSTS_PFO: u32 = 1 << 0;
const FSTS_PPF: u32 = 1 << 1;
const FSTS_IQE: u32 = 1 << 4;
/// FECTL bit 31: interrupt mask.
const FECTL_IM: u32 = 1 << 31;
/// Fault recording register, high quadword: bit 63 Fault, bit 62 Type (1 = read).
const FRCD_F: u64 = 1 << 63;
const FRCD_T_READ: u64 = 1 << 62;

// Invalidation descriptors (§6.5.2).
const DESC_CONTEXT: u64 = 0x1;
const DESC_IOTLB: u64 = 0x2;
const DESC_WAIT: u64 = 0x5;
const GRANULARITY_GLOBAL: u64 = 1 << 4;
const IOTLB_DOMAIN: u64 = 2 << 4;
const IOTLB_PAGE: u64 = 3 << 4;
const IOTLB_DRAIN_READS: u64 = 1 << 7;
const IOTLB_DRAIN_WRITES: u64 = 1 << 6;
const WAIT_STATUS_WRITE: u64 = 1 << 5;
/// Queue of 256 descriptors (one page, IQA.QS = 0).
const QUEUE_ENTRIES: usize = 256;

/// How long a command or an invalidation may take before the unit is declared broken.
const TIMEOUT_NS: u64 = 1_000_000_000;

/// What went wrong talking to the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VtdError {
    /// The register block could not be mapped.
    Map,
    /// The unit has no queued invalidation (ECAP.QI): this driver needs it.
    NoQueuedInvalidation,
    /// Neither a 39-bit nor a 48-bit second-level table is supported (CAP.SAGAW).
    NoUsableAddressWidth,
    /// No memory for a table.
    OutOfMemory,
    /// A command bit never showed in GSTS.
    CommandTimeout(&'static str),
    /// An invalidation wait never completed.
    InvalidationTimeout,
    /// The unit reported an invalidation queue error (FSTS.IQE).
    InvalidationQueueError,
}

impl core::fmt::Display for VtdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VtdError::Map => f.write_str("cannot map the register block"),
            VtdError::NoQueuedInvalidation => f.write_str("no queued invalidation (ECAP.QI)"),
            VtdError::NoUsableAddressWidth => f.write_str("no 39- or 48-bit page tables (SAGAW)"),
            VtdError::OutOfMemory => f.write_str("out of memory for tables"),
            VtdError::CommandTimeout(what) => write!(f, "{what} never acknowledged in GSTS"),
            VtdError::InvalidationTimeout => f.write_str("invalidation wait timed out"),
            VtdError::InvalidationQueueError => f.write_str("invalidation queue error (IQE)"),
        }
    }
}

impl From<TableError> for VtdError {
    fn from(_: TableError) -> Self {
        VtdError::OutOfMemory
    }
}

/// How a context entry lets a device's DMA through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextMode {
    /// Translate through the domain's second-level table (TT = 00b).
    Translate {
        /// Domain ID (tags the unit's caches).
        domain: u16,
        /// Physical address of the top table.
        table: u64,
    },
    /// Untranslated: DMA address = physical address (TT = 10b, needs ECAP.PT).
    PassThrough {
        /// Domain ID (still required, §9.3).
        domain: u16,
    },
}

/// One recorded fault (§11.4.14), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Requester: bus in 15:8, device in 7:3, function in 2:0.
    pub source: u16,
    /// The page address the device used (FI, bits 63:12).
    pub address: u64,
    /// `true` for a read (the device fetching memory), `false` for a write.
    pub read: bool,
    /// The fault reason code (§7.1.3, Table 26).
    pub reason: u8,
}

impl Fault {
    /// The requester as `bb:dd.f`.
    pub fn source_text(&self) -> alloc::string::String {
        alloc::format!(
            "{:02x}:{:02x}.{}",
            self.source >> 8,
            (self.source >> 3) & 0x1f,
            self.source & 7
        )
    }
}

/// The words of fault reason `code` (legacy-mode reasons, §7.1.3 Table 26).
pub fn reason_text(code: u8) -> &'static str {
    match code {
        0x1 => "root entry not present",
        0x2 => "context entry not present",
        0x3 => "invalid context entry",
        0x4 => "address beyond the address width",
        0x5 => "write to a page not mapped writable",
        0x6 => "read from a page not mapped readable",
        0x7 => "second-level table entry not present",
        0x8 => "root table address invalid",
        0x9 => "context table pointer invalid",
        0xa => "reserved bits in a root entry",
        0xb => "reserved bits in a context entry",
        0xc => "reserved bits in a page-table entry",
        0xd => "translation type not allowed",
        _ => "other reason",
    }
}

/// One remapping unit, set up by [`Unit::new`].
pub struct Unit {
    registers: NonNull<u8>,
    capability: u64,
    extended: u64,
    /// Physical address of the root table.
    root_table: u64,
    /// Per bus, the physical address of its context table (0 = none yet).
    context_tables: Vec<u64>,
    /// The invalidation queue: base, next free slot.
    queue: u64,
    queue_tail: usize,
    /// Where the unit writes invalidation-wait status values, and the next value to use.
    wait_status: u64,
    next_wait_value: u32,
    /// Levels of the second-level tables this unit walks (3 or 4).
    pub levels: u32,
    /// The context entry's AW field for `levels`.
    address_width_code: u64,
}

// SAFETY: the register pointer is a permanent uncached mapping; the unit is only used under
// the `iommu` lock.
unsafe impl Send for Unit {}

impl Unit {
    /// Maps the unit at `base`, reads its capabilities, installs an empty root table and turns
    /// on the invalidation queue. Translation stays off until [`Unit::enable_translation`].
    pub fn new(base: u64) -> Result<Self, VtdError> {
        let registers = memory::map_mmio(base, 4096).map_err(|_| VtdError::Map)?;
        let mut unit = Unit {
            registers,
            capability: 0,
            extended: 0,
            root_table: 0,
            context_tables: alloc::vec![0; 256],
            queue: 0,
            queue_tail: 0,
            wait_status: 0,
            next_wait_value: 1,
            levels: 0,
            address_width_code: 0,
        };
        unit.capability = unit.read64(CAP_REG);
        unit.extended = unit.read64(ECAP_REG);
        let version = unit.read32(VER_REG);
        log::info!(
            "iommu: VT-d {}.{} at {base:#x}: CAP {:#x} ECAP {:#x}",
            (version >> 4) & 0xf,
            version & 0xf,
            unit.capability,
            unit.extended
        );
        if unit.extended & ECAP_QI == 0 {
            return Err(VtdError::NoQueuedInvalidation);
        }
        // SAGAW (CAP 12:8): bit 1 = 39-bit 3-level, bit 2 = 48-bit 4-level (§11.4.2).
        let sagaw = (unit.capability >> 8) & 0x1f;
        (unit.levels, unit.address_width_code) = if sagaw & 0b010 != 0 {
            (3, 1)
        } else if sagaw & 0b100 != 0 {
            (4, 2)
        } else {
            return Err(VtdError::NoUsableAddressWidth);
        };
        // No fault interrupts until the handler is set up (`enable_fault_interrupt`).
        unit.mask_fault_interrupt();
        if unit.read32(GSTS_REG) & GCMD_TE != 0 {
            // Firmware left translation on: start from a clean state.
            unit.command(0, GCMD_TE, "translation off")?;
        }
        unit.root_table = new_table()?;
        unit.write64(RTADDR_REG, unit.root_table);
        unit.command(GCMD_SRTP, 0, "set root table pointer")?;
        unit.queue = new_table()?;
        unit.wait_status = new_table()?;
        unit.write64(IQT_REG, 0);
        unit.write64(IQA_REG, unit.queue); // QS = 0: one page, 256 descriptors
        unit.command(GCMD_QIE, 0, "queued invalidation on")?;
        Ok(unit)
    }

    /// The unit snoops CPU caches on page walks (ECAP.C).
    pub fn coherent(&self) -> bool {
        self.extended & ECAP_C != 0
    }

    /// The unit supports pass-through context entries (ECAP.PT).
    pub fn supports_pass_through(&self) -> bool {
        self.extended & ECAP_PT != 0
    }

    /// How many domain IDs the unit tells apart (CAP.ND, bits 2:0: 2^(4 + 2 * ND), §11.4.2).
    pub fn domain_ids(&self) -> u32 {
        let nd = (self.capability & 0x7).min(6) as u32;
        1 << (4 + 2 * nd)
    }

    /// The unit caches not-present entries (CAP.CM): mapping then needs an invalidation too.
    pub fn caching_mode(&self) -> bool {
        self.capability & CAP_CM != 0
    }

    /// Points the context entry of `bus:devfn` at `mode` (§9.3), creating the bus's context
    /// table if needed, and invalidates the unit's cached copy of it.
    pub fn set_context(&mut self, bus: u8, devfn: u8, mode: ContextMode) -> Result<(), VtdError> {
        let mut table = self.context_tables[usize::from(bus)];
        if table == 0 {
            table = new_table()?;
            self.context_tables[usize::from(bus)] = table;
            // Root entry: bit 0 present, 63:12 context-table pointer (§9.1).
            self.store_pair(self.root_table + u64::from(bus) * 16, [table | 1, 0]);
        }
        let (low, domain) = match mode {
            // TT = 00b, bits 63:12 the second-level table, bit 0 present.
            ContextMode::Translate { domain, table } => (table | 1, domain),
            // TT = 10b (bits 3:2), no table.
            ContextMode::PassThrough { domain } => ((0b10 << 2) | 1, domain),
        };
        // High quadword: AW in 2:0, DID in 23:8.
        let high = self.address_width_code | (u64::from(domain) << 8);
        self.store_pair(table + u64::from(devfn) * 16, [low, high]);
        self.flush_write_buffer()?;
        // The entry was not present before: with caching mode the unit may have cached that,
        // so invalidate the context cache for this device, then the domain's IOTLB (§6.5.3.3).
        let source = (u64::from(bus) << 8) | u64::from(devfn);
        self.submit(&[
            [
                DESC_CONTEXT | (3 << 4) | (u64::from(domain) << 16) | (source << 32),
                0,
            ],
            [DESC_IOTLB | IOTLB_DOMAIN | (u64::from(domain) << 16), 0],
        ])
    }

    /// Invalidates global context cache and IOTLB (before translation is first turned on).
    pub fn invalidate_all(&mut self) -> Result<(), VtdError> {
        self.submit(&[
            [DESC_CONTEXT | GRANULARITY_GLOBAL, 0],
            [DESC_IOTLB | GRANULARITY_GLOBAL, 0],
        ])
    }

    /// Makes the unit forget IOTLB entries of `domain` for IOVA pages `first..=last` (page
    /// numbers): one page-selective descriptor covering the smallest naturally aligned power of
    /// two that holds the range (§6.5.2.3, address mask AM), or the whole domain when that block
    /// is larger than the unit allows (CAP.MAMV) or page-selective is not supported. One wait
    /// descriptor covers it, so an unshare of any size costs one queue round trip.
    pub fn invalidate_pages(&mut self, domain: u16, first: u64, last: u64) -> Result<(), VtdError> {
        let mut mask = 0u32;
        while (first >> mask) != (last >> mask) {
            mask += 1;
        }
        let max_mask = ((self.capability >> 48) & 0x3f) as u32;
        let drain = (if self.capability & CAP_DRD != 0 {
            IOTLB_DRAIN_READS
        } else {
            0
        }) | (if self.capability & CAP_DWD != 0 {
            IOTLB_DRAIN_WRITES
        } else {
            0
        });
        let descriptor = if self.capability & CAP_PSI != 0 && mask <= max_mask {
            let address = (first >> mask) << (mask + 12);
            [
                DESC_IOTLB | IOTLB_PAGE | drain | (u64::from(domain) << 16),
                address | u64::from(mask),
            ]
        } else {
            [
                DESC_IOTLB | IOTLB_DOMAIN | drain | (u64::from(domain) << 16),
                0,
            ]
        };
        self.submit(&[descriptor])
    }

    /// Programs the fault event interrupt (an MSI: `address`, `data`) and unmasks it.
    pub fn enable_fault_interrupt(&mut self, address: u64, data: u32) {
        self.write32(FEDATA_REG, data);
        self.write32(FEADDR_REG, address as u32);
        self.write32(FEUADDR_REG, (address >> 32) as u32);
        self.write32(FECTL_REG, 0);
    }

    /// Masks the fault event interrupt.
    pub fn mask_fault_interrupt(&mut self) {
        self.write32(FECTL_REG, FECTL_IM);
    }

    /// Turns DMA remapping on (GCMD.TE): from here every DMA of a device on this unit is
    /// translated through its context entry, and blocked if it has none.
    pub fn enable_translation(&mut self) -> Result<(), VtdError> {
        self.command(GCMD_TE, 0, "translation on")
    }

    /// Reads and clears every pending fault record (§7.3.1), oldest first, and the overflow
    /// flag. Returns the faults and whether records were lost to overflow.
    pub fn take_faults(&mut self) -> (Vec<Fault>, bool) {
        let status = self.read32(FSTS_REG);
        let mut faults = Vec::new();
        if status & FSTS_PPF != 0 {
            let offset = (((self.capability >> 24) & 0x3ff) * 16) as usize;
            let count = ((self.capability >> 40) & 0xff) as usize + 1;
            let first = ((status >> 8) & 0xff) as usize;
            for step in 0..count {
                let record = offset + ((first + step) % count) * 16;
                if record + 16 > 4096 {
                    break;
                }
                let high = self.read64(record + 8);
                if high & FRCD_F == 0 {
                    continue;
                }
                let low = self.read64(record);
                faults.push(Fault {
                    source: (high & 0xffff) as u16,
                    address: low & !0xfff,
                    read: high & FRCD_T_READ != 0,
                    reason: ((high >> 32) & 0xff) as u8,
                });
                // F is write-1-to-clear, in the record's top dword.
                self.write32(record + 12, 1 << 31);
            }
        }
        let overflow = status & FSTS_PFO != 0;
        if overflow {
            self.write32(FSTS_REG, FSTS_PFO);
        }
        (faults, overflow)
    }

    /// Appends `descriptors` and a wait descriptor, moves the tail once, and polls until the
    /// unit has written the wait's status value (everything before it is then done, §6.5.2.8).
    fn submit(&mut self, descriptors: &[[u64; 2]]) -> Result<(), VtdError> {
        let value = self.next_wait_value;
        self.next_wait_value = self.next_wait_value.wrapping_add(1).max(1);
        let status = memory::phys_to_virt(self.wait_status).cast::<u32>();
        // SAFETY: the status page is ours; the unit writes it only when asked to below.
        unsafe { status.write_volatile(0) };
        let wait = [
            DESC_WAIT | WAIT_STATUS_WRITE | (u64::from(value) << 32),
            self.wait_status,
        ];
        for descriptor in descriptors.iter().chain(core::iter::once(&wait)) {
            let slot = self.queue + (self.queue_tail as u64) * 16;
            self.store_pair(slot, *descriptor);
            self.queue_tail = (self.queue_tail + 1) % QUEUE_ENTRIES;
        }
        // Every submit waits for its own completion, so the queue is empty on entry and a batch
        // (at most a handful of descriptors) always fits.
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.write64(IQT_REG, (self.queue_tail as u64) << 4);
        let deadline = crate::clock::uptime_ns() + TIMEOUT_NS;
        loop {
            // SAFETY: as above; volatile because the unit writes it.
            if unsafe { status.read_volatile() } == value {
                return Ok(());
            }
            if self.read32(FSTS_REG) & FSTS_IQE != 0 {
                self.write32(FSTS_REG, FSTS_IQE);
                return Err(VtdError::InvalidationQueueError);
            }
            if crate::clock::uptime_ns() > deadline {
                return Err(VtdError::InvalidationTimeout);
            }
            core::hint::spin_loop();
        }
    }

    /// Sets `set` (a one-shot or persistent command) or clears `clear` (a persistent one) in
    /// GCMD, one field at a time, and waits for GSTS to show it (§11.4.4).
    fn command(&mut self, set: u32, clear: u32, what: &'static str) -> Result<(), VtdError> {
        let current = self.read32(GSTS_REG) & GSTS_PERSISTENT;
        self.write32(GCMD_REG, (current | set) & !clear);
        let deadline = crate::clock::uptime_ns() + TIMEOUT_NS;
        loop {
            let status = self.read32(GSTS_REG);
            // A one-shot bit's status is set when done (SRTP -> RTPS is the same bit); WBF's
            // status clears when done.
            let done = if set == GCMD_WBF {
                status & GCMD_WBF == 0
            } else {
                status & set == set && status & clear == 0
            };
            if done {
                return Ok(());
            }
            if crate::clock::uptime_ns() > deadline {
                return Err(VtdError::CommandTimeout(what));
            }
            core::hint::spin_loop();
        }
    }

    /// Flushes the unit's write buffer where it has one (CAP.RWBF, §6.8).
    fn flush_write_buffer(&mut self) -> Result<(), VtdError> {
        if self.capability & CAP_RWBF != 0 {
            self.command(GCMD_WBF, 0, "write buffer flush")?;
        }
        Ok(())
    }

    /// Writes a 16-byte table entry or descriptor (low quadword last for entries whose present
    /// bit is there) where the unit will see it.
    fn store_pair(&self, phys: u64, value: [u64; 2]) {
        let slot = memory::phys_to_virt(phys).cast::<u64>();
        // SAFETY: `phys` is a 16-byte slot in a table or queue page this unit owns; volatile
        // because the unit reads it behind the compiler's back.
        unsafe {
            slot.add(1).write_volatile(value[1]);
            slot.write_volatile(value[0]);
        }
        if !self.coherent() {
            // SAFETY: `clflush` on a mapped address only writes the line back.
            unsafe { core::arch::x86_64::_mm_clflush(slot.cast::<u8>()) };
        }
    }

    fn read32(&self, offset: usize) -> u32 {
        // SAFETY: `offset` is a register inside the 4 KiB uncached mapping of the block.
        unsafe {
            self.registers
                .as_ptr()
                .add(offset)
                .cast::<u32>()
                .read_volatile()
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        // SAFETY: as for `read32`.
        unsafe {
            self.registers
                .as_ptr()
                .add(offset)
                .cast::<u32>()
                .write_volatile(value)
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        // SAFETY: as for `read32`; 64-bit registers are 8-byte aligned.
        unsafe {
            self.registers
                .as_ptr()
                .add(offset)
                .cast::<u64>()
                .read_volatile()
        }
    }

    fn write64(&self, offset: usize, value: u64) {
        // SAFETY: as for `read64`.
        unsafe {
            self.registers
                .as_ptr()
                .add(offset)
                .cast::<u64>()
                .write_volatile(value)
        }
    }
}
