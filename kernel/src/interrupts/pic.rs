//! # The legacy 8259A PICs: remapped, then silenced
//!
//! PC-compatible machines still have two cascaded 8259A programmable interrupt controllers
//! (Intel 8259A datasheet, document 231468), and after reset they deliver IRQ 0-7 on vectors
//! 8-15, on top of the CPU's exception vectors. This kernel uses the I/O APIC instead, so it
//! masks every PIC input. It re-initialises the pair first, moving them to vectors 0x20-0x2F, so
//! that an interrupt the PIC raises anyway (the 8259's "spurious IRQ 7", or one already latched)
//! lands on a vector the dispatcher recognises as "stray 8259" instead of looking like a fault.
//!
//! Initialisation is the ICW1-ICW4 sequence (datasheet "Initialization Command Words"):
//! ICW1 0x11 (edge triggered, cascade, ICW4 follows), ICW2 the vector base, ICW3 the cascade
//! wiring (slave on master's IRQ 2), ICW4 0x01 (8086 mode). OCW1 (a write to the data port) then
//! sets the mask; OCW3 0x0B makes the next command-port read return the in-service register.

use x86_64::instructions::port::Port;

const MASTER_COMMAND: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_COMMAND: u16 = 0xa0;
const SLAVE_DATA: u16 = 0xa1;

const ICW1_INIT_WITH_ICW4: u8 = 0x11;
const ICW3_MASTER_HAS_SLAVE_ON_IRQ2: u8 = 1 << 2;
const ICW3_SLAVE_CASCADE_IDENTITY: u8 = 2;
const ICW4_8086_MODE: u8 = 0x01;
const OCW2_NON_SPECIFIC_EOI: u8 = 0x20;
const OCW3_READ_ISR: u8 = 0x0b;

/// First vector of the remapped master PIC; the slave follows at +8.
pub const VECTOR_BASE: u8 = 0x20;
/// Vectors the two PICs can raise after [`remap_and_mask`].
pub const VECTORS: core::ops::Range<u8> = VECTOR_BASE..VECTOR_BASE + 16;

fn outb(port: u16, value: u8) {
    // SAFETY: only called with the 8259 command/data ports or the POST port 0x80, which this
    // module owns; the values follow the 8259A programming sequence.
    unsafe { Port::<u8>::new(port).write(value) }
}

fn inb(port: u16) -> u8 {
    // SAFETY: reading an 8259 data or command port has no side effects beyond returning the
    // register OCW3 selected.
    unsafe { Port::<u8>::new(port).read() }
}

/// A short delay between ICWs for old PICs that need it: a write to the unused POST port.
fn io_wait() {
    outb(0x80, 0);
}

/// Re-initialises both PICs to vectors 0x20-0x2F and masks all sixteen inputs.
pub fn remap_and_mask() {
    outb(MASTER_COMMAND, ICW1_INIT_WITH_ICW4);
    io_wait();
    outb(SLAVE_COMMAND, ICW1_INIT_WITH_ICW4);
    io_wait();
    outb(MASTER_DATA, VECTOR_BASE);
    io_wait();
    outb(SLAVE_DATA, VECTOR_BASE + 8);
    io_wait();
    outb(MASTER_DATA, ICW3_MASTER_HAS_SLAVE_ON_IRQ2);
    io_wait();
    outb(SLAVE_DATA, ICW3_SLAVE_CASCADE_IDENTITY);
    io_wait();
    outb(MASTER_DATA, ICW4_8086_MODE);
    io_wait();
    outb(SLAVE_DATA, ICW4_8086_MODE);
    io_wait();
    outb(MASTER_DATA, 0xff);
    outb(SLAVE_DATA, 0xff);
}

/// The two interrupt mask registers (master in the low byte); 0xFFFF when all are masked.
#[cfg(feature = "selftest")]
pub fn masks() -> u16 {
    u16::from(inb(MASTER_DATA)) | u16::from(inb(SLAVE_DATA)) << 8
}

fn in_service(command_port: u16) -> u8 {
    outb(command_port, OCW3_READ_ISR);
    inb(command_port)
}

/// Handles an interrupt that arrived on one of the PIC's vectors despite the masks. Returns
/// `true` if it was a real (in-service) interrupt, which then gets its EOI; a spurious IRQ 7 or
/// 15 (the PIC saw a glitch and reported its lowest-priority input, datasheet "Interrupt
/// Sequence") has no in-service bit and must not be acknowledged, except that a spurious IRQ 15
/// still needs an EOI to the master, which did see a real cascade request.
pub fn acknowledge_stray(vector: u8) -> bool {
    let irq = vector.wrapping_sub(VECTOR_BASE);
    if irq >= 16 {
        return false;
    }
    let on_slave = irq >= 8;
    let bit = 1u8 << (irq % 8);
    let command_port = if on_slave {
        SLAVE_COMMAND
    } else {
        MASTER_COMMAND
    };
    let real = in_service(command_port) & bit != 0;
    if on_slave {
        if real {
            outb(SLAVE_COMMAND, OCW2_NON_SPECIFIC_EOI);
        }
        outb(MASTER_COMMAND, OCW2_NON_SPECIFIC_EOI);
    } else if real {
        outb(MASTER_COMMAND, OCW2_NON_SPECIFIC_EOI);
    }
    real
}
