//! The driver side of interrupts (`drivers::irq`, `drivers::pci::msix`):
//! MSI-X capability and table programming against the PCI and MSI-X models,
//! the order in which entry numbers reach the device during bring-up, the
//! interrupt-acknowledge paths of every transport (ISR read-to-clear,
//! InterruptStatus + InterruptACK), the handlers' bookkeeping, and the
//! race-free wait with a simulated CPU and the rust-vmm device model.

use std::cell::RefCell;
use std::rc::Rc;

use drivers::device::{self, DeviceError, Wait, WaitTimeout};
use drivers::features;
use drivers::irq::{
    intx_line, set_intx_disabled, wait_until_used, DeviceInterrupts, EntryUse, Idle,
    InterruptStatusRegister, InterruptWait, IntxLine, MsixEvent, MsixLayout, MsixRouted, QueueSet,
    WaitMode,
};
use drivers::pci::msix::{MsixCapability, MsixError, CONTROL_ENABLE, CONTROL_FUNCTION_MASK};
use drivers::pci::{self, ConfigAccess, PciFunction, PortIoConfig};
use drivers::queue::{QueueConfig, Ring, RingLayout, Segment, SplitQueue};
use drivers::transport::mmio::MmioTransport;
use drivers::transport::pci::{probe_with, TransportPreference};
use drivers::transport::{
    AnyTransport, InterruptStatus, Transport, TransportError, TransportKind, NO_VECTOR,
};
use tests::host_hal::{HostHal, SharedDevice, TEST_OWNER};
use tests::models::msix::{MsixTableModel, SharedMsixTable, PBA_OFFSET};
use tests::models::pci::{
    attach, virtio_legacy, virtio_modern, virtio_transitional, Attach, BarSpec, FunctionModel,
    PciPlatform, PlatformLayout, SharedPlatform,
};
use tests::models::virtio::{MmioWindow, ModernLayout, SharedCore, VirtioCore};
use tests::models::{test_windows, trace_logging, Access, Dir, Region};
use tests::vq_model::VqModel;

// ---------------------------------------------------------------- set-up

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preset {
    Modern,
    Transitional,
    Legacy,
}

/// A virtio PCI function on a fresh platform, with an MSI-X table model in
/// BAR 1 (modern and transitional presets have a 2-entry MSI-X capability).
struct PciRig {
    core: SharedCore,
    table: SharedMsixTable,
    platform: SharedPlatform,
    access: PortIoConfig<HostHal>,
    function: PciFunction,
}

fn pci_rig(preset: Preset, queues: u16, features: u64) -> PciRig {
    trace_logging();
    HostHal::clear_devices();
    let core = VirtioCore::new(2, features, queues, 256, vec![0; 64]).shared();
    let table = MsixTableModel::new(2);
    let mut model = match preset {
        Preset::Modern => virtio_modern(&core, ModernLayout::default()),
        Preset::Transitional => virtio_transitional(0x1001, &core, ModernLayout::default()),
        Preset::Legacy => virtio_legacy(0x1001, &core),
    };
    if preset != Preset::Legacy {
        let handler: SharedDevice = table.clone();
        model.handlers[1] = Some(handler);
    }
    let platform = PciPlatform::new();
    platform.borrow_mut().add(Attach::Root, 3, 0, model);
    attach(&platform, &PlatformLayout::default());
    let access = tests::host_hal::port_io_config();
    let functions = pci::enumerate(&access, &test_windows()).expect("enumerates");
    let function = functions[0].clone();
    PciRig {
        core,
        table,
        platform,
        access,
        function,
    }
}

impl PciRig {
    fn transport(&self, preference: TransportPreference) -> AnyTransport<HostHal> {
        probe_with::<HostHal, _>(&self.access, &self.function, preference).expect("probes")
    }

    fn config16(&self, offset: u16) -> u16 {
        self.access
            .read16(self.function.address, offset)
            .expect("config read")
    }
}

fn mmio_transport(core: &SharedCore, version: u32) -> MmioTransport<HostHal> {
    trace_logging();
    HostHal::clear_devices();
    HostHal::map_mmio(0xfeb0_0e00, 0x200, MmioWindow::new(core.clone(), version));
    MmioTransport::<HostHal>::new(0xfeb0_0e00, 0x200).expect("mmio transport")
}

// ---------------------------------------------------------------- MSI-X capability and table

#[test]
fn msix_capability_is_parsed_as_qemu_lays_it_out() {
    let rig = pci_rig(Preset::Modern, 1, features::VERSION_1);
    let cap = MsixCapability::find(&rig.access, &rig.function)
        .unwrap()
        .expect("the preset has MSI-X");
    assert_eq!(cap.table_size, 2);
    assert_eq!((cap.table_bar, cap.table_offset), (1, 0));
    assert_eq!((cap.pba_bar, cap.pba_offset), (1, PBA_OFFSET as u32));
    assert!(!cap.is_enabled(&rig.access).unwrap());

    // A legacy-only device has no MSI-X capability at all (like vectors=0).
    let legacy = pci_rig(Preset::Legacy, 1, 0);
    assert_eq!(
        MsixCapability::find(&legacy.access, &legacy.function).unwrap(),
        None
    );
}

