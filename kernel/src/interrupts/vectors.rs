//! # Vector allocation and the handler registry
//!
//! The IDT has 256 vectors. This kernel divides them like this:
//!
//! | vectors     | use |
//! | ----------- | --- |
//! | 0x00-0x1F   | CPU exceptions (reserved by the architecture, SDM vol. 3A §6.3) |
//! | 0x20-0x2F   | where the masked 8259 PICs would deliver; only strays arrive here |
//! | 0x30-0xEF   | handed out by [`allocate`] to drivers and tests |
//! | 0xF0        | the SMP work IPI: "look at your work queue" (`smp/work.rs`) |
//! | 0xF1-0xFD   | reserved for the kernel (unused so far) |
//! | 0xFE        | local APIC error interrupt |
//! | 0xFF        | local APIC spurious-interrupt vector |
//!
//! The local APIC prioritises by vector: the priority class is `vector >> 4` (SDM vol. 3A
//! §11.8.3), so 0xFE/0xFF sit in the highest class. The allocator hands out the lowest free
//! vector; nothing here nests interrupts, so the class only matters when two are pending at once.
//!
//! A handler is a plain function pointer, optionally with a `usize` of context that is passed
//! back on every call (an index into a driver's own table, or a pointer the driver keeps alive
//! until it frees the vector). Function pointers and integers, unlike boxed closures, can be
//! copied out of the registry and called without allocating or freeing anything in interrupt
//! context, where the heap lock might be held by the interrupted code.
//!
//! The registry is a spin lock over 256 slots. Code outside interrupt context takes it with
//! interrupts disabled, so the dispatcher (which runs with interrupts disabled) can never find it
//! held by the code it interrupted on the same CPU. The dispatcher copies the handler out and
//! releases the lock before calling it, so handlers may themselves allocate or free vectors.

use super::IrqError;
use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;

/// First vector the allocator hands out.
pub const FIRST_ALLOCATABLE: u8 = 0x30;
/// Last vector the allocator hands out.
pub const LAST_ALLOCATABLE: u8 = 0xef;
/// The inter-processor interrupt that tells a CPU its work queue has something (`smp::run_on`)
/// or that a job it waits for is done.
pub const WORK_IPI_VECTOR: u8 = 0xf0;
/// The local APIC's error interrupt (LVT error entry).
pub const APIC_ERROR_VECTOR: u8 = 0xfe;
/// The local APIC's spurious-interrupt vector (SDM §11.9). All-ones low nibble, which older
/// APICs require.
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// What runs when a vector fires.
#[derive(Debug, Clone, Copy)]
pub enum Handler {
    /// Called with the vector number.
    Plain(fn(u8)),
    /// Called with the vector number and the context given at allocation.
    WithContext(fn(u8, usize), usize),
}

impl Handler {
    /// Runs the handler for `vector`.
    #[inline]
    pub fn call(self, vector: u8) {
        match self {
            Handler::Plain(handler) => handler(vector),
            Handler::WithContext(handler, context) => handler(vector, context),
        }
    }
}

static REGISTRY: Mutex<[Option<Handler>; 256]> = Mutex::new([None; 256]);

/// Whether `vector` is one the allocator manages.
pub fn is_allocatable(vector: u8) -> bool {
    (FIRST_ALLOCATABLE..=LAST_ALLOCATABLE).contains(&vector)
}

/// Takes the lowest free vector in 0x30..=0xEF and installs `handler` on it.
pub fn allocate(handler: Handler) -> Result<u8, IrqError> {
    without_interrupts(|| {
        let mut slots = REGISTRY.lock();
        let vector = (FIRST_ALLOCATABLE..=LAST_ALLOCATABLE)
            .find(|&v| slots[usize::from(v)].is_none())
            .ok_or(IrqError::NoFreeVector)?;
        slots[usize::from(vector)] = Some(handler);
        Ok(vector)
    })
}

/// Removes the handler of an allocated vector and makes it free again.
pub fn free(vector: u8) -> Result<(), IrqError> {
    if !is_allocatable(vector) {
        return Err(IrqError::VectorNotAllocatable(vector));
    }
    without_interrupts(|| {
        let mut slots = REGISTRY.lock();
        match slots[usize::from(vector)].take() {
            Some(_) => Ok(()),
            None => Err(IrqError::VectorNotAllocated(vector)),
        }
    })
}

/// The handler of `vector`, if one is installed. Safe to call in interrupt context.
#[inline]
pub fn handler_of(vector: u8) -> Option<Handler> {
    without_interrupts(|| REGISTRY.lock()[usize::from(vector)])
}

/// Whether `vector` currently has a handler.
pub fn is_allocated(vector: u8) -> bool {
    handler_of(vector).is_some()
}

/// How many allocatable vectors are still free.
#[cfg(feature = "selftest")]
pub fn free_count() -> usize {
    without_interrupts(|| {
        let slots = REGISTRY.lock();
        (FIRST_ALLOCATABLE..=LAST_ALLOCATABLE)
            .filter(|&v| slots[usize::from(v)].is_none())
            .count()
    })
}
