//! The COM1 serial port (a 16550 UART at I/O port 0x3f8), the kernel's console.
//!
//! Everything the kernel prints goes here: log lines, self-test results, panic
//! and exception reports. QEMU connects it to `-serial stdio` (or wherever
//! `-serial` points); every machine type the kernel supports (`pc`, `q35`,
//! `microvm`) has it.
//!
//! Register layout and programming follow the National Semiconductor PC16550D
//! datasheet: line control (LCR) with the divisor-latch access bit (DLAB) to
//! set the baud-rate divisor, then 8 data bits, no parity, one stop bit (8N1).
//!
//! Printing takes a spin lock with interrupts disabled, so an interrupt handler
//! that logs cannot deadlock against the code it interrupted; the lock is held
//! for a whole `print!`/log line, so lines from several CPUs never interleave
//! (one waits for the other's line). Panic and
//! exception reports use [`emergency_writer`], which skips the lock: by then
//! the lock may be held by the code that failed.

use core::fmt::{self, Write};
use spin::Mutex;
use x86_64::instructions::port::Port;

/// I/O base of COM1.
const COM1_BASE: u16 = 0x3f8;
/// The UART's input clock divided by 16; divisor = this / baud rate.
const UART_BASE_RATE: u32 = 115_200;
/// The baud rate the kernel uses (QEMU ignores it, real hardware does not).
const BAUD_RATE: u32 = 115_200;

// Register offsets from the base port.
const THR: u16 = 0; // transmit holding register (write, DLAB = 0)
const DLL: u16 = 0; // divisor latch low byte (DLAB = 1)
const IER: u16 = 1; // interrupt enable (DLAB = 0)
const DLM: u16 = 1; // divisor latch high byte (DLAB = 1)
const FCR: u16 = 2; // FIFO control (write)
const LCR: u16 = 3; // line control
const MCR: u16 = 4; // modem control
const LSR: u16 = 5; // line status

const LCR_DLAB: u8 = 0x80;
const LCR_8N1: u8 = 0x03;
/// Enable the FIFOs and clear both of them.
const FCR_ENABLE_AND_CLEAR: u8 = 0x07;
/// DTR and RTS asserted; OUT2 (which gates the UART's IRQ line) off: we poll.
const MCR_DTR_RTS: u8 = 0x03;
/// LSR bit 5: the transmit holding register is empty and can take a byte.
const LSR_THR_EMPTY: u8 = 0x20;
/// How often to poll LSR before sending anyway. A UART that never drains (or
/// is absent: reads then return 0xff, which has the bit set) must not hang us.
const TRANSMIT_POLL_LIMIT: u32 = 100_000;

/// A 16550 UART at a fixed I/O base.
pub struct SerialPort {
    base: u16,
}

impl SerialPort {
    /// A handle to the UART at `base`. Does not touch the hardware.
    pub const fn new(base: u16) -> Self {
        Self { base }
    }

    fn write_register(&self, offset: u16, value: u8) {
        let mut port = Port::<u8>::new(self.base + offset);
        // SAFETY: the port belongs to the COM1 UART, which only this module
        // programs; writing its registers has no effect on memory.
        unsafe { port.write(value) }
    }

    fn read_register(&self, offset: u16) -> u8 {
        let mut port = Port::<u8>::new(self.base + offset);
        // SAFETY: as in `write_register`; reading LSR has no side effects.
        unsafe { port.read() }
    }

    /// Programs 115200 baud, 8N1, FIFOs on, interrupts off.
    pub fn init(&self) {
        let divisor = (UART_BASE_RATE / BAUD_RATE) as u16;
        self.write_register(IER, 0x00);
        self.write_register(LCR, LCR_DLAB);
        self.write_register(DLL, divisor as u8);
        self.write_register(DLM, (divisor >> 8) as u8);
        self.write_register(LCR, LCR_8N1);
        self.write_register(FCR, FCR_ENABLE_AND_CLEAR);
        self.write_register(MCR, MCR_DTR_RTS);
    }

    /// Sends one byte, waiting (boundedly) for room in the transmitter.
    pub fn send(&self, byte: u8) {
        for _ in 0..TRANSMIT_POLL_LIMIT {
            if self.read_register(LSR) & LSR_THR_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        self.write_register(THR, byte);
    }
}

impl Write for SerialPort {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            self.send(byte);
        }
        Ok(())
    }
}

static COM1: Mutex<SerialPort> = Mutex::new(SerialPort::new(COM1_BASE));

/// Initialises COM1. Call once, first thing at boot.
pub fn init() {
    COM1.lock().init();
}

/// Writes formatted text to COM1 under the lock, with interrupts disabled.
pub fn write_fmt(args: fmt::Arguments<'_>) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        // Writing to the UART cannot fail; `fmt::Error` can only come from a
        // `Display` impl, and there is nobody to report it to.
        let _ = COM1.lock().write_fmt(args);
    });
}

/// Runs `f` holding the serial lock, with interrupts disabled (the self-test
/// build's `smp.test_slow`: a CPU that holds a lock when it would be reset).
#[cfg(feature = "selftest")]
pub fn while_locked(f: impl FnOnce()) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _held = COM1.lock();
        f();
    });
}

/// A writer that bypasses the lock, for panic and exception reports only:
/// the failing code may hold the lock, and waiting for it would hang forever.
/// Output may interleave with a half-written line; that is the price.
pub fn emergency_writer() -> SerialPort {
    SerialPort::new(COM1_BASE)
}

/// `print!` to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::serial::write_fmt(format_args!($($arg)*)));
}

/// `println!` to the serial console.
#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::serial::write_fmt(format_args!("{}\n", format_args!($($arg)*))));
}