#[test]
fn msix_enable_sequence_masks_the_function_until_the_entries_are_ready() {
    let rig = pci_rig(Preset::Modern, 1, features::VERSION_1);
    let cap = MsixCapability::find(&rig.access, &rig.function)
        .unwrap()
        .unwrap();
    let control_at = u16::from(cap.offset) + 2;
    let size_bits = rig.config16(control_at) & 0x7ff;

    cap.enable_masked(&rig.access).unwrap();
    assert_eq!(
        rig.config16(control_at),
        CONTROL_ENABLE | CONTROL_FUNCTION_MASK | size_bits
    );

    let table = cap.map_table::<HostHal>(&rig.function).unwrap();
    assert_eq!(table.size(), 2);
    table.program(1, 0xfee0_1000, 0x41).unwrap();
    // Programming leaves the entry masked; only `unmask` lets it send.
    assert!(rig.table.borrow().masked(1));
    assert_eq!(rig.table.borrow().address(1), 0xfee0_1000);
    assert_eq!(rig.table.borrow().data(1), 0x41);
    table.unmask(1).unwrap();
    assert!(!rig.table.borrow().masked(1));
    assert!(rig.table.borrow().masked(0), "entry 0 was never touched");
    let read_back = table.entry(1).unwrap();
    assert_eq!(
        (read_back.address, read_back.data, read_back.masked),
        (0xfee0_1000, 0x41, false)
    );

    cap.unmask_function(&rig.access).unwrap();
    assert_eq!(rig.config16(control_at), CONTROL_ENABLE | size_bits);
    cap.disable(&rig.access).unwrap();
    assert_eq!(rig.config16(control_at), size_bits);

    assert_eq!(
        table.program(2, 0, 0),
        Err(MsixError::EntryOutOfRange { entry: 2, size: 2 })
    );
    // Pending bits come from the PBA.
    rig.table.borrow_mut().pending = 0b10;
    assert!(table.is_pending(1).unwrap());
    assert!(!table.is_pending(0).unwrap());
    assert!(
        rig.table.borrow().violations.is_empty(),
        "{:?}",
        rig.table.borrow().violations
    );
    // Every table write was a dword: address low, high, data, then the
    // unmask (the entry was masked from reset, so no mask write was needed;
    // the vector control word is read-modify-written to keep its reserved bits).
    let writes: Vec<u64> = rig
        .table
        .borrow()
        .log
        .iter()
        .filter(|(dir, _, _)| *dir == Dir::W)
        .map(|(_, offset, _)| *offset)
        .collect();
    assert_eq!(writes, vec![0x10, 0x14, 0x18, 0x1c]);
}

/// A function whose MSI-X capability says `body` (control, table, PBA).
fn hostile_msix(bars: &[(usize, BarSpec)], control: u16, table: u32, pba: u32) -> PciRig {
    trace_logging();
    HostHal::clear_devices();
    let core = VirtioCore::new(2, 0, 1, 256, vec![0; 16]).shared();
    let mut f = FunctionModel::endpoint("hostile", 0x1af4, 0x1042, 0x01_00_00, 1);
    for &(index, spec) in bars {
        f = f.with_bar(index, spec, None);
    }
    let mut body = control.to_le_bytes().to_vec();
    body.extend_from_slice(&table.to_le_bytes());
    body.extend_from_slice(&pba.to_le_bytes());
    f.add_capability(0x11, &body);
    let platform = PciPlatform::new();
    platform.borrow_mut().add(Attach::Root, 3, 0, f);
    attach(&platform, &PlatformLayout::default());
    let access = tests::host_hal::port_io_config();
    let function = pci::enumerate(&access, &test_windows()).unwrap()[0].clone();
    PciRig {
        core,
        table: MsixTableModel::new(1),
        platform,
        access,
        function,
    }
}

#[test]
fn msix_tables_outside_their_bar_are_refused() {
    let mem = BarSpec::Mem32 {
        size: 0x1000,
        prefetchable: false,
    };
    let map = |rig: &PciRig| {
        let cap = MsixCapability::find(&rig.access, &rig.function)
            .unwrap()
            .unwrap();
        cap.map_table::<HostHal>(&rig.function).map(|_| ())
    };
    // 300 entries are 4800 bytes: more than the 4 KiB BAR.
    let rig = hostile_msix(&[(1, mem)], 299, 1, 1);
    assert!(matches!(
        map(&rig),
        Err(MsixError::OutsideBar {
            what: "table",
            bar: 1,
            ..
        })
    ));
    // The table in an I/O BAR.
    let rig = hostile_msix(&[(0, BarSpec::Io(0x40))], 1, 0, 0x20);
    assert_eq!(
        map(&rig),
        Err(MsixError::BarNotMemory {
            what: "table",
            bar: 0
        })
    );
    // In a BAR that does not exist.
    let rig = hostile_msix(&[(1, mem)], 1, 2, 0x801);
    assert_eq!(
        map(&rig),
        Err(MsixError::BarMissing {
            what: "table",
            bar: 2
        })
    );
    // A reserved BAR indicator.
    let rig = hostile_msix(&[(1, mem)], 1, 7, 0x801);
    assert_eq!(
        map(&rig),
        Err(MsixError::InvalidBir {
            what: "table",
            bir: 7
        })
    );
    // The PBA past the end of the BAR.
    let rig = hostile_msix(&[(1, mem)], 1, 1, 0x1001);
    assert!(matches!(
        map(&rig),
        Err(MsixError::OutsideBar { what: "PBA", .. })
    ));
    let _ = (&rig.core, &rig.platform);
}

