//! # Finding virtio-mmio devices (virtio 1.2 §4.2; Linux `virtio_mmio.device=`)
//!
//! virtio-mmio has no bus to enumerate, so the kernel must be told where the
//! devices are. Two ways are supported:
//!
//! 1. **The command line**, in the format Linux's `virtio_mmio` driver
//!    defines and QEMU's `microvm` (with `acpi=off`) appends:
//!    `virtio_mmio.device=<size>@<base>:<irq>[:<id>]`, for example
//!    `virtio_mmio.device=512@0xfeb00e00:12`. `<size>` may end in `K`, `M` or
//!    `G` (also `T`, case-insensitive, as Linux's `memparse`); `<size>` and
//!    `<base>` take C-style prefixes (`0x` hex, leading `0` octal), `<irq>`
//!    and `<id>` are decimal. [`parse_cmdline`] yields every entry, a
//!    malformed one as an error that names it, never a panic.
//! 2. **Probing a window** of equally spaced slots ([`probe_window`]):
//!    `microvm` has them from 0xfeb00000, 512 bytes apart. A slot whose magic
//!    is not "virt" has no transport; a slot with device id 0 is an empty
//!    transport; both are skipped.

use alloc::vec::Vec;
use core::fmt;

use hal::Hal;

use crate::transport::mmio::{MmioError, MmioTransport};

/// The command-line key, including the `=`.
pub const CMDLINE_KEY: &str = "virtio_mmio.device=";
/// Where QEMU's `microvm` puts its virtio-mmio slots.
pub const MICROVM_WINDOW_BASE: u64 = 0xfeb0_0000;
/// The size of one `microvm` slot.
pub const MICROVM_SLOT_SIZE: u64 = 512;

/// One `virtio_mmio.device=` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceSpec {
    /// Size of the register window in bytes.
    pub size: u64,
    /// Physical base address.
    pub base: u64,
    /// Interrupt (GSI) number.
    pub irq: u32,
    /// Optional platform device id.
    pub id: Option<u32>,
}

/// What is wrong with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// No number where the size should be.
    InvalidSize,
    /// An unknown size suffix.
    InvalidSuffix(char),
    /// Size 0.
    ZeroSize,
    /// No `@` after the size.
    MissingAt,
    /// No number where the base address should be.
    InvalidBase,
    /// No `:` after the base.
    MissingIrq,
    /// No decimal number where the IRQ should be.
    InvalidIrq,
    /// Something after `:` that is not a decimal id.
    InvalidId,
    /// Characters left over after the entry.
    TrailingCharacters,
    /// A number too large, or base + size beyond 2^64.
    Overflow,
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseErrorKind::InvalidSize => f.write_str("size is not a number"),
            ParseErrorKind::InvalidSuffix(c) => write!(f, "unknown size suffix '{c}'"),
            ParseErrorKind::ZeroSize => f.write_str("size is 0"),
            ParseErrorKind::MissingAt => f.write_str("expected '@' after the size"),
            ParseErrorKind::InvalidBase => f.write_str("base address is not a number"),
            ParseErrorKind::MissingIrq => f.write_str("expected ':<irq>' after the base"),
            ParseErrorKind::InvalidIrq => f.write_str("irq is not a decimal number"),
            ParseErrorKind::InvalidId => f.write_str("id is not a decimal number"),
            ParseErrorKind::TrailingCharacters => f.write_str("unexpected characters at the end"),
            ParseErrorKind::Overflow => f.write_str("number out of range"),
        }
    }
}

/// A malformed entry: its text (after the `=`) and what is wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioParseError<'a> {
    /// The entry's value as written.
    pub entry: &'a str,
    /// The problem.
    pub kind: ParseErrorKind,
}

impl fmt::Display for MmioParseError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CMDLINE_KEY}{}: {}", self.entry, self.kind)
    }
}

/// Every `virtio_mmio.device=` entry of `cmdline`, in order.
pub fn parse_cmdline(
    cmdline: &str,
) -> impl Iterator<Item = Result<MmioDeviceSpec, MmioParseError<'_>>> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.strip_prefix(CMDLINE_KEY))
        .map(|entry| parse_device(entry).map_err(|kind| MmioParseError { entry, kind }))
}

