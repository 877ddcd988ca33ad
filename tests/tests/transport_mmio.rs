//! virtio-mmio discovery: the `virtio_mmio.device=` command-line parser and
//! probing a window of slots.

use drivers::mmio_discovery::{
    parse_cmdline, parse_device, probe_window, MmioDeviceSpec, ParseErrorKind, MICROVM_SLOT_SIZE,
    MICROVM_WINDOW_BASE,
};
use drivers::transport::mmio::{MmioError, MmioTransport};
use drivers::transport::{DeviceType, Location, Transport, TransportKind};
use tests::host_hal::HostHal;
use tests::models::trace_logging;
use tests::models::virtio::{MmioWindow, VirtioCore};

/// Slot index, base, and what was found there.
type SlotSummary = (u32, u64, Result<(TransportKind, DeviceType), MmioError>);

fn spec(size: u64, base: u64, irq: u32, id: Option<u32>) -> MmioDeviceSpec {
    MmioDeviceSpec {
        size,
        base,
        irq,
        id,
    }
}

#[test]
fn parses_the_form_qemu_appends() {
    let cmdline = "console=ttyS0 mode=selftest virtio_mmio.device=512@0xfeb00e00:12";
    let entries: Vec<_> = parse_cmdline(cmdline).collect();
    assert_eq!(entries, vec![Ok(spec(512, 0xfeb0_0e00, 12, None))]);
}

#[test]
fn parses_suffixes_ids_and_several_entries() {
    let cmdline = "virtio_mmio.device=4K@0xd0000000:5 log=trace \
                   virtio_mmio.device=1M@0x100000000:33:7 virtio_mmio.device=2g@0x4000:9 \
                   virtio_mmio.device=0x200@4096:10 virtio_mmio.device=010@0:1";
    let entries: Vec<_> = parse_cmdline(cmdline).map(Result::unwrap).collect();
    assert_eq!(
        entries,
        vec![
            spec(4096, 0xd000_0000, 5, None),
            spec(1 << 20, 0x1_0000_0000, 33, Some(7)),
            spec(2 << 30, 0x4000, 9, None),
            spec(0x200, 4096, 10, None),
            // A leading 0 is octal, as in Linux's memparse.
            spec(8, 0, 1, None),
        ]
    );
}

#[test]
fn malformed_entries_are_errors_with_their_text() {
    let cases: &[(&str, ParseErrorKind)] = &[
        ("", ParseErrorKind::InvalidSize),
        ("@0x1000:5", ParseErrorKind::InvalidSize),
        ("512", ParseErrorKind::MissingAt),
        ("512#0x1000:5", ParseErrorKind::InvalidSuffix('#')),
        ("512Q@0x1000:5", ParseErrorKind::InvalidSuffix('Q')),
        ("0@0x1000:5", ParseErrorKind::ZeroSize),
        ("512@:5", ParseErrorKind::InvalidBase),
        ("512@0xzz:5", ParseErrorKind::InvalidBase),
        ("512@0x1000", ParseErrorKind::MissingIrq),
        ("512@0x1000:", ParseErrorKind::InvalidIrq),
        ("512@0x1000:x", ParseErrorKind::InvalidIrq),
        ("512@0x1000:5:", ParseErrorKind::InvalidId),
        ("512@0x1000:5junk", ParseErrorKind::TrailingCharacters),
        ("512@0x1000:5:3:4", ParseErrorKind::TrailingCharacters),
        ("99999999999999999999@0:1", ParseErrorKind::Overflow),
        ("16G@0xffffffffffffffff:1", ParseErrorKind::Overflow),
        ("512@0x1000:4294967296", ParseErrorKind::Overflow),
        ("17179869184G@0:1", ParseErrorKind::Overflow),
    ];
    for (text, kind) in cases {
        assert_eq!(parse_device(text), Err(*kind), "{text:?}");
        let line = format!("quiet virtio_mmio.device={text} virtio_mmio.device=512@0x1000:5");
        let entries: Vec<_> = parse_cmdline(&line).collect();
        assert_eq!(entries.len(), 2, "{text:?}");
        let err = entries[0].unwrap_err();
        assert_eq!((err.entry, err.kind), (*text, *kind));
        assert!(err.to_string().starts_with("virtio_mmio.device="));
        assert_eq!(
            entries[1],
            Ok(spec(512, 0x1000, 5, None)),
            "a bad entry does not spoil the next"
        );
    }
    // Keys that merely look alike are not entries.
    assert_eq!(
        parse_cmdline("xvirtio_mmio.device=512@0x1000:5 virtio_mmio.devices=1").count(),
        0
    );
}