// ---------------------------------------------------------------- entry layout

#[test]
fn msix_layout_gives_config_and_queues_their_own_entries_then_shares() {
    // Enough entries: config 0, queue q on 1 + q.
    let roomy = MsixLayout::new(4);
    assert_eq!(roomy.config_entry(), 0);
    assert_eq!(
        (0..3).map(|q| roomy.queue_entry(q)).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(roomy.queue_has_own_entry(2, QueueSet::first(3)));

    // QEMU's virtio-serial: 2 entries, many queues: all queues share entry 1.
    let serial = MsixLayout::new(2);
    assert!((0..64).all(|q| serial.queue_entry(q) == 1));
    assert!(!serial.queue_has_own_entry(0, QueueSet::first(2)));
    assert!(serial.queue_has_own_entry(0, QueueSet::first(1)));

    // 3 entries, 5 queues: round robin over entries 1 and 2.
    let small = MsixLayout::new(3);
    assert_eq!(
        (0..5).map(|q| small.queue_entry(q)).collect::<Vec<_>>(),
        vec![1, 2, 1, 2, 1]
    );
    let uses: Vec<EntryUse> = small.entries(QueueSet::first(5)).collect();
    assert_eq!(
        uses,
        vec![
            EntryUse {
                entry: 0,
                queues: QueueSet::EMPTY,
                config: true
            },
            EntryUse {
                entry: 1,
                queues: QueueSet::from_bits(0b10101),
                config: false
            },
            EntryUse {
                entry: 2,
                queues: QueueSet::from_bits(0b01010),
                config: false
            },
        ]
    );

    // One entry carries everything.
    let single = MsixLayout::new(1);
    assert_eq!(single.queue_entry(5), 0);
    let uses: Vec<EntryUse> = single.entries(QueueSet::first(2)).collect();
    assert_eq!(
        uses,
        vec![EntryUse {
            entry: 0,
            queues: QueueSet::first(2),
            config: true
        }]
    );
    // A table size of 0 cannot be encoded; treat it as 1 rather than divide by 0.
    assert_eq!(MsixLayout::new(0).table_size(), 1);
    // Unused entries are not listed.
    assert_eq!(roomy.entries(QueueSet::single(0)).count(), 2);
    assert_eq!(format!("{}", QueueSet::from_bits(0b1011)), "{0,1,3}");
}

// ---------------------------------------------------------------- entry numbers reach the device in order

/// Brings the device up with queues 0 and 1; returns how many queues came up.
fn bring_up_two_queues<T: Transport>(t: &mut T) -> Result<usize, DeviceError> {
    device::bring_up(t, 0, features::SHARED_RING_FEATURES, |t, negotiated| {
        let q0 = device::setup_queue::<HostHal, _>(t, 0, 16, negotiated)?;
        let q1 = device::setup_queue::<HostHal, _>(t, 1, 16, negotiated)?;
        Ok::<_, DeviceError>(vec![q0, q1])
    })
    .map(|(queues, _)| queues.len())
}

fn position(log: &[Access], wanted: impl Fn(&Access) -> bool) -> usize {
    log.iter()
        .position(wanted)
        .unwrap_or_else(|| panic!("access not found in {log:#?}"))
}

#[test]
fn modern_vectors_are_written_and_checked_before_queue_enable_and_driver_ok() {
    let rig = pci_rig(Preset::Modern, 2, features::VERSION_1);
    let mut t = MsixRouted::new(rig.transport(TransportPreference::PreferModern));
    t.set_layout(Some(MsixLayout::new(2)));
    rig.core.borrow_mut().log.clear();
    let _queues = bring_up_two_queues(&mut t).expect("bring-up");

    assert_eq!(t.rejection(), None);
    assert_eq!(t.routed_queues(), QueueSet::first(2));
    assert!(t.config_routed());
    {
        let core = rig.core.borrow();
        assert_eq!(core.config_msix_vector, 0);
        assert_eq!(core.queues[0].msix_vector, 1);
        assert_eq!(
            core.queues[1].msix_vector, 1,
            "2 entries: queues share entry 1"
        );
        assert!(core.violations.is_empty(), "{:?}", core.violations);
    }
    let log = rig.core.borrow().log_of(Region::Common);
    for queue in 0..2u64 {
        // The window onto a queue is chosen with queue_select (0x16); find
        // this queue's vector write and enable write after its selection.
        let select = position(&log, |a| {
            a.dir == Dir::W && a.offset == 0x16 && a.value == queue
        });
        let rest = &log[select..];
        let vector = position(rest, |a| a.dir == Dir::W && a.offset == 0x1a);
        let read_back = position(rest, |a| a.dir == Dir::R && a.offset == 0x1a);
        let enable = position(rest, |a| {
            a.dir == Dir::W && a.offset == 0x1c && a.value == 1
        });
        assert!(
            vector < read_back && read_back < enable,
            "queue {queue}: vector write {vector}, read-back {read_back}, enable {enable}"
        );
    }
    let config_vector = position(&log, |a| a.dir == Dir::W && a.offset == 0x10);
    let driver_ok = position(&log, |a| {
        a.dir == Dir::W && a.offset == 0x14 && a.value & 4 != 0
    });
    assert!(config_vector < driver_ok);
    assert_eq!(
        log[config_vector + 1],
        Access::r(Region::Common, 0x10, 2, 0)
    );
}

#[test]
fn a_refused_vector_is_recorded_and_the_device_still_comes_up() {
    let rig = pci_rig(Preset::Modern, 2, features::VERSION_1);
    rig.core.borrow_mut().accept_msix_vectors = false;
    let mut t = MsixRouted::new(rig.transport(TransportPreference::PreferModern));
    t.set_layout(Some(MsixLayout::new(2)));
    let queues = bring_up_two_queues(&mut t).expect("bring-up goes on without MSI-X");
    assert_eq!(queues, 2);
    assert_eq!(t.routed_queues(), QueueSet::EMPTY);
    assert!(!t.config_routed());
    assert_eq!(
        t.rejection().map(|r| (r.event, r.error)),
        Some((
            MsixEvent::Queue(0),
            TransportError::MsixVectorRejected {
                requested: 1,
                read_back: NO_VECTOR
            }
        ))
    );
    // A reset forgets it all (the device's vectors are NO_VECTOR again).
    t.reset().unwrap();
    assert_eq!(t.rejection(), None);
}

#[test]
fn without_a_layout_the_wrapper_writes_no_vector() {
    let rig = pci_rig(Preset::Modern, 2, features::VERSION_1);
    let mut t = MsixRouted::new(rig.transport(TransportPreference::PreferModern));
    rig.core.borrow_mut().log.clear();
    bring_up_two_queues(&mut t).expect("bring-up");
    let log = rig.core.borrow().log_of(Region::Common);
    assert!(
        !log.iter()
            .any(|a| a.dir == Dir::W && (a.offset == 0x10 || a.offset == 0x1a)),
        "no MSI-X register may be written without a layout"
    );
    assert_eq!(rig.core.borrow().config_msix_vector, NO_VECTOR);
}

#[test]
fn legacy_vectors_use_the_msix_registers_and_config_moves_to_24() {
    let rig = pci_rig(Preset::Transitional, 2, 0);
    let cap = MsixCapability::find(&rig.access, &rig.function)
        .unwrap()
        .unwrap();
    cap.enable_masked(&rig.access).unwrap();
    // QEMU moves the legacy configuration when the capability's enable bit
    // is set; the model is told separately.
    rig.core.borrow_mut().msix_enabled = true;
    rig.core.borrow_mut().config[0] = 0x5a;
    let mut t = MsixRouted::new(rig.transport(TransportPreference::ForceLegacy));
    assert_eq!(t.kind(), TransportKind::PciLegacy);
    t.set_msix_enabled(true);
    t.set_layout(Some(MsixLayout::new(cap.table_size)));
    rig.core.borrow_mut().log.clear();
    bring_up_two_queues(&mut t).expect("bring-up");
    assert_eq!(t.routed_queues(), QueueSet::first(2));
    assert!(t.config_routed());
    let core = rig.core.borrow();
    assert_eq!(core.config_msix_vector, 0);
    assert_eq!(
        (core.queues[0].msix_vector, core.queues[1].msix_vector),
        (1, 1)
    );
    let log = core.log_of(Region::Legacy);
    // Queue vectors (0x16) are written before the queue's PFN (0x08) makes it live.
    for queue in 0..2u64 {
        let select = position(&log, |a| {
            a.dir == Dir::W && a.offset == 0x0e && a.value == queue
        });
        let rest = &log[select..];
        let vector = position(rest, |a| a.dir == Dir::W && a.offset == 0x16);
        let pfn = position(rest, |a| a.dir == Dir::W && a.offset == 0x08);
        assert!(vector < pfn);
    }
    drop(core);
    let mut byte = [0u8; 1];
    t.read_config(0, &mut byte).unwrap();
    assert_eq!(byte[0], 0x5a);
    let last = *rig.core.borrow().log.last().unwrap();
    assert_eq!((last.offset, last.dir), (24, Dir::R));
}

// ---------------------------------------------------------------- acknowledging the interrupt

#[test]
fn pci_isr_is_read_once_and_cleared_by_the_read() {
    for (preset, preference, kind) in [
        (
            Preset::Modern,
            TransportPreference::PreferModern,
            TransportKind::PciModern,
        ),
        (
            Preset::Transitional,
            TransportPreference::ForceLegacy,
            TransportKind::PciLegacy,
        ),
        (
            Preset::Legacy,
            TransportPreference::PreferModern,
            TransportKind::PciLegacy,
        ),
    ] {
        let rig = pci_rig(preset, 1, features::VERSION_1);
        let t = rig.transport(preference);
        assert_eq!(t.kind(), kind);
        // The handler's view comes from the transport itself: a copy of
        // its own mapping, nothing mapped again.
        let isr = t.interrupt_status();
        assert!(matches!(isr, InterruptStatusRegister::Pci(_)), "{preset:?}");
        rig.core.borrow_mut().isr = 0b11;
        rig.core.borrow_mut().log.clear();
        assert_eq!(
            isr.read_and_acknowledge(),
            InterruptStatus::QUEUE | InterruptStatus::CONFIG,
            "{preset:?}"
        );
        assert_eq!(
            rig.core.borrow().isr,
            0,
            "{preset:?}: the read clears the ISR"
        );
        assert_eq!(isr.read_and_acknowledge(), InterruptStatus::empty());
        let log = rig.core.borrow().log.clone();
        let expected = match kind {
            TransportKind::PciModern => vec![
                Access::r(Region::Isr, 0, 1, 3),
                Access::r(Region::Isr, 0, 1, 0),
            ],
            _ => vec![
                Access::r(Region::Legacy, 0x13, 1, 3),
                Access::r(Region::Legacy, 0x13, 1, 0),
            ],
        };
        assert_eq!(log, expected, "{preset:?}: one byte read, nothing written");
    }
}

#[test]
fn mmio_status_is_read_and_exactly_those_bits_acknowledged() {
    for version in [1, 2] {
        let core = VirtioCore::new(2, 0, 1, 256, vec![0; 16]).shared();
        let t = mmio_transport(&core, version);
        let status = t.interrupt_status();
        assert!(matches!(status, InterruptStatusRegister::Mmio(_)));
        core.borrow_mut().log.clear();
        // Nothing pending: one read, no acknowledge.
        assert_eq!(status.read_and_acknowledge(), InterruptStatus::empty());
        assert_eq!(core.borrow().log, vec![Access::r(Region::Mmio, 0x60, 4, 0)]);
        // The config bit: read it, write it back to InterruptACK.
        core.borrow_mut().log.clear();
        core.borrow_mut().isr = 0b10;
        assert_eq!(status.read_and_acknowledge(), InterruptStatus::CONFIG);
        assert_eq!(
            core.borrow().log,
            vec![
                Access::r(Region::Mmio, 0x60, 4, 2),
                Access::w(Region::Mmio, 0x64, 4, 2)
            ],
            "v{version}"
        );
        assert_eq!(core.borrow().isr, 0);
        assert!(core.borrow().violations.is_empty());
    }
}

#[test]
fn the_handler_view_and_the_transport_agree_on_the_status() {
    // The handler's register and Transport::ack_interrupt read the same
    // thing: whichever reads first gets the bits, the other sees them gone.
    let core = VirtioCore::new(2, 0, 1, 256, vec![0; 16]).shared();
    let mut t = mmio_transport(&core, 2);
    let status = t.interrupt_status();
    core.borrow_mut().isr = 1;
    assert_eq!(status.read_and_acknowledge(), InterruptStatus::QUEUE);
    assert_eq!(t.ack_interrupt(), InterruptStatus::empty());
    core.borrow_mut().isr = 1;
    assert_eq!(t.ack_interrupt(), InterruptStatus::QUEUE);
    assert_eq!(status.read_and_acknowledge(), InterruptStatus::empty());
}

// ---------------------------------------------------------------- what handlers record

#[test]
fn line_interrupts_wake_every_queue_and_flag_config_changes() {
    let device = DeviceInterrupts::new();
    let queues = QueueSet::first(3);
    // Another device's interrupt on a shared line: status 0.
    assert!(!device.line_interrupt(InterruptStatus::empty(), queues));
    assert_eq!(device.counters().line_unclaimed, 1);
    assert_eq!(device.pending(queues), QueueSet::EMPTY);

    assert!(device.line_interrupt(InterruptStatus::QUEUE, queues));
    assert_eq!(device.pending(queues), queues);
    // A queue set up later (not in `queues`) is woken too, but not counted.
    assert_eq!(
        device.take_pending(QueueSet::single(5)),
        QueueSet::single(5)
    );
    assert_eq!(device.queue_interrupt_count(5), 0);
    assert_eq!(
        (0..3)
            .map(|q| device.queue_interrupt_count(q))
            .collect::<Vec<_>>(),
        vec![1, 1, 1]
    );
    assert!(!device.take_config_change());

    // Taking one queue's bit leaves the others.
    assert_eq!(
        device.take_pending(QueueSet::single(1)),
        QueueSet::single(1)
    );
    assert_eq!(device.pending(queues), QueueSet::from_bits(0b101));
    assert_eq!(device.take_pending(QueueSet::single(1)), QueueSet::EMPTY);

    assert!(device.line_interrupt(InterruptStatus::CONFIG, queues));
    assert!(device.take_config_change());
    assert!(!device.take_config_change(), "consumed once");
    assert_eq!(device.config_interrupt_count(), 1);
    assert_eq!(
        device.queue_interrupt_count(0),
        1,
        "a config change is no queue event"
    );

    // MSI-X: an entry shared by queues 0 and 2 (and 4, not set up yet).
    device.queue_interrupt(QueueSet::from_bits(0b101));
    device.wake(QueueSet::from_bits(0b10101));
    assert_eq!(
        device.take_pending(QueueSet::single(4)),
        QueueSet::single(4)
    );
    assert_eq!(device.queue_interrupt_count(4), 0);
    assert_eq!(device.queue_interrupt_count(2), 2);
    assert_eq!(device.queue_interrupt_count(1), 1);
    let c = device.counters();
    assert_eq!(
        (
            c.queue_interrupts,
            c.config_interrupts,
            c.line_claimed,
            c.line_unclaimed
        ),
        (5, 1, 2, 1)
    );
    device.reset();
    assert_eq!(device.counters(), Default::default());
}

// ---------------------------------------------------------------- waiting

/// A CPU for the waits: records what the wait asked for; a "halt" runs the
/// given closure (the device doing its work, and the interrupt controller
/// delivering whatever it raised) and then returns, as `sti; hlt` does.
struct SimCpu<'a> {
    calls: Rc<RefCell<Vec<&'static str>>>,
    interrupts_on: bool,
    on_halt: Box<dyn FnMut() + 'a>,
    patience: u32,
    /// Steps of the spin before a halt; the device works on step
    /// `spin_steps - 1` when `work_in_spin` is set.
    spin_steps: u32,
    work_in_spin: bool,
}