/// Parses one entry value, `<size>@<base>:<irq>[:<id>]`.
pub fn parse_device(value: &str) -> Result<MmioDeviceSpec, ParseErrorKind> {
    let (size, rest) = parse_number(value).ok_or(ParseErrorKind::InvalidSize)??;
    let (multiplier, rest) = match rest.chars().next() {
        Some(c @ ('k' | 'K')) => (1u64 << 10, &rest[c.len_utf8()..]),
        Some(c @ ('m' | 'M')) => (1 << 20, &rest[c.len_utf8()..]),
        Some(c @ ('g' | 'G')) => (1 << 30, &rest[c.len_utf8()..]),
        Some(c @ ('t' | 'T')) => (1 << 40, &rest[c.len_utf8()..]),
        Some('@') | None => (1, rest),
        Some(other) => return Err(ParseErrorKind::InvalidSuffix(other)),
    };
    let size = size
        .checked_mul(multiplier)
        .ok_or(ParseErrorKind::Overflow)?;
    if size == 0 {
        return Err(ParseErrorKind::ZeroSize);
    }
    let rest = rest.strip_prefix('@').ok_or(ParseErrorKind::MissingAt)?;
    let (base, rest) = parse_number(rest).ok_or(ParseErrorKind::InvalidBase)??;
    base.checked_add(size).ok_or(ParseErrorKind::Overflow)?;
    let rest = rest.strip_prefix(':').ok_or(ParseErrorKind::MissingIrq)?;
    let (irq, rest) = parse_decimal(rest).ok_or(ParseErrorKind::InvalidIrq)??;
    let irq = u32::try_from(irq).map_err(|_| ParseErrorKind::Overflow)?;
    let (id, rest) = match rest.strip_prefix(':') {
        Some(after) => {
            let (id, rest) = parse_decimal(after).ok_or(ParseErrorKind::InvalidId)??;
            (
                Some(u32::try_from(id).map_err(|_| ParseErrorKind::Overflow)?),
                rest,
            )
        }
        None => (None, rest),
    };
    if !rest.is_empty() {
        return Err(ParseErrorKind::TrailingCharacters);
    }
    Ok(MmioDeviceSpec {
        size,
        base,
        irq,
        id,
    })
}

/// A number with C prefixes (`0x` hex, leading `0` octal, else decimal), and
/// the rest of the text. `None`: no digits at all; `Some(Err)`: overflow.
fn parse_number(text: &str) -> Option<Result<(u64, &str), ParseErrorKind>> {
    let (radix, digits) =
        if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            (16, hex)
        } else if text.len() > 1
            && text.starts_with('0')
            && text[1..].starts_with(|c: char| c.is_digit(8))
        {
            (8, &text[1..])
        } else {
            (10, text)
        };
    parse_digits(digits, radix)
}

fn parse_decimal(text: &str) -> Option<Result<(u64, &str), ParseErrorKind>> {
    parse_digits(text, 10)
}

fn parse_digits(text: &str, radix: u32) -> Option<Result<(u64, &str), ParseErrorKind>> {
    let end = text
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(text.len());
    if end == 0 {
        return None;
    }
    Some(
        u64::from_str_radix(&text[..end], radix)
            .map(|value| (value, &text[end..]))
            .map_err(|_| ParseErrorKind::Overflow),
    )
}

/// The outcome of probing one slot that is not empty.
pub struct ProbedSlot<H: Hal> {
    /// Slot number in the window (0 = lowest address).
    pub index: u32,
    /// Physical base of the slot.
    pub base: u64,
    /// The transport, or why the slot holds none that can be used.
    pub result: Result<MmioTransport<H>, MmioError>,
}

/// Probes `count` slots of `stride` bytes from `base`. Slots without the
/// "virt" magic and slots with device id 0 are left out; every other slot is
/// returned, with a transport or the reason there is none (an unsupported
/// version, a failed mapping).
pub fn probe_window<H: Hal>(base: u64, stride: u64, count: u32) -> Vec<ProbedSlot<H>> {
    let mut found = Vec::new();
    for index in 0..count {
        let Some(slot_base) = u64::from(index)
            .checked_mul(stride)
            .and_then(|offset| base.checked_add(offset))
        else {
            break;
        };
        let result = MmioTransport::<H>::new(slot_base, stride as usize);
        match result {
            Err(MmioError::EmptySlot) => {
                log::trace!("virtio-mmio@{slot_base:#x}: empty slot");
            }
            Err(MmioError::BadMagic(magic)) => {
                log::trace!("virtio-mmio@{slot_base:#x}: no transport (magic {magic:#x})");
            }
            result => found.push(ProbedSlot {
                index,
                base: slot_base,
                result,
            }),
        }
    }
    found
}