#[test]
fn probing_a_window_skips_empty_slots_and_non_devices() {
    trace_logging();
    HostHal::clear_devices();
    let slot = |i: u64| MICROVM_WINDOW_BASE + i * MICROVM_SLOT_SIZE;
    // Slot 7: blk v1; slot 6: net v2; slots 1-5: empty transports; slot 0: nothing ("magic" wrong);
    // slot 2 instead: a version-3 transport.
    let blk = VirtioCore::new(2, 0, 1, 1024, vec![0; 64]).shared();
    let net = VirtioCore::new(1, 0, 2, 1024, vec![0; 16]).shared();
    HostHal::map_mmio(slot(7), MICROVM_SLOT_SIZE, MmioWindow::new(blk.clone(), 1));
    HostHal::map_mmio(slot(6), MICROVM_SLOT_SIZE, MmioWindow::new(net.clone(), 2));
    for i in [1, 3, 4, 5] {
        let empty = VirtioCore::new(0, 0, 0, 0, vec![]).shared();
        HostHal::map_mmio(slot(i), MICROVM_SLOT_SIZE, MmioWindow::new(empty, 2));
    }
    let odd = VirtioCore::new(4, 0, 1, 8, vec![]).shared();
    let window = MmioWindow::new(odd, 3);
    HostHal::map_mmio(slot(2), MICROVM_SLOT_SIZE, window);
    let nothing = VirtioCore::new(2, 0, 1, 8, vec![]).shared();
    let not_virtio = MmioWindow::new(nothing, 2);
    not_virtio.borrow_mut().magic = 0xffff_ffff;
    HostHal::map_mmio(slot(0), MICROVM_SLOT_SIZE, not_virtio);

    let found = probe_window::<HostHal>(MICROVM_WINDOW_BASE, MICROVM_SLOT_SIZE, 8);
    let summary: Vec<SlotSummary> = found
        .into_iter()
        .map(|s| {
            (
                s.index,
                s.base,
                s.result.map(|t| (t.kind(), t.device_type())),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (2, slot(2), Err(MmioError::UnsupportedVersion(3))),
            (6, slot(6), Ok((TransportKind::MmioV2, DeviceType::Net))),
            (7, slot(7), Ok((TransportKind::MmioV1, DeviceType::Block))),
        ]
    );
}

#[test]
fn a_transport_checks_what_is_in_its_window() {
    trace_logging();
    HostHal::clear_devices();
    let core = VirtioCore::new(3, 0, 2, 64, vec![0; 12]).shared();
    HostHal::map_mmio(0xfeb0_0000, 0x200, MmioWindow::new(core.clone(), 2));
    let t = MmioTransport::<HostHal>::new(0xfeb0_0000, 0x200).unwrap();
    assert_eq!(t.location(), Location::Mmio { base: 0xfeb0_0000 });
    assert_eq!(t.location().to_string(), "mmio@0xfeb00000");
    assert_eq!(t.config_space_size(), 0x100);
    assert_eq!(t.vendor_id(), 0x554d_4551);
    assert!(matches!(
        MmioTransport::<HostHal>::new(0xfeb0_0000, 0x80),
        Err(MmioError::TooSmall { size: 0x80 })
    ));
    // Nothing mapped there: the Hal refuses.
    assert!(matches!(
        MmioTransport::<HostHal>::new(0x1000, 0x200),
        Err(MmioError::Map(_))
    ));
    let empty = VirtioCore::new(0, 0, 0, 0, vec![]).shared();
    HostHal::map_mmio(0xfeb0_0200, 0x200, MmioWindow::new(empty, 1));
    assert!(matches!(
        MmioTransport::<HostHal>::new(0xfeb0_0200, 0x200),
        Err(MmioError::EmptySlot)
    ));
}