impl<'a> SimCpu<'a> {
    fn new(patience: u32, on_halt: impl FnMut() + 'a) -> (Self, Rc<RefCell<Vec<&'static str>>>) {
        let calls = Rc::new(RefCell::new(Vec::new()));
        (
            SimCpu {
                calls: calls.clone(),
                interrupts_on: true,
                on_halt: Box::new(on_halt),
                patience,
                spin_steps: 0,
                work_in_spin: false,
            },
            calls,
        )
    }
}

impl Idle for SimCpu<'_> {
    fn disable_interrupts(&mut self) {
        self.calls.borrow_mut().push("cli");
        self.interrupts_on = false;
    }
    fn enable_interrupts(&mut self) {
        self.calls.borrow_mut().push("sti");
        self.interrupts_on = true;
    }
    fn enable_interrupts_and_halt(&mut self) {
        assert!(
            !self.interrupts_on,
            "halting with interrupts on can miss a wake-up"
        );
        self.calls.borrow_mut().push("sti;hlt");
        self.interrupts_on = true;
        (self.on_halt)();
    }
    fn pause(&mut self) {
        self.calls.borrow_mut().push("pause");
        (self.on_halt)();
    }
    fn spin_before_halt(&mut self, step: u32) -> bool {
        if step >= self.spin_steps {
            return false;
        }
        assert!(self.interrupts_on, "the spin runs with interrupts on");
        self.calls.borrow_mut().push("spin");
        if self.work_in_spin && step + 1 == self.spin_steps {
            (self.on_halt)();
        }
        true
    }
    fn expired(&mut self) -> bool {
        if self.patience == 0 {
            return true;
        }
        self.patience -= 1;
        false
    }
}

#[test]
fn an_interrupt_before_the_wait_makes_it_return_without_halting() {
    let device = DeviceInterrupts::new();
    let queue = QueueSet::single(0);
    // The interrupt came after the caller's last look at the ring but
    // before it called wait: the handler already set the pending bit.
    device.queue_interrupt(queue);
    let (cpu, calls) = SimCpu::new(10, || panic!("must not halt"));
    let mut wait = InterruptWait::new(&device, queue, cpu);
    assert!(wait.sleeps_until_interrupt());
    wait.wait().unwrap();
    assert_eq!(*calls.borrow(), vec!["cli", "sti"]);
    assert_eq!(wait.stats().already_pending, 1);
    assert_eq!(wait.stats().halts, 0);
    assert_eq!(device.pending(queue), QueueSet::EMPTY, "consumed");
}

#[test]
fn another_queues_interrupt_does_not_count_as_ours() {
    let device = DeviceInterrupts::new();
    device.queue_interrupt(QueueSet::single(1));
    let mut halts = 0;
    let (cpu, calls) = SimCpu::new(10, || halts += 1);
    let mut wait = InterruptWait::new(&device, QueueSet::single(0), cpu);
    wait.wait().unwrap();
    assert_eq!(*calls.borrow(), vec!["cli", "sti;hlt"]);
    assert_eq!(wait.stats().woken_by_queue, 0);
    drop(wait);
    assert_eq!(halts, 1);
    assert_eq!(
        device.pending(QueueSet::single(1)),
        QueueSet::single(1),
        "left for its owner"
    );
}

#[test]
fn a_wait_halts_until_the_line_interrupt_is_acknowledged_and_dispatched() {
    // virtio-mmio v2 device; the "halt" lets the device finish and raise its
    // line, and the simulated controller runs the line handler.
    let core = VirtioCore::new(2, 0, 1, 256, vec![0; 16]).shared();
    let t = mmio_transport(&core, 2);
    let status = t.interrupt_status();
    let device = DeviceInterrupts::new();
    let queues = QueueSet::first(1);
    let (cpu, calls) = SimCpu::new(10, || {
        core.borrow_mut().isr |= 1; // the device used a buffer and raised its line
        let seen = status.read_and_acknowledge(); // the handler
        device.line_interrupt(seen, queues);
    });
    let mut wait = InterruptWait::new(&device, queues, cpu);
    wait.wait().unwrap();
    assert_eq!(*calls.borrow(), vec!["cli", "sti;hlt"]);
    assert_eq!(
        wait.stats(),
        drivers::irq::WaitStats {
            waits: 1,
            halts: 1,
            already_pending: 0,
            woken_by_queue: 1,
            polls: 0,
            spun: 0
        }
    );
    assert_eq!(core.borrow().isr, 0, "acknowledged, so a level line drops");
    assert_eq!(device.counters().line_claimed, 1);
}

#[test]
fn an_interrupt_during_the_spin_before_the_halt_ends_the_wait_without_halting() {
    let device = DeviceInterrupts::new();
    let queues = QueueSet::first(1);
    let (mut cpu, calls) = SimCpu::new(10, || device.queue_interrupt(queues));
    cpu.spin_steps = 3;
    cpu.work_in_spin = true;
    let mut wait = InterruptWait::new(&device, queues, cpu);
    wait.wait().unwrap();
    assert_eq!(*calls.borrow(), vec!["spin", "spin", "spin"]);
    let stats = wait.stats();
    assert_eq!((stats.spun, stats.halts, stats.waits), (1, 0, 1));
}

#[test]
fn a_spin_that_sees_nothing_still_halts_race_free() {
    let device = DeviceInterrupts::new();
    let queues = QueueSet::first(1);
    let (mut cpu, calls) = SimCpu::new(10, || device.queue_interrupt(queues));
    cpu.spin_steps = 2;
    let mut wait = InterruptWait::new(&device, queues, cpu);
    wait.wait().unwrap();
    assert_eq!(*calls.borrow(), vec!["spin", "spin", "cli", "sti;hlt"]);
    let stats = wait.stats();
    assert_eq!((stats.spun, stats.halts, stats.woken_by_queue), (0, 1, 1));
}

#[test]
fn waits_give_up_and_polled_devices_spin() {
    let device = DeviceInterrupts::new();
    let (cpu, calls) = SimCpu::new(2, || {});
    let mut wait = InterruptWait::new(&device, QueueSet::single(0), cpu);
    assert!(wait.wait().is_ok());
    assert!(wait.wait().is_ok());
    assert_eq!(wait.wait(), Err(WaitTimeout { waits: 2 }));
    assert_eq!(wait.stats().halts, 2);
    drop(wait);
    assert_eq!(*calls.borrow(), vec!["cli", "sti;hlt", "cli", "sti;hlt"]);

    // A polled device (no route, or virtio.poll=1): no cli, no halt.
    device.set_polled(true);
    let (cpu, calls) = SimCpu::new(3, || {});
    let mut wait = InterruptWait::new(&device, QueueSet::single(0), cpu);
    assert_eq!(wait.mode(), WaitMode::Poll);
    assert!(!wait.sleeps_until_interrupt());
    wait.wait().unwrap();
    wait.wait().unwrap();
    assert_eq!(wait.stats().polls, 2);
    drop(wait);
    assert_eq!(*calls.borrow(), vec!["pause", "pause"]);

    // A device whose interrupts are given up on mid-run stops halting.
    let device = DeviceInterrupts::new();
    let (cpu, calls) = SimCpu::new(3, || {});
    let mut wait = InterruptWait::new(&device, QueueSet::single(0), cpu);
    wait.wait().unwrap();
    device.set_polled(true);
    wait.wait().unwrap();
    drop(wait);
    assert_eq!(*calls.borrow(), vec!["cli", "sti;hlt", "pause"]);
}

/// One queue on the rust-vmm device model, the driver waiting for it.
fn queue_and_model(event_idx: bool) -> (SplitQueue<HostHal>, VqModel) {
    trace_logging();
    let config = QueueConfig::new(0, 8, RingLayout::Separate).with_event_idx(event_idx);
    let queue = SplitQueue::<HostHal>::new(config).expect("queue");
    let model = VqModel::new(queue.addresses(), event_idx);
    (queue, model)
}

fn one_request(
    queue: &mut SplitQueue<HostHal>,
    model: &mut VqModel,
    buffer: &hal::DmaRegion<HostHal>,
) {
    queue
        .add(&[Segment::writable(buffer.device_addr(), 16)])
        .expect("room");
    let decision = queue.publish();
    model.driver_published(decision.should_notify());
}

#[test]
fn entries_used_while_interrupts_were_off_are_found_by_the_recheck_not_by_halting() {
    for event_idx in [false, true] {
        let (mut queue, mut model) = queue_and_model(event_idx);
        let buffer = hal::DmaRegion::<HostHal>::new(TEST_OWNER, 4096).unwrap();
        let device = DeviceInterrupts::new();
        // The driver is busy collecting: it asked for no interrupts.
        queue.disable_interrupts();
        one_request(&mut queue, &mut model, &buffer);
        // The device completes now; with interrupts off it does not interrupt.
        for chain in model.take_available() {
            model.complete(&chain, &[7; 16]);
        }
        assert!(
            !model.signal_used(),
            "event_idx={event_idx}: no interrupt wanted"
        );
        // Before waiting the driver re-arms and re-checks: the entry is found
        // and the wait never happens (the device will not interrupt for it).
        let (cpu, calls) = SimCpu::new(5, || panic!("would sleep forever"));
        let mut wait = InterruptWait::new(&device, QueueSet::single(0), cpu);
        let waited = wait_until_used(
            &mut wait,
            &mut queue,
            |q| q.enable_interrupts(),
            |q| q.disable_interrupts(),
        );
        assert_eq!(waited, Ok(false), "event_idx={event_idx}");
        assert!(calls.borrow().is_empty());
        assert_eq!(queue.pop_used().unwrap().map(|u| u.len), Some(16));
    }
}

#[test]
fn a_completion_after_the_recheck_interrupts_and_ends_the_halt() {
    for event_idx in [false, true] {
        let (mut queue, mut model) = queue_and_model(event_idx);
        let buffer = hal::DmaRegion::<HostHal>::new(TEST_OWNER, 4096).unwrap();
        let device = DeviceInterrupts::new();
        queue.disable_interrupts();
        one_request(&mut queue, &mut model, &buffer);
        assert_eq!(queue.pop_used().unwrap(), None);
        let model = RefCell::new(model);
        let interrupts_sent = RefCell::new(0);
        let (cpu, calls) = SimCpu::new(5, || {
            // While the CPU halts the device completes the request and, as
            // the driver re-armed interrupts, interrupts: the MSI-X handler
            // for queue 0 runs.
            let mut model = model.borrow_mut();
            for chain in model.take_available() {
                model.complete(&chain, &[9; 16]);
            }
            if model.signal_used() {
                *interrupts_sent.borrow_mut() += 1;
                device.queue_interrupt(QueueSet::single(0));
            }
        });
        let mut wait = InterruptWait::new(&device, QueueSet::single(0), cpu);
        let waited = wait_until_used(
            &mut wait,
            &mut queue,
            |q| q.enable_interrupts(),
            |q| q.disable_interrupts(),
        );
        assert_eq!(waited, Ok(true));
        assert_eq!(
            *calls.borrow(),
            vec!["cli", "sti;hlt"],
            "event_idx={event_idx}"
        );
        assert_eq!(wait.stats().woken_by_queue, 1);
        assert_eq!(
            *interrupts_sent.borrow(),
            1,
            "the re-armed queue asked for one"
        );
        drop(wait);
        assert_eq!(queue.pop_used().unwrap().map(|u| u.len), Some(16));
        // Collecting again: interrupts are suppressed once more.
        one_request(&mut queue, &mut model.borrow_mut(), &buffer);
        let mut m = model.borrow_mut();
        for chain in m.take_available() {
            m.complete(&chain, &[1; 16]);
        }
        assert!(
            !m.signal_used(),
            "event_idx={event_idx}: suppressed after the wait"
        );
        assert_eq!(device.counters().queue_interrupts, 1);
    }
}

#[test]
fn wait_until_used_always_disarms_what_it_armed() {
    // (armed, disarmed) counts for: the second look finds entries (no
    // wait), and nothing there (one halt). Either way interrupts end off.
    for already_there in [true, false] {
        let device = DeviceInterrupts::new();
        let (cpu, calls) = SimCpu::new(5, || device.queue_interrupt(QueueSet::single(0)));
        let mut wait = InterruptWait::new(&device, QueueSet::single(0), cpu);
        let mut counts = (0, 0);
        let waited = wait_until_used(
            &mut wait,
            &mut counts,
            |(armed, _)| {
                *armed += 1;
                already_there
            },
            |(_, disarmed)| *disarmed += 1,
        );
        assert_eq!(waited, Ok(!already_there));
        assert_eq!(counts, (1, 1), "already_there={already_there}");
        let expected: Vec<&str> = if already_there {
            vec![]
        } else {
            vec!["cli", "sti;hlt"]
        };
        assert_eq!(*calls.borrow(), expected);
    }
    // The old name is the same function.
    let device = DeviceInterrupts::new();
    device.set_polled(true);
    let (cpu, _) = SimCpu::new(5, || {});
    let mut wait = InterruptWait::new(&device, QueueSet::single(0), cpu);
    assert_eq!(
        wait_until_used(&mut wait, &mut (), |_| true, |_| {}),
        Ok(true)
    );
}

#[test]
fn a_polling_wait_needs_no_interrupts_armed() {
    let device = DeviceInterrupts::new();
    device.set_polled(true);
    let (cpu, calls) = SimCpu::new(5, || {});
    let mut wait = InterruptWait::new(&device, QueueSet::single(0), cpu);
    let mut armed = 0;
    let waited = wait_until_used(
        &mut wait,
        &mut armed,
        |a| {
            *a += 1;
            true
        },
        |a| *a += 10,
    );
    assert_eq!(waited, Ok(true));
    assert_eq!(armed, 0, "polling never arms or disarms");
    assert_eq!(*calls.borrow(), vec!["pause"]);
}

// ---------------------------------------------------------------- INTx

#[test]
fn intx_lines_firmware_did_not_route_are_recognised() {
    let mut function = pci_rig(Preset::Legacy, 1, 0).function;
    let cases = [
        (
            1,
            11,
            IntxLine::Routed {
                pin: 1,
                isa_irq: 11,
            },
        ),
        (2, 5, IntxLine::Routed { pin: 2, isa_irq: 5 }),
        // qboot leaves the line at its reset value; 0xff is "not connected".
        (1, 0, IntxLine::NotRouted { pin: 1, line: 0 }),
        (1, 0xff, IntxLine::NotRouted { pin: 1, line: 0xff }),
        (1, 2, IntxLine::NotRouted { pin: 1, line: 2 }),
        (1, 16, IntxLine::NotRouted { pin: 1, line: 16 }),
        (0, 11, IntxLine::NoPin),
    ];
    for (pin, line, expected) in cases {
        function.interrupt_pin = pin;
        function.interrupt_line = line;
        assert_eq!(intx_line(&function), expected, "pin {pin} line {line}");
    }
}

#[test]
fn intx_disable_bit_is_set_and_cleared_without_touching_the_rest() {
    let rig = pci_rig(Preset::Modern, 1, features::VERSION_1);
    let address = rig.function.address;
    let _t = rig.transport(TransportPreference::PreferModern);
    let before = rig.config16(0x04);
    assert_ne!(before & 0x6, 0, "decoding and bus mastering are on");
    set_intx_disabled(&rig.access, address, true).unwrap();
    assert_eq!(rig.config16(0x04), before | 0x400);
    set_intx_disabled(&rig.access, address, false).unwrap();
    assert_eq!(rig.config16(0x04), before & !0x400);
}
